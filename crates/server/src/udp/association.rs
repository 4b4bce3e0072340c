//! One association's relay loop: client datagrams are unwrapped (and reassembled) and sent
//! on; replies are wrapped with their source address and sent back.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferrosocks_proto::frag::{FragOutcome, Reassembly};
use ferrosocks_proto::udp::decode_datagram;
use ferrosocks_proto::{Addr, Command, Encode, UdpHeader};
use tokio::net::UdpSocket;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::resolve::resolve;
use crate::rules::{Decision, RuleInput};
use crate::Shared;

/// Room kept in front of a received reply for the header (an IPv6 header is 22 bytes), so
/// the reply is wrapped in place instead of copied.
const HEADROOM: usize = 22;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams handled per wake-up and direction before the other direction gets a turn.
const BATCH: usize = 64;
/// How long a resolved destination name is reused.
const NAME_CACHE_TTL: Duration = Duration::from_secs(30);
/// How many names one association keeps resolved.
const NAME_CACHE_SIZE: usize = 64;

pub(crate) struct Association {
    pub(crate) client_socket: UdpSocket,
    pub(crate) outbound: UdpSocket,
    pub(crate) client_ip: IpAddr,
    pub(crate) client_port: Option<u16>,
    pub(crate) client_user: Option<String>,
    pub(crate) shared: Arc<Shared>,
    /// This association's slot in the server-wide limit, released when it ends.
    pub(crate) _permit: OwnedSemaphorePermit,
}

#[derive(Debug, Default)]
pub(crate) struct UdpStats {
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    pub(crate) datagrams_up: u64,
    pub(crate) datagrams_down: u64,
    pub(crate) dropped: u64,
    pub(crate) end: &'static str,
}

impl UdpStats {
    pub(crate) fn add(&mut self, other: &UdpStats) {
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
        self.datagrams_up += other.datagrams_up;
        self.datagrams_down += other.datagrams_down;
        self.dropped += other.dropped;
    }
}

struct State {
    /// Where replies go: the client's last source address.
    client_addr: Option<SocketAddr>,
    reassembly: Reassembly,
    names: HashMap<Addr, (SocketAddr, Instant)>,
    stats: UdpStats,
    last_activity: Instant,
}

impl Association {
    pub(crate) async fn run(self, stop: CancellationToken) -> UdpStats {
        let idle = self.shared.config.timeouts.udp_idle;
        let mut state = State {
            client_addr: self.client_port.map(|p| SocketAddr::new(self.client_ip, p)),
            reassembly: Reassembly::new(Duration::from_secs(5)),
            names: HashMap::new(),
            stats: UdpStats::default(),
            last_activity: Instant::now(),
        };
        let mut from_client = vec![0u8; MAX_DATAGRAM];
        let mut from_target = vec![0u8; HEADROOM + MAX_DATAGRAM];
        let outbound_v6 = self
            .outbound
            .local_addr()
            .map(|a| a.is_ipv6())
            .unwrap_or(false);
        // One timer for the whole association, re-armed only when it fires early: creating a
        // timer per datagram costs more than relaying the datagram.
        let idle_timer = tokio::time::sleep_until(state.last_activity + idle);
        tokio::pin!(idle_timer);
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        state.stats.end = loop {
            tokio::select! {
                ready = self.client_socket.readable() => {
                    if ready.is_err() {
                        break "relay socket failed";
                    }
                    // Drain what is queued (bounded, so the other direction gets its turn)
                    // for one wake-up instead of one per datagram.
                    for _ in 0..BATCH {
                        match self.client_socket.try_recv_from(&mut from_client) {
                            Ok((n, src)) => {
                                self.handle_from_client(&mut state, &from_client[..n], src, outbound_v6).await;
                            }
                            Err(_) => break,
                        }
                    }
                }
                ready = self.outbound.readable() => {
                    if ready.is_err() {
                        break "relay socket failed";
                    }
                    for _ in 0..BATCH {
                        match self.outbound.try_recv_from(&mut from_target[HEADROOM..]) {
                            Ok((n, src)) => {
                                self.handle_from_target(&mut state, &mut from_target, n, src).await;
                            }
                            Err(_) => break,
                        }
                    }
                }
                // The control connection closed (or the server is stopping).
                () = &mut stopped => break "ended with its TCP connection",
                () = &mut idle_timer => {
                    let deadline = state.last_activity + idle;
                    if deadline <= Instant::now() {
                        break "idle timeout";
                    }
                    idle_timer.as_mut().reset(deadline);
                }
            }
        };
        state.stats
    }

    async fn handle_from_client(
        &self,
        state: &mut State,
        datagram: &[u8],
        src: SocketAddr,
        outbound_v6: bool,
    ) {
        // RFC 1928 §7: drop anything not from the client's recorded address.
        if src.ip().to_canonical() != self.client_ip
            || self.client_port.is_some_and(|p| p != src.port())
        {
            state.stats.dropped += 1;
            tracing::debug!(%src, "UDP: dropped a datagram from a foreign source");
            return;
        }
        state.client_addr = Some(src);
        let Ok((header, payload)) = decode_datagram(datagram) else {
            state.stats.dropped += 1;
            return;
        };
        let now = Instant::now();
        let assembled;
        let (dst, payload) =
            match state
                .reassembly
                .push(now.into_std(), header.frag, &header.dst, payload)
            {
                FragOutcome::Standalone => (header.dst, payload),
                FragOutcome::Complete(dst, data) => {
                    assembled = data;
                    (dst, &assembled[..])
                }
                FragOutcome::Queued => {
                    state.last_activity = now;
                    return;
                }
                FragOutcome::Dropped(reason) => {
                    tracing::debug!(?reason, "UDP: fragment dropped");
                    state.stats.dropped += 1;
                    return;
                }
            };
        let Some(target) = self.resolve_cached(state, &dst, now).await else {
            state.stats.dropped += 1;
            return;
        };
        if !self.allowed(&dst, target) {
            state.stats.dropped += 1;
            return;
        }
        let target = match (target, outbound_v6) {
            (SocketAddr::V4(v4), true) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            (SocketAddr::V6(_), false) => {
                state.stats.dropped += 1;
                return;
            }
            (t, _) => t,
        };
        match self.outbound.send_to(payload, target).await {
            Ok(_) => {
                state.stats.datagrams_up += 1;
                state.stats.bytes_up += payload.len() as u64;
                state.last_activity = now;
            }
            Err(e) => {
                state.stats.dropped += 1;
                tracing::debug!(%target, error = %e, "UDP: send failed");
            }
        }
    }

    async fn handle_from_target(
        &self,
        state: &mut State,
        buf: &mut [u8],
        n: usize,
        src: SocketAddr,
    ) {
        let Some(client) = state.client_addr else {
            // No datagram from the client yet and no announced port: nowhere to send.
            state.stats.dropped += 1;
            return;
        };
        let src = SocketAddr::new(src.ip().to_canonical(), src.port());
        let header = UdpHeader {
            frag: Default::default(),
            dst: Addr::Ip(src),
        };
        let mut encoded = BytesMut::with_capacity(HEADROOM);
        header.encode(&mut encoded);
        let start = HEADROOM - encoded.len();
        buf[start..HEADROOM].copy_from_slice(&encoded);
        match self
            .client_socket
            .send_to(&buf[start..HEADROOM + n], client)
            .await
        {
            Ok(_) => {
                state.stats.datagrams_down += 1;
                state.stats.bytes_down += n as u64;
                state.last_activity = Instant::now();
            }
            Err(e) => {
                state.stats.dropped += 1;
                tracing::debug!(%client, error = %e, "UDP: reply to client failed");
            }
        }
    }

    fn allowed(&self, dst: &Addr, target: SocketAddr) -> bool {
        let rules = self.shared.rules();
        if rules.is_empty() {
            return true;
        }
        let host = match dst {
            Addr::Domain(h, _) => Some(h.as_str()),
            Addr::Ip(_) => None,
        };
        let input = RuleInput {
            client: self.client_ip,
            user: self.client_user.as_deref(),
            command: Command::UDP_ASSOCIATE,
            target: Some((host, Some(target.ip()), target.port())),
        };
        rules.evaluate(&input) == Decision::Allow
    }

    /// IP destinations as they are; names through a small per-association cache, so a
    /// stream of datagrams to one name costs one lookup.
    async fn resolve_cached(
        &self,
        state: &mut State,
        dst: &Addr,
        now: Instant,
    ) -> Option<SocketAddr> {
        if let Addr::Ip(sa) = dst {
            return Some(*sa);
        }
        if let Some((addr, at)) = state.names.get(dst) {
            if now.duration_since(*at) < NAME_CACHE_TTL {
                return Some(*addr);
            }
        }
        let resolved = resolve(dst).await.ok()?;
        let addr = *resolved.iter().find(|a| a.is_ipv4()).or(resolved.first())?;
        if state.names.len() >= NAME_CACHE_SIZE {
            state
                .names
                .retain(|_, (_, at)| now.duration_since(*at) < NAME_CACHE_TTL);
            if state.names.len() >= NAME_CACHE_SIZE {
                state.names.clear();
            }
        }
        state.names.insert(dst.clone(), (addr, now));
        Some(addr)
    }
}
