//! BIND (RFC 1928 §4, §6): two replies, the probe itself playing the incoming peer.

use std::net::SocketAddr;

use ferrosocks_proto::{Addr, Command, Rep, Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::connect::{refused, session_failed};
use super::report::Check;
use super::wire::{self, hex, rep_name, secs, Settings};
use super::{payload, Plan};

pub(crate) async fn run(s: &Settings, plan: &Plan, out: &mut Vec<Check>) {
    let announce = Check::named(
        "bind.announce",
        "BIND first reply: announces a reachable address",
    );
    let peer = Check::named("bind.peer", "BIND second reply: names the connecting peer");
    let data = Check::named("bind.data", "BIND: data flows both ways");

    let (mut conn, _) = match wire::authenticated(s).await {
        Ok(c) => c,
        Err(f) => {
            out.push(session_failed(announce, &f));
            out.push(peer.na("no BIND session"));
            out.push(data.na("no BIND session"));
            return;
        }
    };
    // DST.ADDR is the peer the client expects (RFC 1928 §4): this host, as the proxy sees it.
    let local_ip = conn
        .local_addr()
        .map(|a| a.ip())
        .or(plan.v4)
        .unwrap_or(s.proxy.ip());
    let dst = Addr::Ip(SocketAddr::new(local_ip, 0));
    let first = async {
        conn.send_msg(&Request {
            command: Command::BIND,
            dst: dst.clone(),
        })
        .await?;
        conn.recv::<Reply>("first BIND reply").await
    };
    let first = match first.await {
        Ok(r) => r,
        Err(e) => {
            out.push(announce.fail(format!("BIND {dst}: {e}")));
            out.push(peer.na("no first reply"));
            out.push(data.na("no first reply"));
            return;
        }
    };
    if first.rep != Rep::SUCCEEDED {
        out.push(refused(announce, &format!("BIND {dst}"), first.rep));
        out.push(peer.na("BIND refused"));
        out.push(data.na("BIND refused"));
        return;
    }
    let target = match &first.bnd {
        Addr::Ip(sa) if sa.port() == 0 => {
            out.push(
                announce
                    .fail(format!("announces {sa}: port 0 cannot be connected to"))
                    .with_value(sa.to_string()),
            );
            out.push(peer.na("no usable announced address"));
            out.push(data.na("no usable announced address"));
            return;
        }
        Addr::Ip(sa) if sa.ip().is_unspecified() => {
            let target = SocketAddr::new(s.proxy.ip(), sa.port());
            out.push(
                announce
                    .fail(format!(
                        "announces {sa} (non-conformant but common); connecting to the \
                         proxy's address {target} instead"
                    ))
                    .with_value(sa.to_string()),
            );
            target
        }
        Addr::Ip(sa) => {
            out.push(
                announce
                    .pass(format!("announces {sa}"))
                    .with_value(sa.to_string()),
            );
            *sa
        }
        Addr::Domain(..) => {
            out.push(
                announce
                    .fail(format!(
                        "announces the name {} (RFC 1928 §6 asks for an IP address)",
                        first.bnd
                    ))
                    .with_value(first.bnd.to_string()),
            );
            out.push(peer.na("no usable announced address"));
            out.push(data.na("no usable announced address"));
            return;
        }
    };

    // Play the incoming peer.
    let mut incoming = match tokio::time::timeout(s.step, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            out.push(peer.fail(format!("cannot connect to {target}: {e}")));
            out.push(data.na("no peer connection"));
            return;
        }
        Err(_) => {
            out.push(peer.fail(format!(
                "cannot connect to {target} within {}",
                secs(s.step)
            )));
            out.push(data.na("no peer connection"));
            return;
        }
    };
    let Ok(me) = incoming.local_addr() else {
        out.push(peer.fail("the peer socket has no local address"));
        out.push(data.na("no peer connection"));
        return;
    };
    let second = match conn.recv::<Reply>("second BIND reply").await {
        Ok(r) => r,
        Err(e) => {
            out.push(peer.fail(format!("connected from {me}; then {e}")));
            out.push(data.na("no second reply"));
            return;
        }
    };
    if second.rep != Rep::SUCCEEDED {
        out.push(
            peer.fail(format!(
                "connected from {me}; second reply REP {}",
                rep_name(second.rep)
            ))
            .with_value(format!("{:02x}", second.rep.0)),
        );
        out.push(data.na("BIND refused the peer"));
        return;
    }
    let named = second.bnd.ip_socket_addr().map(|a| a.ip().to_canonical());
    out.push(
        match &second.bnd {
            Addr::Ip(sa) if named == Some(me.ip()) && sa.port() == me.port() => {
                peer.pass(format!("names {sa}, the probe's peer socket"))
            }
            Addr::Ip(sa) if named == Some(me.ip()) => peer.fail(format!(
                "names {sa}: right address, wrong port (the peer is {me})"
            )),
            other => peer.fail(format!("names {other}, but the peer is {me}")),
        }
        .with_value(second.bnd.to_string()),
    );

    // Peer -> client, then client -> peer.
    let down = payload("bind.data peer->client");
    let up = payload("bind.data client->peer");
    let flow = async {
        incoming
            .write_all(&down)
            .await
            .map_err(|e| format!("peer write: {e}"))?;
        let got = conn
            .recv_exact(down.len(), "peer's data on the BIND connection")
            .await
            .map_err(|e| e.to_string())?;
        if got != down {
            return Err(format!("peer->client data altered: {}", hex(&got)));
        }
        conn.send(&up).await.map_err(|e| e.to_string())?;
        let mut back = vec![0u8; up.len()];
        match tokio::time::timeout(s.step, incoming.read_exact(&mut back)).await {
            Ok(Ok(_)) if back == up => Ok(()),
            Ok(Ok(_)) => Err(format!("client->peer data altered: {}", hex(&back))),
            Ok(Err(e)) => Err(format!("peer read: {e}")),
            Err(_) => Err(format!(
                "client->peer data did not arrive within {}",
                secs(s.step)
            )),
        }
    };
    out.push(match flow.await {
        Ok(()) => data.pass(format!(
            "{} bytes peer->client, {} bytes client->peer, intact",
            down.len(),
            up.len()
        )),
        Err(e) => data.fail(e),
    });
}
