//! CONNECT: resolve, check the rules per address, connect, reply with the outgoing
//! socket's local address, deliver the pipelined payload, relay.

use std::sync::Arc;

use ferrosocks_proto::{Addr, Command, Rep, Reply};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::access_log::SessionRecord;
use crate::error::{Phase, SessionError};
use crate::relay::relay;
use crate::resolve::{connect_any, resolve};
use crate::rules::{Decision, RuleInput};
use crate::session::Conn;
use crate::Shared;

pub(crate) async fn handle(
    conn: &mut Conn,
    shared: &Arc<Shared>,
    record: &mut SessionRecord,
    dst: Addr,
) -> Result<(), SessionError> {
    let timeout = shared.config.timeouts.connect;
    let deadline = Instant::now() + timeout;
    let candidates = tokio::time::timeout_at(deadline, resolve(&dst))
        .await
        .map_err(|_| SessionError::Timeout(Phase::Connect))??;
    let allowed = shared.allowed_targets(conn, Command::CONNECT, &dst, &candidates)?;
    let (mut target, connected) =
        connect_any(&allowed, deadline.saturating_duration_since(Instant::now())).await?;
    let _ = target.set_nodelay(true);
    record.resolved = Some(connected);
    let bound = target.local_addr()?;
    conn.send_reply(&Reply {
        rep: Rep::SUCCEEDED,
        bnd: bound.into(),
    })
    .await?;
    record.rep = Some(Rep::SUCCEEDED);

    let leftover = conn.take_leftover();
    if !leftover.is_empty() {
        if target.write_all(&leftover).await.is_err() {
            record.end = "target closed before the pipelined payload was delivered".into();
            return Ok(());
        }
        record.bytes_up += leftover.len() as u64;
    }
    drop(leftover);
    let stats = relay(
        &conn.stream,
        &target,
        shared.config.timeouts.idle,
        shared.config.relay_mode,
        &shared.pipes,
    )
    .await;
    record.bytes_up += stats.up;
    record.bytes_down += stats.down;
    record.end = stats.end.describe().into();
    Ok(())
}

impl Shared {
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
