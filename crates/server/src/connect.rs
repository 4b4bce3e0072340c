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
                l.port() == target.port()
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
