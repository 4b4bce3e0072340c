//! CONNECT: resolve, check the rules per address, connect, reply with the outgoing
//! socket's local address, deliver the pipelined payload, relay.

use std::sync::Arc;

use ferrosocks_proto::{Addr, Command, Rep, Reply};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::access_log::SessionRecord;
use crate::error::{Phase, SessionError};
use crate::resolve::{connect_any, resolve};
use crate::rules::{Decision, RuleInput};
use crate::session::{run_tunnel, Conn};
use crate::tcp_tuning::Local;
use crate::Shared;

pub(crate) async fn handle(
    conn: &mut Conn,
    shared: &Arc<Shared>,
    record: &mut SessionRecord,
    dst: Addr,
) -> Result<(), SessionError> {
    // Connecting is a future of its own, finished before the tunnel starts, so what it
    // needed (the addresses, the deadline, the reply) takes no room in the task of an
    // open tunnel, and its allocations are freed.
    let mut target = connect_and_reply(conn, shared, record, dst).await?;
    run_tunnel(conn, &mut target, shared, record).await;
    Ok(())
}

/// Resolves, checks the rules, connects, and sends the success reply.
async fn connect_and_reply(
    conn: &mut Conn,
    shared: &Shared,
    record: &mut SessionRecord,
    dst: Addr,
) -> Result<TcpStream, SessionError> {
    let timeout = shared.config.timeouts.connect;
    let deadline = Instant::now() + timeout;
    let candidates = tokio::time::timeout_at(deadline, resolve(&dst, &shared.names))
        .await
        .map_err(|_| SessionError::Timeout(Phase::Connect))??;
    let candidates = shared.not_own_listeners(conn, candidates)?;
    let allowed = shared.allowed_targets(conn, Command::CONNECT, &dst, &candidates)?;
    let (target, connected) = connect_any(
        &allowed,
        deadline.saturating_duration_since(Instant::now()),
        Local::of(&shared.config),
    )
    .await
    .inspect_err(|_| {
        // None of its addresses answered: the next request for it looks the name up again
        // rather than trusting the cached answer for the rest of its time.
        if let Addr::Domain(host, _) = &dst {
            shared.names.forget(host.as_str());
        }
    })?;
    record.resolved = Some(connected);
    let bound = target.local_addr()?;
    // A listener on a wildcard address is reached at every address of this host, more than
    // the check before connecting knows; a connection to this host has its own address at
    // both ends.
    if shared.is_own_wildcard_listener(connected, bound) {
        return Err(SessionError::OwnListener(connected));
    }
    conn.send_reply(&Reply {
        rep: Rep::SUCCEEDED,
        bnd: bound.into(),
    })
    .await?;
    record.rep = Some(Rep::SUCCEEDED);
    Ok(target)
}

impl Shared {
    /// Leaves out the server's own listening addresses (see [`SessionError::OwnListener`]);
    /// fails when nothing else is left. A listener on a wildcard address is reached at any
    /// of this host's addresses, of which the one the client came in on, loopback and the
    /// unspecified address are checked (asking the kernel for the first only when a
    /// candidate has a wildcard listener's port, so the usual CONNECT costs no call).
    pub(crate) fn not_own_listeners(
        &self,
        conn: &Conn,
        candidates: Vec<std::net::SocketAddr>,
    ) -> Result<Vec<std::net::SocketAddr>, SessionError> {
        let mut local_ip = None;
        let mut is_own = |target: std::net::SocketAddr| {
            let ip = target.ip().to_canonical();
            self.listening.iter().any(|l| {
                let listen_ip = l.ip().to_canonical();
                // IPv6 listeners are IPv6-only: an IPv4 target never reaches one.
                l.port() == target.port()
                    && listen_ip.is_ipv4() == ip.is_ipv4()
                    && (listen_ip == ip
                        || ip.is_unspecified()
                        || (listen_ip.is_unspecified()
                            && (ip.is_loopback()
                                || Some(ip)
                                    == *local_ip.get_or_insert_with(|| {
                                        conn.local_addr().ok().map(|a| a.ip().to_canonical())
                                    }))))
            })
        };
        // The usual case, none of them: the list goes on as it came, without a copy.
        let Some(first_own) = candidates.iter().copied().find(|&a| is_own(a)) else {
            return Ok(candidates);
        };
        let kept: Vec<_> = candidates.into_iter().filter(|&a| !is_own(a)).collect();
        if kept.is_empty() {
            return Err(SessionError::OwnListener(first_own));
        }
        Ok(kept)
    }

    /// Whether `connected`, reached from `bound`, is one of this server's wildcard
    /// listeners: the same port and family, and an address of this host (`bound`'s).
    fn is_own_wildcard_listener(
        &self,
        connected: std::net::SocketAddr,
        bound: std::net::SocketAddr,
    ) -> bool {
        let ip = connected.ip().to_canonical();
        ip == bound.ip().to_canonical()
            && self.listening.iter().any(|l| {
                l.ip().is_unspecified()
                    && l.port() == connected.port()
                    && l.ip().to_canonical().is_ipv4() == ip.is_ipv4()
            })
    }

    /// Filters resolved addresses through the rules; denies when none is left, naming the
    /// first rule that denied.
    pub(crate) fn allowed_targets(
        &self,
        conn: &Conn,
        command: Command,
        dst: &Addr,
        candidates: &[std::net::SocketAddr],
    ) -> Result<Vec<std::net::SocketAddr>, SessionError> {
        let rules = self.rules();
        let host = match dst {
            Addr::Domain(h, _) => Some(h.as_str()),
            Addr::Ip(_) => None,
        };
        let mut first_denial = None;
        let allowed: Vec<_> = candidates
            .iter()
            .copied()
            .filter(|a| {
                let input = RuleInput {
                    client: conn.client.ip(),
                    user: conn.user.as_deref(),
                    command,
                    target: Some((host, Some(a.ip()), a.port())),
                };
                match rules.evaluate(&input) {
                    Decision::Allow => true,
                    Decision::Deny { rule } => {
                        first_denial.get_or_insert(rule);
                        false
                    }
                }
            })
            .collect();
        if allowed.is_empty() {
            return Err(SessionError::RuleDenied {
                rule: first_denial.flatten(),
            });
        }
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, Shared};

    /// A connection to this host has its own address at both ends; a wildcard listener
    /// takes it on any of them, in its own family only (IPv6 listeners are IPv6-only).
    #[test]
    fn a_wildcard_listener_is_reached_at_every_address_of_this_host() {
        let listening = vec![
            "0.0.0.0:1080".parse().unwrap(),
            "[::]:1081".parse().unwrap(),
        ];
        let shared = Shared::new(Config::default(), listening);
        let own = |connected: &str, bound: &str| {
            shared.is_own_wildcard_listener(connected.parse().unwrap(), bound.parse().unwrap())
        };
        assert!(own("10.1.2.3:1080", "10.1.2.3:40000"));
        assert!(!own("10.1.2.3:1080", "10.9.9.9:40000"), "another host");
        assert!(!own("10.1.2.3:22", "10.1.2.3:40000"), "another port");
        assert!(!own("10.1.2.3:1081", "10.1.2.3:40000"), "the IPv6-only one");
        assert!(own("[2001:db8::1]:1081", "[2001:db8::1]:40000"));
    }
}
