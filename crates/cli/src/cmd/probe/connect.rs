//! CONNECT to IPv4, IPv6 and a name, BND sanity, refused ports, malformed requests and
//! pipelining (RFC 1928 §4-§6).

use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, BytesMut};
use ferrosocks_proto::{
    Addr, Command, Encode, Greeting, Host, Method, MethodSelection, Rep, Reply, Request,
    UserPassStatus,
};

use super::report::{Check, CheckBuilder};
use super::targets::{closed_port, TcpEcho};
use super::wire::{self, hex, rep_name, Afterwards, Conn, HandshakeFailure, Settings, WireError};
use super::{payload, Plan};

/// A check that needed a working session but could not get one: "n/a" when the server
/// simply will not let this client in (wrong or missing credentials) or when a plain
/// session already failed, "fail" otherwise.
pub(crate) fn session_failed(b: CheckBuilder, f: &HandshakeFailure) -> Check {
    match f {
        HandshakeFailure::Skipped(_) => b.na(f.to_string()),
        HandshakeFailure::NoAcceptable(_) | HandshakeFailure::AuthRejected(_) => {
            b.na(format!("no session: {f}"))
        }
        HandshakeFailure::Wire(_) | HandshakeFailure::Unexpected(_) => {
            b.fail(format!("no session: {f}"))
        }
    }
}

/// A non-zero REP to a command the probe expected to work: 07/08 mean "not supported",
/// which the RFC allows; anything else is a failure.
pub(crate) fn refused(b: CheckBuilder, what: &str, rep: Rep) -> Check {
    let detail = format!("{what}: REP {}", rep_name(rep));
    let check = if rep == Rep::COMMAND_NOT_SUPPORTED || rep == Rep::ADDRESS_TYPE_NOT_SUPPORTED {
        b.unsupported(detail)
    } else {
        b.fail(detail)
    };
    check.with_value(format!("{:02x}", rep.0))
}

/// CONNECT to `dst`, then one payload through the tunnel and back from the echo.
async fn connect_echo(s: &Settings, b: CheckBuilder, dst: Addr) -> (Check, Option<Reply>) {
    let req = Request {
        command: Command::CONNECT,
        dst: dst.clone(),
    };
    let (mut conn, reply) = match wire::request(s, &req).await {
        Ok(r) => r,
        Err(f) => return (session_failed(b, &f), None),
    };
    if reply.rep != Rep::SUCCEEDED {
        return (
            refused(b, &format!("CONNECT {dst}"), reply.rep),
            Some(reply),
        );
    }
    let data = payload(b.id());
    if let Err(e) = conn.send(&data).await {
        return (b.fail(format!("REP 00, then {e}")), Some(reply));
    }
    let check = match conn.recv_exact(data.len(), "echoed data").await {
        Ok(echoed) if echoed == data => b.pass(format!(
            "REP 00, BND {}; {} bytes echoed intact",
            reply.bnd,
            data.len()
        )),
        Ok(echoed) => b.fail(format!(
            "REP 00, but the echo came back altered: {}",
            hex(&echoed)
        )),
        Err(e) => b.fail(format!("REP 00, BND {}, then {e}", reply.bnd)),
    };
    (check.with_value(reply.bnd.to_string()), Some(reply))
}

pub(crate) async fn run(s: &Settings, plan: &Plan, out: &mut Vec<Check>) {
    // IPv4, and BND checked against what the target saw.
    let b4 = Check::named("connect.ipv4", "CONNECT to an IPv4 target, data echoed");
    let bnd = Check::named(
        "connect.bnd",
        "CONNECT reply: BND is the outgoing socket's address",
    );
    match plan.v4 {
        None => {
            out.push(b4.na("no IPv4 address of this host to serve a target on"));
            out.push(bnd.na("no IPv4 target"));
        }
        Some(ip) => match TcpEcho::start(ip).await {
            Err(e) => {
                out.push(b4.na(format!("cannot start a target on {ip}: {e}")));
                out.push(bnd.na("no IPv4 target"));
            }
            Ok(echo) => {
                let (check, reply) = connect_echo(s, b4, Addr::Ip(echo.addrs[0])).await;
                let ok = check.status == super::report::Status::Pass;
                out.push(check);
                out.push(match reply {
                    Some(reply) if ok => bnd_check(bnd, &reply.bnd, &echo),
                    _ => bnd.na("the IPv4 CONNECT did not succeed"),
                });
            }
        },
    }

    let b6 = Check::named("connect.ipv6", "CONNECT to an IPv6 target, data echoed");
    out.push(match plan.v6 {
        None => b6.na("no IPv6 address of this host to serve a target on"),
        Some(ip) => match TcpEcho::start(ip).await {
            Err(e) => b6.na(format!("cannot start a target on {ip}: {e}")),
            Ok(echo) => connect_echo(s, b6, Addr::Ip(echo.addrs[0])).await.0,
        },
    });

    let bd = Check::named(
        "connect.domain",
        "CONNECT to a name (localhost): the proxy resolves it",
    );
    out.push(if !plan.same_host {
        bd.na("the proxy runs on another host, where `localhost` is not this probe's target")
    } else {
        match TcpEcho::start_localhost().await {
            Err(e) => bd.na(format!("cannot start a target on localhost: {e}")),
            Ok(echo) => {
                let port = echo.addrs[0].port();
                let host = Host::new("localhost").expect("a valid name");
                let (check, _) = connect_echo(s, bd, Addr::Domain(host, port)).await;
                match echo.peers().first() {
                    Some((reached, _)) if check.status == super::report::Status::Pass => {
                        let detail = format!("{}; resolved to {}", check.detail, reached.ip());
                        Check { detail, ..check }
                    }
                    _ => check,
                }
            }
        }
    });

    out.push(refused_port(s, plan).await);
    out.push(wrong_version(s).await);
    out.push(unknown_command(s, plan).await);
    out.push(unknown_atyp(s, plan).await);
    out.push(pipelining(s, plan).await);
}

/// RFC 1928 §6: "BND.ADDR contains the associated IP address" of the socket the server
/// connected to the target with; the echo saw that socket as its peer.
fn bnd_check(b: CheckBuilder, bnd: &Addr, echo: &TcpEcho) -> Check {
    let Some((_, seen)) = echo.peers().last().copied() else {
        return b.fail("the target recorded no connection");
    };
    let seen = canonical(seen);
    match bnd {
        Addr::Ip(sa) if canonical(*sa) == seen => {
            b.pass(format!("BND {sa} is the proxy's outgoing socket"))
        }
        Addr::Ip(sa) if sa.ip().is_unspecified() => b.fail(format!(
            "BND {sa}: says nothing (non-conformant but common); the target saw {seen}"
        )),
        other => b.fail(format!(
            "BND {other}, but the target saw the connection from {seen}"
        )),
    }
    .with_value(bnd.to_string())
}

fn canonical(sa: SocketAddr) -> SocketAddr {
    SocketAddr::new(sa.ip().to_canonical(), sa.port())
}

/// A request whose reply must be the failure `expect`, followed by a close (RFC 1928 §6:
/// "the SOCKS server MUST terminate the TCP connection shortly after sending the reply").
async fn failure_check(s: &Settings, b: CheckBuilder, bytes: &[u8], expect: Rep) -> Check {
    match wire::raw_request(s, bytes).await {
        Err(HandshakeFailure::Wire(WireError::Closed { got, .. })) if got.is_empty() => b
            .fail(format!(
                "closes without a reply (expected REP {})",
                rep_name(expect)
            ))
            .with_value("none closes"),
        Err(f) => session_failed(b, &f),
        Ok((mut conn, reply)) => {
            let after = conn.afterwards(s.close_wait).await;
            let value = format!("{:02x} {}", reply.rep.0, after.word());
            let mut detail = format!("REP {}", rep_name(reply.rep));
            if reply.rep != expect {
                detail.push_str(&format!(" (expected {:02x})", expect.0));
            }
            detail.push_str(&format!(", {}", after.describe(s.close_wait)));
            if reply.rep == expect && after == Afterwards::Closes {
                b.pass(detail)
            } else {
                b.fail(detail)
            }
            .with_value(value)
        }
    }
}

/// Where the malformed requests point: a closed port, so a server that wrongly goes
/// ahead connects nowhere.
fn harmless_target(plan: &Plan) -> SocketAddr {
    let ip = plan.v4.or(plan.v6).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    closed_port(ip).unwrap_or(SocketAddr::new(ip, 9))
}

async fn refused_port(s: &Settings, plan: &Plan) -> Check {
    let b = Check::named(
        "connect.refused",
        "CONNECT to a closed port: REP 05, then close",
    );
    let target = harmless_target(plan);
    let req = Request {
        command: Command::CONNECT,
        dst: Addr::Ip(target),
    };
    failure_check(s, b, &req.to_bytes(), Rep::CONNECTION_REFUSED).await
}

/// A request header with `cmd` and `atyp` as given, followed by a 4-byte address and a port.
fn raw_request(cmd: u8, atyp: u8, target: SocketAddr) -> Vec<u8> {
    let ip4 = match target.ip() {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => [127, 0, 0, 1],
    };
    let mut v = vec![0x05, cmd, 0x00, atyp];
    v.extend_from_slice(&ip4);
    v.extend_from_slice(&target.port().to_be_bytes());
    v
}

async fn unknown_command(s: &Settings, plan: &Plan) -> Check {
    let b = Check::named(
        "malformed.command",
        "unknown command 09: REP 07, then close",
    );
    let bytes = raw_request(0x09, 0x01, harmless_target(plan));
    failure_check(s, b, &bytes, Rep::COMMAND_NOT_SUPPORTED).await
}

async fn unknown_atyp(s: &Settings, plan: &Plan) -> Check {
    let b = Check::named(
        "malformed.atyp",
        "unknown address type 05: REP 08, then close",
    );
    let bytes = raw_request(0x01, 0x05, harmless_target(plan));
    failure_check(s, b, &bytes, Rep::ADDRESS_TYPE_NOT_SUPPORTED).await
}

/// A greeting with VER 06 (not 04: a SOCKS4-capable server would rightly take that as a
/// SOCKS4 request and wait for the rest of it).
async fn wrong_version(s: &Settings) -> Check {
    let b = Check::named(
        "malformed.version",
        "greeting with VER 06: close without a reply",
    );
    let mut conn = match Conn::open(s).await {
        Ok(c) => c,
        Err(e) => return b.fail(e.to_string()),
    };
    if let Err(e) = conn.send(&[0x06, 0x01, 0x00]).await {
        return b.fail(e.to_string());
    }
    match conn.afterwards(s.close_wait).await {
        Afterwards::Closes => b.pass("closes without a reply").with_value("closes"),
        Afterwards::StaysOpen => b
            .fail(format!(
                "no reply, but stays open ({} waited)",
                wire::secs(s.close_wait)
            ))
            .with_value("stays open"),
        Afterwards::SendsMore { bytes, closed } => {
            let then = if closed { "closes" } else { "stays open" };
            b.fail(format!("answers {}, then {then}", hex(&bytes)))
                .with_value(format!("answers {} {then}", hex(&bytes)))
        }
    }
}

/// Greeting, (username/password), CONNECT request and payload in ONE write: the server
/// must keep every byte it has not used yet (DESIGN.md; microsocks is known to lose them).
async fn pipelining(s: &Settings, plan: &Plan) -> Check {
    let b = Check::named("pipelining", "greeting + request + payload in one write");
    let Some(method) = plan.session_method else {
        return b.na("no session method could be negotiated");
    };
    let Some(ip) = plan.v4.or(plan.v6) else {
        return b.na("no address of this host to serve a target on");
    };
    let echo = match TcpEcho::start(ip).await {
        Ok(e) => e,
        Err(e) => return b.na(format!("cannot start a target on {ip}: {e}")),
    };
    let data = payload(b.id());
    let mut out = BytesMut::new();
    Greeting {
        methods: vec![method],
    }
    .encode(&mut out);
    let with_auth = method == Method::USER_PASS;
    if with_auth {
        if let Some(creds) = &s.credentials {
            creds.encode(&mut out);
        }
    }
    Request {
        command: Command::CONNECT,
        dst: Addr::Ip(echo.addrs[0]),
    }
    .encode(&mut out);
    out.put_slice(&data);
    let what = if with_auth {
        "greeting, login, request"
    } else {
        "greeting, request"
    };

    let run = async {
        let mut conn = Conn::open(s).await.map_err(|e| e.to_string())?;
        conn.send(&out).await.map_err(|e| e.to_string())?;
        let sel: MethodSelection = conn
            .recv("method selection")
            .await
            .map_err(|e| e.to_string())?;
        if sel.method != method {
            return Err(format!("selects {:02x} this time", sel.method.0));
        }
        if with_auth {
            let st: UserPassStatus = conn
                .recv("username/password status")
                .await
                .map_err(|e| format!("after the method selection: {e}"))?;
            if !st.is_success() {
                return Err(format!("login status {:02x}", st.status));
            }
        }
        let reply: Reply = conn
            .recv("CONNECT reply")
            .await
            .map_err(|e| format!("after the method selection: {e} (request lost?)"))?;
        if reply.rep != Rep::SUCCEEDED {
            return Err(format!("REP {}", rep_name(reply.rep)));
        }
        let echoed = conn
            .recv_exact(data.len(), "echoed payload")
            .await
            .map_err(|e| format!("REP 00, then {e} (payload lost?)"))?;
        if echoed != data {
            return Err(format!("payload altered: {}", hex(&echoed)));
        }
        Ok(())
    };
    match run.await {
        Ok(()) => b
            .pass(format!(
                "{what} and {} payload bytes in one write: all answered, echo intact",
                data.len()
            ))
            .with_value("works"),
        Err(e) => b
            .fail(format!("{what} and payload in one write: {e}"))
            .with_value("broken"),
    }
}
