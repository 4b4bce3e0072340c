//! UDP ASSOCIATE (RFC 1928 §7): relay address, echo through the relay, several
//! destinations, fragments, and the association's life tied to its TCP connection.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferrosocks_proto::udp::{decode_datagram, encode_datagram};
use ferrosocks_proto::{Addr, Command, Frag, Rep, Reply, Request, UdpHeader};
use tokio::net::UdpSocket;

use super::connect::{refused, session_failed};
use super::report::Check;
use super::targets::UdpEcho;
use super::wire::{self, hex, secs, Settings};
use super::{payload, Plan};

/// One datagram as it came back from the relay.
struct Received {
    from: SocketAddr,
    header: UdpHeader,
    payload: Vec<u8>,
}

/// The client end of one association.
struct Client {
    socket: UdpSocket,
    relay: SocketAddr,
}

impl Client {
    async fn send(&self, dst: SocketAddr, frag: Frag, data: &[u8]) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        let header = UdpHeader {
            frag,
            dst: Addr::Ip(dst),
        };
        encode_datagram(&header, data, &mut buf);
        self.socket.send_to(&buf, self.relay).await.map(|_| ())
    }

    /// The next well-formed datagram before `deadline`; malformed ones are skipped.
    async fn recv(&self, deadline: Instant) -> Option<Received> {
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.socket.recv_from(&mut buf)).await {
                Err(_) => return None,
                // An ICMP error for an earlier datagram (Linux reports some): keep waiting.
                Ok(Err(_)) => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(Ok((n, from))) => {
                    if let Ok((header, data)) = decode_datagram(&buf[..n]) {
                        return Some(Received {
                            from,
                            header,
                            payload: data.to_vec(),
                        });
                    }
                }
            }
        }
    }

    /// Waits for the reply carrying exactly `data`, skipping others.
    async fn recv_payload(&self, data: &[u8], deadline: Instant) -> Option<Received> {
        while let Some(r) = self.recv(deadline).await {
            if r.payload == data {
                return Some(r);
            }
        }
        None
    }
}

pub(crate) async fn run(s: &Settings, plan: &Plan, out: &mut Vec<Check>) {
    let associate = Check::named(
        "udp.associate",
        "UDP ASSOCIATE reply: a reachable relay address",
    );
    let echo = Check::named(
        "udp.echo",
        "UDP: datagram relayed, reply header names its source",
    );
    let multi = Check::named(
        "udp.multi",
        "UDP: three destinations through one association",
    );
    let frag = Check::named("udp.frag", "UDP: a 2-fragment sequence (FRAG 01, 82)");
    let tcp_close = Check::named(
        "udp.tcp_close",
        "UDP: association ends with its TCP connection",
    );
    let all_na = |out: &mut Vec<Check>, why: &str| {
        for b in [echo, multi, frag, tcp_close] {
            out.push(b.na(why.to_owned()));
        }
    };

    let (mut conn, _) = match wire::authenticated(s).await {
        Ok(c) => c,
        Err(f) => {
            out.push(session_failed(associate, &f));
            all_na(out, "no UDP ASSOCIATE session");
            return;
        }
    };
    let local_ip = conn
        .local_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let socket = match UdpSocket::bind(SocketAddr::new(local_ip, 0)).await {
        Ok(sock) => sock,
        Err(e) => {
            out.push(associate.na(format!("cannot open a UDP socket on {local_ip}: {e}")));
            all_na(out, "no UDP socket");
            return;
        }
    };
    // DST is where the client will send from (RFC 1928 §4); a server may restrict the
    // association to it, so announce the real address.
    let Ok(from) = socket.local_addr() else {
        out.push(associate.na("the UDP socket has no local address"));
        all_na(out, "no UDP socket");
        return;
    };
    let req = Request {
        command: Command::UDP_ASSOCIATE,
        dst: Addr::Ip(from),
    };
    let reply = async {
        conn.send_msg(&req).await?;
        conn.recv::<Reply>("UDP ASSOCIATE reply").await
    };
    let reply = match reply.await {
        Ok(r) => r,
        Err(e) => {
            out.push(associate.fail(format!("UDP ASSOCIATE {from}: {e}")));
            all_na(out, "no UDP ASSOCIATE reply");
            return;
        }
    };
    if reply.rep != Rep::SUCCEEDED {
        out.push(refused(
            associate,
            &format!("UDP ASSOCIATE {from}"),
            reply.rep,
        ));
        all_na(out, "UDP ASSOCIATE refused");
        return;
    }
    let relay = match &reply.bnd {
        Addr::Ip(sa) if sa.port() == 0 => {
            out.push(
                associate
                    .fail(format!("relay {sa}: port 0 cannot be sent to"))
                    .with_value(sa.to_string()),
            );
            all_na(out, "no usable relay address");
            return;
        }
        Addr::Ip(sa) if sa.ip().is_unspecified() => {
            let relay = SocketAddr::new(s.proxy.ip(), sa.port());
            out.push(
                associate
                    .fail(format!(
                        "relay {sa} (non-conformant but common); sending to the proxy's \
                         address {relay} instead"
                    ))
                    .with_value(sa.to_string()),
            );
            relay
        }
        Addr::Ip(sa) => {
            out.push(
                associate
                    .pass(format!("relay {sa}"))
                    .with_value(sa.to_string()),
            );
            *sa
        }
        Addr::Domain(..) => {
            out.push(
                associate
                    .fail(format!(
                        "relay named {} instead of an IP address",
                        reply.bnd
                    ))
                    .with_value(reply.bnd.to_string()),
            );
            all_na(out, "no usable relay address");
            return;
        }
    };
    let client = Client { socket, relay };
    let target_ip = match local_ip {
        IpAddr::V4(_) => plan.v4,
        IpAddr::V6(_) => plan.v6,
    }
    .unwrap_or(local_ip);
    let mut echoes = Vec::new();
    for _ in 0..4 {
        match UdpEcho::start(target_ip).await {
            Ok(e) => echoes.push(e),
            Err(e) => {
                all_na(
                    out,
                    &format!("cannot start a UDP target on {target_ip}: {e}"),
                );
                return;
            }
        }
    }

    let echo_ok = one_echo(s, &client, &echoes[0]).await;
    let relays = echo_ok.status == super::report::Status::Pass;
    out.push(echo_ok.into_check(echo));
    if !relays {
        for b in [multi, frag, tcp_close] {
            out.push(b.na("the single datagram was not relayed"));
        }
        return;
    }
    out.push(several(s, &client, &echoes[..3], multi).await);
    out.push(fragments(s, &client, &echoes[3], frag).await);
    // Last: this ends the association (if the server does what it should).
    drop(conn);
    out.push(after_close(s, &client, &echoes[0], tcp_close).await);
}

/// The verdict of the single-datagram check, before it is named.
struct Verdict {
    status: super::report::Status,
    detail: String,
}

impl Verdict {
    fn into_check(self, b: super::report::CheckBuilder) -> Check {
        b.status(self.status, self.detail)
    }
}

async fn one_echo(s: &Settings, client: &Client, echo: &UdpEcho) -> Verdict {
    use super::report::Status;
    let data = payload("udp.echo");
    if let Err(e) = client.send(echo.addr, Frag::STANDALONE, &data).await {
        return Verdict {
            status: Status::Fail,
            detail: format!("cannot send to the relay {}: {e}", client.relay),
        };
    }
    let deadline = Instant::now() + s.step;
    match client.recv_payload(&data, deadline).await {
        None => {
            let reached = echo.received().contains(&data);
            Verdict {
                status: Status::Fail,
                detail: if reached {
                    format!(
                        "the target got the datagram, but no reply came back within {}",
                        secs(s.step)
                    )
                } else {
                    format!(
                        "the datagram never reached the target {} (waited {})",
                        echo.addr,
                        secs(s.step)
                    )
                },
            }
        }
        Some(r) => {
            let source_ok = r.header.dst == Addr::Ip(echo.addr);
            let frag_ok = r.header.frag.is_standalone();
            let from = if r.from == client.relay {
                String::new()
            } else {
                format!(" (sent from {}, not the relay address)", r.from)
            };
            match (source_ok, frag_ok) {
                (true, true) => Verdict {
                    status: Status::Pass,
                    detail: format!(
                        "{} bytes echoed; reply header names {}{from}",
                        data.len(),
                        r.header.dst
                    ),
                },
                (false, _) => Verdict {
                    status: Status::Fail,
                    detail: format!(
                        "echoed, but the reply header names {} instead of the source {}",
                        r.header.dst, echo.addr
                    ),
                },
                (true, false) => Verdict {
                    status: Status::Fail,
                    detail: format!("echoed, but the reply has FRAG {:02x}", r.header.frag.0),
                },
            }
        }
    }
}

/// How many times within one step `udp.multi` sends a datagram that has not come back.
const UDP_SENDS: u32 = 3;

async fn several(
    s: &Settings,
    client: &Client,
    echoes: &[UdpEcho],
    b: super::report::CheckBuilder,
) -> Check {
    let datas: Vec<Vec<u8>> = (0..echoes.len())
        .map(|i| payload(&format!("udp.multi #{i}")))
        .collect();
    let deadline = Instant::now() + s.step;
    let mut got: Vec<Option<Addr>> = vec![None; echoes.len()];
    // UDP may lose a datagram (a loaded relay, one still setting up its route to a new
    // destination): like any UDP client, resend what has not come back, a few times
    // within the step, before calling a destination unreachable.
    let round = (s.step / UDP_SENDS).max(Duration::from_millis(100));
    while got.iter().any(Option::is_none) && Instant::now() < deadline {
        for ((echo, data), seen) in echoes.iter().zip(&datas).zip(&got) {
            if seen.is_some() {
                continue;
            }
            if let Err(e) = client.send(echo.addr, Frag::STANDALONE, data).await {
                return b.fail(format!("cannot send to the relay: {e}"));
            }
        }
        let round_end = deadline.min(Instant::now() + round);
        while got.iter().any(Option::is_none) {
            let Some(r) = client.recv(round_end).await else {
                break;
            };
            if let Some(i) = datas.iter().position(|d| *d == r.payload) {
                got[i] = Some(r.header.dst);
            }
        }
    }
    let mut problems = Vec::new();
    for (i, echo) in echoes.iter().enumerate() {
        match &got[i] {
            None => problems.push(format!("no reply from {}", echo.addr)),
            Some(a) if *a == Addr::Ip(echo.addr) => {}
            Some(a) => problems.push(format!("reply from {} names {a}", echo.addr)),
        }
    }
    if problems.is_empty() {
        b.pass(format!(
            "{} destinations, each reply names its own source",
            echoes.len()
        ))
    } else {
        b.fail(problems.join("; "))
    }
}

/// RFC 1928 §7: a server that does not support fragmentation "MUST drop any datagram
/// whose FRAG field is other than X'00'"; one that does reassembles. The target records
/// what really arrived.
async fn fragments(
    s: &Settings,
    client: &Client,
    echo: &UdpEcho,
    b: super::report::CheckBuilder,
) -> Check {
    let one = payload("udp.frag part 1|");
    let two = payload("udp.frag part 2");
    let whole = [one.clone(), two.clone()].concat();
    for (frag, data) in [
        (Frag::fragment(1, false), &one),
        (Frag::fragment(2, true), &two),
    ] {
        if let Err(e) = client.send(echo.addr, frag, data).await {
            return b.fail(format!("cannot send to the relay: {e}"));
        }
    }
    // Forwarding (whole or in pieces) happens at once; "drops" needs the full wait.
    let deadline = Instant::now() + s.close_wait;
    while Instant::now() < deadline {
        let got = echo.received();
        if got.contains(&whole) || got.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = echo.received();
    if got.is_empty() {
        b.unsupported(format!(
            "drops fragments (allowed by RFC 1928 §7 when unsupported): nothing reached the \
             target within {}",
            secs(s.close_wait)
        ))
        .with_value("drops")
    } else if got == [whole.clone()] {
        let back = client
            .recv_payload(&whole, Instant::now() + s.step)
            .await
            .map(|r| format!("; the reply came back with FRAG {:02x}", r.header.frag.0))
            .unwrap_or_else(|| "; no reply came back".into());
        b.pass(format!(
            "reassembles: the target got one {}-byte datagram{back}",
            whole.len()
        ))
        .with_value("reassembles")
    } else if got.iter().all(|d| *d == one || *d == two) {
        b.fail(format!(
            "forwards fragments unreassembled: the target got {} separate datagram(s)",
            got.len()
        ))
        .with_value("forwards fragments unreassembled")
    } else {
        let sizes: Vec<String> = got
            .iter()
            .map(|d| format!("{} bytes ({})", d.len(), hex(d)))
            .collect();
        b.fail(format!(
            "the target got unexpected data: {}",
            sizes.join(", ")
        ))
        .with_value("mangles")
    }
}

/// RFC 1928 §6: "A UDP association terminates when the TCP connection that the UDP
/// ASSOCIATE request arrived on terminates." Keep sending until nothing comes back.
async fn after_close(
    s: &Settings,
    client: &Client,
    echo: &UdpEcho,
    b: super::report::CheckBuilder,
) -> Check {
    let closed_at = Instant::now();
    let deadline = closed_at + s.close_wait;
    let mut n = 0u32;
    loop {
        n += 1;
        let data = payload(&format!("udp.tcp_close #{n}"));
        let sent_at = Instant::now();
        let _ = client.send(echo.addr, Frag::STANDALONE, &data).await;
        let wait = Duration::from_millis(300);
        let replied = client.recv_payload(&data, sent_at + wait).await.is_some();
        let reached = echo.received().contains(&data);
        if !replied && !reached {
            let detail = if n == 1 {
                "the first datagram sent after the TCP close is not relayed".to_owned()
            } else {
                format!(
                    "relayed until {} after the TCP close, then stopped",
                    secs(sent_at.duration_since(closed_at))
                )
            };
            return b.pass(detail).with_value("ends");
        }
        if Instant::now() >= deadline {
            return b
                .fail(format!(
                    "still relays {} after the TCP connection closed",
                    secs(Instant::now().duration_since(closed_at))
                ))
                .with_value("outlives TCP");
        }
    }
}
