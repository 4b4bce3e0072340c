//! One association's relay loop: client datagrams are unwrapped (and reassembled) and sent
//! on; replies are wrapped with their source address and sent back.
//!
//! Datagrams move in batches, because on a loaded relay the per-syscall cost (entry, file
//! lookup, tokio readiness bookkeeping) is a large share of the cost per datagram. Each
//! direction has a [`Lane`] of [`SLOTS`] receive slots: on Linux one `recvmmsg(2)` fills
//! them and one `sendmmsg(2)` sends what came of them onward, each message to its own
//! destination (see [`mmsg`]). Elsewhere, and on a socket where either call failed
//! unexpectedly, the same slots are filled by `recv_from` and sent by `send_to`, one datagram
//! per syscall; everything between receiving and sending is shared by both paths.
//!
//! Within a batch, consecutive datagrams of one size to one remote destination (a game's or
//! a QUIC connection's burst) leave as one `sendmsg` with `UDP_SEGMENT` (UDP GSO): the
//! kernel builds and routes one packet, and the device or the last step before it cuts it
//! into the original datagrams. Over loopback that cut happens on the relay's core and
//! costs the receiver, on the same machine, more than it saves the relay, so loopback
//! destinations get separate datagrams (see `mmsg::local_by_address`). A socket whose
//! kernel or route refuses segmentation goes back to sending datagrams one by one.
//!
//! While the association busy-polls after traffic, its two sockets are out of the
//! runtime's epoll and each round tries both (see [`super::socket`] for why).
//!
//! A slot holds a datagram of any size (65,535 bytes behind [`HEADROOM`]): a datagram cut
//! short by a small buffer is consumed all the same and cannot be read again, so smaller slots
//! would lose large datagrams. Memory per association: no slots while idle (they are
//! allocated on first traffic, for both directions once the association busy-polls, since
//! each round of it tries both, and released after [`QUIET`] without any); while busy,
//! `2 × SLOTS × 68 KiB` (1.1 MiB) of address space. A zeroed allocation that large is
//! normally mapped on demand, so only the pages datagrams were written to become resident:
//! with small datagrams one page per slot (64 KiB for both directions); with datagrams of
//! tens of KiB, up to the whole 1.1 MiB. Eight slots relay as fast as sixteen did on the
//! UDP benchmark (185k vs 185k datagrams/s, interleaved), at half the worst case.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use ferrosocks_proto::addr::atyp;
use ferrosocks_proto::frag::{FragOutcome, Reassembly};
use ferrosocks_proto::udp::decode_datagram;
use ferrosocks_proto::{Addr, Command};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::socket::RelaySocket;
use crate::busy_poll::{self, Spin};
use crate::resolve::resolve_dated;
use crate::rules::{Decision, RuleInput, Rules};
use crate::Shared;

/// Room kept in front of a received reply for the header (an IPv6 header is 22 bytes), so
/// the reply is wrapped in place instead of copied.
const HEADROOM: usize = 22;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Bytes per receive slot: the headroom and a datagram of any size, rounded up to whole
/// pages so every slot starts at the same offset in a page and a small datagram touches
/// one page, not two.
const STRIDE: usize = (HEADROOM + MAX_DATAGRAM).next_multiple_of(4096);
/// Datagrams received (and sent) per syscall. 8 already spreads a syscall's fixed cost thin
/// (16 measured no faster); more would only add address space per association (see the
/// module documentation).
/// Without `recvmmsg` one slot is enough: datagrams come one per syscall anyway.
const SLOTS: usize = if cfg!(target_os = "linux") { 8 } else { 1 };
/// Datagrams handled per wake-up and direction before the other direction gets a turn.
const BATCH: usize = 64;
/// How long an association may go without traffic before its receive slots are released.
const QUIET: Duration = Duration::from_secs(10);
/// How many names one association keeps resolved.
const NAME_CACHE_SIZE: usize = 64;

pub(crate) struct Association {
    pub(crate) client_socket: RelaySocket,
    pub(crate) outbound: RelaySocket,
    /// The address the client reached the server at, where `client_socket` is bound.
    pub(crate) local_ip: IpAddr,
    /// The client is on this host (loopback, or the address it reached): only then can its
    /// datagrams come from the server's own relay sockets.
    pub(crate) client_local: bool,
    /// Both sockets' entries in the server's list of relay sockets, removed when it ends.
    pub(crate) _relay_addrs: super::RelayAddrsHeld,
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
    /// The last source found not to be one of the server's relay sockets (see
    /// `handle_from_client`); apart from `client_addr`, which starts at the address the
    /// request named, unchecked.
    checked_src: Option<SocketAddr>,
    reassembly: Reassembly,
    names: HashMap<Addr, (SocketAddr, Instant)>,
    stats: UdpStats,
    last_activity: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to target.
    Up,
    /// Target to client.
    Down,
}

impl State {
    fn relayed(&mut self, direction: Direction, payload: u64, now: Instant) {
        match direction {
            Direction::Up => {
                self.stats.datagrams_up += 1;
                self.stats.bytes_up += payload;
            }
            Direction::Down => {
                self.stats.datagrams_down += 1;
                self.stats.bytes_down += payload;
            }
        }
        self.last_activity = now;
    }

    fn send_failed(&mut self, direction: Direction, dest: SocketAddr, e: &io::Error) {
        self.stats.dropped += 1;
        match direction {
            Direction::Up => tracing::debug!(target = %dest, error = %e, "UDP: send failed"),
            Direction::Down => {
                tracing::debug!(client = %dest, error = %e, "UDP: reply to client failed")
            }
        }
    }
}

/// One received datagram: its slot holds it at `HEADROOM..HEADROOM + len`.
#[derive(Clone, Copy)]
struct Received {
    len: usize,
    /// `None` for an address that is not IP (never on a UDP socket; dropped if it were).
    src: Option<SocketAddr>,
    /// Cut short by the slot: never relayed.
    truncated: bool,
}

/// One datagram to send.
struct Outgoing {
    data: Payload,
    /// Payload bytes for the counters (a reply's header is not counted).
    counted: u64,
    dest: SocketAddr,
}

enum Payload {
    /// A range of the lane's slots.
    Slot(Range<usize>),
    /// A datagram reassembled from fragments.
    Owned(Vec<u8>),
}

impl Outgoing {
    fn bytes<'a>(&'a self, slots: &'a [u8]) -> &'a [u8] {
        match &self.data {
            Payload::Slot(range) => &slots[range.clone()],
            Payload::Owned(data) => data,
        }
    }
}

/// What every datagram of one received batch shares.
#[derive(Clone, Copy)]
struct Batch<'a> {
    rules: &'a Rules,
    outbound_v6: bool,
    now: Instant,
}

/// One direction's batch state.
struct Lane {
    /// `SLOTS` slots of `STRIDE` bytes each, allocated on first use, released when quiet.
    slots: Option<Vec<u8>>,
    received: Vec<Received>,
    outgoing: Vec<Outgoing>,
    /// Whether `recvmmsg`/`sendmmsg` are used; cleared for good after either fails in a way
    /// that says the call itself is unusable here.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    batched: bool,
    /// Whether runs of equal datagrams to one destination go out as one segmented send
    /// (UDP GSO); cleared for good after the kernel refuses one (see [`mmsg::gso_run`]).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    segmented: bool,
    /// Whether runs to loopback destinations are segmented too. Never in the server (see
    /// `mmsg::local_by_address`); set by tests, which have no other destination to check
    /// a segmented send with.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    segment_loopback: bool,
}

impl Lane {
    fn new() -> Lane {
        Lane {
            slots: None,
            received: Vec::with_capacity(SLOTS),
            outgoing: Vec::with_capacity(SLOTS),
            batched: cfg!(target_os = "linux"),
            segmented: cfg!(target_os = "linux"),
            segment_loopback: false,
        }
    }

    /// Receives up to `want` (at most [`SLOTS`]) datagrams from `socket` into the slots;
    /// returns how many. 0 when none is queued, or on an error (as the per-datagram loop
    /// always did: a socket error ends the drain, readiness brings the loop back).
    fn receive(&mut self, socket: &RelaySocket, want: usize) -> usize {
        self.received.clear();
        let want = want.min(SLOTS);
        // `vec!` of zeros comes from calloc: the pages of a slot become resident only once a
        // datagram is written to them.
        let slots = self.slots.get_or_insert_with(|| vec![0u8; SLOTS * STRIDE]);
        #[cfg(target_os = "linux")]
        if self.batched {
            use std::os::fd::AsRawFd;
            let received = &mut self.received;
            match socket.try_receive(|s| mmsg::receive(s.as_raw_fd(), slots, want, received)) {
                Ok(()) => return self.received.len(),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    return 0
                }
                Err(e) => {
                    // Not worth a guess whether this socket would ever take the batched call:
                    // the per-datagram path works everywhere.
                    tracing::debug!(error = %e, "UDP: recvmmsg failed; receiving one datagram per call");
                    self.batched = false;
                    self.received.clear();
                }
            }
        }
        for slot in slots.chunks_exact_mut(STRIDE).take(want) {
            match socket.try_recv_from(&mut slot[HEADROOM..]) {
                Ok((len, src)) => self.received.push(Received {
                    len,
                    src: Some(src),
                    truncated: false,
                }),
                Err(_) => break,
            }
        }
        self.received.len()
    }

    /// Sends every outgoing datagram on `socket` and counts each. Like `send_to`, waits for
    /// room in a full send buffer instead of dropping.
    async fn send(
        &mut self,
        socket: &RelaySocket,
        state: &mut State,
        direction: Direction,
        now: Instant,
    ) {
        let slots = self.slots.as_deref().unwrap_or_default();
        let mut next = 0;
        while next < self.outgoing.len() {
            #[cfg(target_os = "linux")]
            if self.batched {
                use std::os::fd::AsRawFd;
                let rest = &self.outgoing[next..];
                // Either a run that goes out segmented (one message), or the datagrams up
                // to where the next such run begins (one message each).
                let run = if self.segmented {
                    mmsg::gso_run(slots, rest, self.segment_loopback)
                } else {
                    1
                };
                let segmented = run >= 2;
                let batch = if segmented {
                    &rest[..run]
                } else if self.segmented {
                    &rest[..mmsg::singles(slots, rest, self.segment_loopback)]
                } else {
                    rest
                };
                let fd = socket.socket().as_raw_fd();
                let sent = if segmented {
                    mmsg::send_segmented(fd, slots, batch).map(|()| batch.len())
                } else {
                    mmsg::send(fd, slots, batch)
                };
                match sent {
                    Ok(sent) => {
                        for o in &batch[..sent] {
                            state.relayed(direction, o.counted, now);
                        }
                        next += sent;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if socket.writable().await.is_ok() {
                            continue;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Nothing of the run was sent: a UDP send is all or nothing (except
                    // on a few software devices that can fail with ENETDOWN after some
                    // segments left; those datagrams may then arrive twice, which UDP
                    // allows). The run goes one by one, so an error that belongs to its
                    // destination (EACCES, ENETUNREACH, a path MTU below the segment)
                    // is reported per datagram as without segmentation. Only an error
                    // that says this socket cannot segment at all turns it off.
                    Err(e) if segmented => {
                        let cannot_segment = mmsg::cannot_segment(&e);
                        if cannot_segment {
                            tracing::debug!(error = %e, "UDP: segmented sends refused; sending datagrams one by one");
                        }
                        for o in batch {
                            send_one(socket, slots, o, state, direction, now).await;
                        }
                        next += batch.len();
                        if cannot_segment {
                            self.segmented = false;
                        }
                        continue;
                    }
                    // The first datagram of the batch failed. Errors belong to one
                    // destination (EACCES, ENETUNREACH, EMSGSIZE…), so that datagram alone
                    // takes the per-datagram path below, which reports its error exactly as
                    // before (or sends it, if the error was passing).
                    Err(e) => {
                        if e.raw_os_error() == Some(nix::libc::ENOSYS) {
                            self.batched = false;
                        }
                    }
                }
            }
            send_one(socket, slots, &self.outgoing[next], state, direction, now).await;
            next += 1;
        }
        self.outgoing.clear();
    }
}

/// Sends one datagram with `send_to` (waiting for room like the batched paths) and counts
/// it as relayed or dropped: the path every datagram can take, and the one that reports
/// an error as that datagram's own.
async fn send_one(
    socket: &RelaySocket,
    slots: &[u8],
    o: &Outgoing,
    state: &mut State,
    direction: Direction,
    now: Instant,
) {
    match socket.send_to(o.bytes(slots), o.dest).await {
        Ok(_) => state.relayed(direction, o.counted, now),
        Err(e) => state.send_failed(direction, o.dest, &e),
    }
}

impl Association {
    pub(crate) async fn run(mut self, stop: CancellationToken) -> UdpStats {
        let idle = self.shared.config.timeouts.udp_idle;
        let mut state = State {
            client_addr: self.client_port.map(|p| SocketAddr::new(self.client_ip, p)),
            checked_src: None,
            reassembly: Reassembly::new(Duration::from_secs(5)),
            names: HashMap::new(),
            stats: UdpStats::default(),
            last_activity: Instant::now(),
        };
        let mut up = Lane::new();
        let mut down = Lane::new();
        let outbound_v6 = self
            .outbound
            .local_addr()
            .map(|a| a.is_ipv6())
            .unwrap_or(false);
        // One timer for the whole association, re-armed only when it fires early: creating a
        // timer per datagram costs more than relaying the datagram. While slots are held it
        // also fires after `QUIET`, to release them.
        let idle_timer = tokio::time::sleep_until(state.last_activity + idle);
        tokio::pin!(idle_timer);
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        let mut spin = Spin::new(self.shared.busy_poll);
        // Whether both sockets are out of the runtime's epoll: exactly while spinning (see
        // `socket`).
        let mut polled = false;
        state.stats.end = loop {
            // Neither readiness nor `select!` takes from tokio's task budget: without this, an
            // association that always has datagrams would keep its worker to itself.
            tokio::task::consume_budget().await;
            let held = up.slots.is_some() || down.slots.is_some();
            let spinning = spin.active();
            if spinning != polled {
                let changed = self
                    .client_socket
                    .set_polled(spinning)
                    .and_then(|()| self.outbound.set_polled(spinning));
                if let Err(e) = changed {
                    tracing::warn!(error = %e, "UDP: relay socket could not be registered");
                    break "relay socket failed";
                }
                polled = spinning;
            }
            tokio::select! {
                // Right after traffic: no readiness comes while the sockets are out of the
                // epoll, so each round tries both, without sleeping.
                () = busy_poll::tick(), if polled => {
                    let up_moved = self.relay_up(&mut state, &mut up, outbound_v6).await;
                    let down_moved = self.relay_down(&mut state, &mut down).await;
                    if up_moved || down_moved {
                        spin.moved();
                    }
                }
                ready = self.client_socket.readable(), if !polled => {
                    if ready.is_err() {
                        break "relay socket failed";
                    }
                    if self.relay_up(&mut state, &mut up, outbound_v6).await {
                        spin.moved();
                    }
                }
                ready = self.outbound.readable(), if !polled => {
                    if ready.is_err() {
                        break "relay socket failed";
                    }
                    if self.relay_down(&mut state, &mut down).await {
                        spin.moved();
                    }
                }
                // The control connection closed (or the server is stopping).
                () = &mut stopped => break "ended with its TCP connection",
                () = &mut idle_timer => {
                    let now = Instant::now();
                    if state.last_activity + idle <= now {
                        break "idle timeout";
                    }
                    if state.last_activity + QUIET <= now {
                        up.slots = None;
                        down.slots = None;
                    }
                    idle_timer.as_mut().reset(next_deadline(&state, &up, &down, idle));
                    continue;
                }
            }
            if !held && (up.slots.is_some() || down.slots.is_some()) {
                // Slots were just allocated: make sure the timer comes by to release them.
                let deadline = next_deadline(&state, &up, &down, idle);
                if deadline < idle_timer.deadline() {
                    idle_timer.as_mut().reset(deadline);
                }
            }
        };
        state.stats
    }

    /// Client to target: drains the client socket (bounded by [`BATCH`]) one batch at a time.
    /// Whether any datagram came in.
    async fn relay_up(&self, state: &mut State, lane: &mut Lane, outbound_v6: bool) -> bool {
        let mut budget = BATCH;
        while budget > 0 {
            let got = lane.receive(&self.client_socket, budget);
            if got == 0 {
                break;
            }
            budget = budget.saturating_sub(got);
            // Once per batch, not per datagram: a clock read, and the rules (an Arc behind a
            // lock shared with every other task).
            let now = Instant::now();
            let rules = self.shared.rules();
            let batch = Batch {
                rules: &rules,
                outbound_v6,
                now,
            };
            let slots = lane.slots.as_deref().unwrap_or_default();
            for (k, r) in lane.received.iter().enumerate() {
                let at = k * STRIDE + HEADROOM;
                if let Some(o) = self.handle_from_client(state, &batch, slots, at, *r).await {
                    lane.outgoing.push(o);
                }
            }
            lane.send(&self.outbound, state, Direction::Up, now).await;
        }
        budget < BATCH
    }

    /// Target to client: drains the outbound socket (bounded by [`BATCH`]) one batch at a
    /// time. Whether any datagram came in.
    async fn relay_down(&self, state: &mut State, lane: &mut Lane) -> bool {
        let mut budget = BATCH;
        while budget > 0 {
            let got = lane.receive(&self.outbound, budget);
            if got == 0 {
                break;
            }
            budget = budget.saturating_sub(got);
            let now = Instant::now();
            let Some(slots) = lane.slots.as_deref_mut() else {
                break;
            };
            for (k, (r, slot)) in lane
                .received
                .iter()
                .zip(slots.chunks_exact_mut(STRIDE))
                .enumerate()
            {
                if let Some(o) = handle_from_target(state, slot, k * STRIDE, *r) {
                    lane.outgoing.push(o);
                }
            }
            lane.send(&self.client_socket, state, Direction::Down, now)
                .await;
        }
        budget < BATCH
    }

    /// What becomes of one client datagram, `slots[at..at + r.len]`: sent on (returned),
    /// kept for reassembly, or dropped.
    async fn handle_from_client(
        &self,
        state: &mut State,
        batch: &Batch<'_>,
        slots: &[u8],
        at: usize,
        r: Received,
    ) -> Option<Outgoing> {
        let Batch {
            rules,
            outbound_v6,
            now,
        } = *batch;
        let Some(src) = r.src else {
            state.stats.dropped += 1;
            return None;
        };
        // RFC 1928 §7: drop anything not from the client's recorded address.
        if src.ip().to_canonical() != self.client_ip
            || self.client_port.is_some_and(|p| p != src.port())
        {
            state.stats.dropped += 1;
            tracing::debug!(%src, "UDP: dropped a datagram from a foreign source");
            return None;
        }
        if r.truncated {
            state.stats.dropped += 1;
            tracing::debug!(%src, "UDP: dropped a truncated datagram");
            return None;
        }
        // Not one of the server's own relay sockets, or a datagram could go round between
        // them: checked once per new source (a request can name a relay socket's port as
        // its own), and only for a client on this host, the only one that can reach them
        // from their addresses.
        if self.client_local && state.checked_src != Some(src) {
            if self.shared.udp_relays.contains(src, self.local_ip) {
                state.stats.dropped += 1;
                tracing::debug!(%src, "UDP: dropped a datagram from one of the server's relay sockets");
                return None;
            }
            state.checked_src = Some(src);
        }
        state.client_addr = Some(src);
        let datagram = &slots[at..at + r.len];
        let Ok((header, payload)) = decode_datagram(datagram) else {
            state.stats.dropped += 1;
            return None;
        };
        // The payload is the datagram's tail.
        let payload_at = at + (datagram.len() - payload.len());
        let (dst, data) =
            match state
                .reassembly
                .push(now.into_std(), header.frag, &header.dst, payload)
            {
                FragOutcome::Standalone => (header.dst, Payload::Slot(payload_at..at + r.len)),
                FragOutcome::Complete(dst, data) => (dst, Payload::Owned(data)),
                FragOutcome::Queued => {
                    state.last_activity = now;
                    return None;
                }
                FragOutcome::Dropped(reason) => {
                    tracing::debug!(?reason, "UDP: fragment dropped");
                    state.stats.dropped += 1;
                    return None;
                }
            };
        let Some(target) = self.resolve_cached(state, &dst, now).await else {
            state.stats.dropped += 1;
            return None;
        };
        if !self.allowed(rules, &dst, target) {
            state.stats.dropped += 1;
            return None;
        }
        let target = match (target, outbound_v6) {
            (SocketAddr::V4(v4), true) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            (SocketAddr::V6(_), false) => {
                state.stats.dropped += 1;
                return None;
            }
            (t, _) => t,
        };
        let counted = match &data {
            Payload::Slot(range) => range.len(),
            Payload::Owned(data) => data.len(),
        } as u64;
        Some(Outgoing {
            data,
            counted,
            dest: target,
        })
    }

    fn allowed(&self, rules: &Rules, dst: &Addr, target: SocketAddr) -> bool {
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

    /// IP destinations as they are; names through a small per-association cache (kept as
    /// long as the server's `name_cache`), so a stream of datagrams to one name costs
    /// neither a lookup nor the server-wide cache's lock; a miss asks the server's cache.
    async fn resolve_cached(
        &self,
        state: &mut State,
        dst: &Addr,
        now: Instant,
    ) -> Option<SocketAddr> {
        if let Addr::Ip(sa) = dst {
            return Some(*sa);
        }
        let ttl = self.shared.names.ttl();
        if let Some((addr, at)) = state.names.get(dst) {
            if now.duration_since(*at) < ttl {
                return Some(*addr);
            }
        }
        // Dated when the server's cache looked it up, so it is not kept past that `ttl`.
        let (resolved, looked_up) = resolve_dated(dst, &self.shared.names).await.ok()?;
        let addr = *resolved.iter().find(|a| a.is_ipv4()).or(resolved.first())?;
        if ttl.is_zero() {
            return Some(addr);
        }
        if state.names.len() >= NAME_CACHE_SIZE {
            state
                .names
                .retain(|_, (_, at)| now.duration_since(*at) < ttl);
            if state.names.len() >= NAME_CACHE_SIZE {
                state.names.clear();
            }
        }
        state.names.insert(dst.clone(), (addr, looked_up));
        Some(addr)
    }
}

/// When the association's timer should next come by: at the idle deadline, or sooner while
/// slots are held, to release them once quiet.
fn next_deadline(state: &State, up: &Lane, down: &Lane, idle: Duration) -> Instant {
    let held = up.slots.is_some() || down.slots.is_some();
    let wait = if held { QUIET.min(idle) } else { idle };
    state.last_activity + wait
}

/// What becomes of one reply, held in `slot` (which starts at `base` in the lane's slots):
/// wrapped in place and returned for sending to the client, or dropped.
fn handle_from_target(
    state: &mut State,
    slot: &mut [u8],
    base: usize,
    r: Received,
) -> Option<Outgoing> {
    let Some(client) = state.client_addr else {
        // No datagram from the client yet and no announced port: nowhere to send.
        state.stats.dropped += 1;
        return None;
    };
    let Some(src) = r.src else {
        state.stats.dropped += 1;
        return None;
    };
    if r.truncated {
        state.stats.dropped += 1;
        tracing::debug!(%src, "UDP: dropped a truncated reply");
        return None;
    }
    let src = SocketAddr::new(src.ip().to_canonical(), src.port());
    let start = write_reply_header(&mut slot[..HEADROOM], src);
    Some(Outgoing {
        data: Payload::Slot(base + start..base + HEADROOM + r.len),
        counted: r.len as u64,
        dest: client,
    })
}

/// Writes the header of a reply from `src` (RSV, FRAG 0, the address) so that it ends at the
/// end of `headroom`, where the payload begins; returns where it starts. The same bytes as
/// encoding a `UdpHeader` (tested), without a buffer allocated per datagram.
fn write_reply_header(headroom: &mut [u8], src: SocketAddr) -> usize {
    let end = headroom.len();
    let port = src.port().to_be_bytes();
    let start = match src.ip() {
        IpAddr::V4(ip) => {
            let start = end - 10;
            headroom[start + 4..start + 8].copy_from_slice(&ip.octets());
            headroom[start + 3] = atyp::IPV4;
            start
        }
        IpAddr::V6(ip) => {
            let start = end - 22;
            headroom[start + 4..start + 20].copy_from_slice(&ip.octets());
            headroom[start + 3] = atyp::IPV6;
            start
        }
    };
    headroom[start..start + 3].copy_from_slice(&[0, 0, 0]);
    headroom[end - 2..end].copy_from_slice(&port);
    start
}

/// `recvmmsg(2)`/`sendmmsg(2)` through nix's safe wrappers, on a non-blocking socket.
#[cfg(target_os = "linux")]
mod mmsg {
    use std::io::{self, IoSlice, IoSliceMut};
    use std::net::SocketAddr;
    use std::os::fd::RawFd;

    use nix::sys::socket::{
        recvmmsg, sendmmsg, sendmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
    };

    use super::{Outgoing, Received, HEADROOM, SLOTS, STRIDE};

    /// Receives up to `want` datagrams into `slots` (each at `HEADROOM` in its slot) and
    /// appends what arrived to `out`.
    pub(super) fn receive(
        fd: RawFd,
        slots: &mut [u8],
        want: usize,
        out: &mut Vec<Received>,
    ) -> io::Result<()> {
        let want = want.min(SLOTS);
        let mut chunks = slots.chunks_exact_mut(STRIDE);
        let mut iovs: [[IoSliceMut<'_>; 1]; SLOTS] = std::array::from_fn(|_| {
            [IoSliceMut::new(
                chunks
                    .next()
                    .map(|s| &mut s[HEADROOM..])
                    .unwrap_or_default(),
            )]
        });
        // Headers per call, not per association: they hold raw pointers (not Send), and
        // reused headers would keep the previous call's address lengths.
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(want, None);
        let results = recvmmsg(
            fd,
            &mut headers,
            iovs[..want].iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )?;
        for msg in results {
            out.push(Received {
                len: msg.bytes,
                src: msg.address.as_ref().and_then(to_std),
                truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
            });
        }
        Ok(())
    }

    /// Sends the first (up to [`SLOTS`]) of `outgoing`, each to its own destination; returns
    /// how many were sent, which is fewer when the send buffer filled up or a later one
    /// failed (its error comes back on the next call, which starts with it).
    pub(super) fn send(fd: RawFd, slots: &[u8], outgoing: &[Outgoing]) -> io::Result<usize> {
        let n = outgoing.len().min(SLOTS);
        let iovs: [[IoSlice<'_>; 1]; SLOTS] = std::array::from_fn(|i| {
            [IoSlice::new(
                outgoing.get(i).map(|o| o.bytes(slots)).unwrap_or_default(),
            )]
        });
        let addrs: [Option<SockaddrStorage>; SLOTS] =
            std::array::from_fn(|i| outgoing.get(i).map(|o| SockaddrStorage::from(o.dest)));
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, None);
        let cmsgs: [ControlMessage<'_>; 0] = [];
        let sent = sendmmsg(
            fd,
            &mut headers,
            iovs[..n].iter(),
            &addrs[..n],
            cmsgs,
            MsgFlags::MSG_DONTWAIT,
        )?;
        Ok(sent.count())
    }

    /// Largest datagram sent segmented: it fits the MTU of an Ethernet path (1500 less the
    /// IP and UDP headers: 28 bytes for IPv4, 48 for IPv6). The kernel refuses segments
    /// larger than the route's MTU, and the per-datagram cost that segmentation saves
    /// matters most for small datagrams.
    fn gso_max_segment(dest: SocketAddr) -> usize {
        if dest.ip().to_canonical().is_ipv6() {
            1452
        } else {
            1472
        }
    }

    /// Whether datagrams to `dest` stay on this machine by their address: loopback, or
    /// the unspecified address, which Linux delivers locally too. Such a receiver runs
    /// here, and a segmented packet sent over loopback is cut into datagrams on the
    /// relay's core and handed over as pieces of shared pages; reading and freeing those
    /// costs the receiver more than separate datagrams do. In the UDP benchmark (window of
    /// 64, the generator's core the limit) segmenting cost the receiver 7 % of its
    /// throughput, for 13 % of the relay's own CPU per round trip. A receiver on another
    /// machine gets ordinary packets either way, so there the saving is free. (This
    /// host's own other addresses loop back as well; telling them apart would take a
    /// route lookup per destination, so they are segmented like remote ones.)
    fn local_by_address(dest: SocketAddr) -> bool {
        let ip = dest.ip().to_canonical();
        ip.is_loopback() || ip.is_unspecified()
    }

    /// Whether a refused segmented send means the socket cannot segment at all (no
    /// `UDP_SEGMENT` in this kernel, a device that cannot checksum), rather than a problem
    /// of one destination or path.
    pub(super) fn cannot_segment(e: &io::Error) -> bool {
        use nix::libc::{EIO, ENOPROTOOPT, EOPNOTSUPP};
        matches!(e.raw_os_error(), Some(EIO | ENOPROTOOPT | EOPNOTSUPP))
    }
    /// Largest segmented send: the kernel's limit on one UDP message, less room for headers.
    const GSO_MAX_BYTES: usize = 65_000;

    /// How many datagrams at the start of `outgoing` one segmented send (UDP GSO) can
    /// carry: consecutive datagrams to the same destination, all of the same length. The
    /// kernel then builds and routes one packet instead of one per datagram, and cuts it
    /// into the original datagrams in or just before the device: the receiver sees what a
    /// datagram-by-datagram relay would have sent.
    pub(super) fn gso_run(slots: &[u8], outgoing: &[Outgoing], loopback_too: bool) -> usize {
        let Some(first) = outgoing.first() else {
            return 0;
        };
        let len = first.bytes(slots).len();
        if len == 0
            || len > gso_max_segment(first.dest)
            || (local_by_address(first.dest) && !loopback_too)
        {
            return 1;
        }
        let limit = outgoing.len().min(SLOTS).min(GSO_MAX_BYTES / len);
        outgoing[..limit]
            .iter()
            .take_while(|o| o.dest == first.dest && o.bytes(slots).len() == len)
            .count()
    }

    /// How many datagrams at the start of `outgoing` come before the next run that
    /// [`gso_run`] would send segmented (at least one).
    pub(super) fn singles(slots: &[u8], outgoing: &[Outgoing], loopback_too: bool) -> usize {
        (1..outgoing.len())
            .find(|&i| gso_run(slots, &outgoing[i..], loopback_too) >= 2)
            .unwrap_or(outgoing.len())
    }

    /// Sends a run found by [`gso_run`] as one message with `UDP_SEGMENT`.
    pub(super) fn send_segmented(fd: RawFd, slots: &[u8], run: &[Outgoing]) -> io::Result<()> {
        let n = run.len().min(SLOTS);
        let Some(first) = run.first() else {
            return Ok(());
        };
        let iovs: [IoSlice<'_>; SLOTS] = std::array::from_fn(|i| {
            IoSlice::new(run.get(i).map(|o| o.bytes(slots)).unwrap_or_default())
        });
        let segment = first.bytes(slots).len() as u16;
        let dest = SockaddrStorage::from(first.dest);
        sendmsg(
            fd,
            &iovs[..n],
            &[ControlMessage::UdpGsoSegments(&segment)],
            MsgFlags::MSG_DONTWAIT,
            Some(&dest),
        )?;
        Ok(())
    }

    fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = addr.as_sockaddr_in() {
            return Some(SocketAddr::from(*v4));
        }
        addr.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use ferrosocks_proto::{Encode, Frag, UdpHeader};
    use tokio::net::UdpSocket;

    use super::*;

    #[test]
    fn reply_header_is_the_encoded_udp_header_at_the_end_of_the_headroom() {
        for src in ["192.0.2.7:53", "[2001:db8::1]:65535", "0.0.0.0:0"] {
            let src: SocketAddr = src.parse().unwrap();
            let mut expected = BytesMut::new();
            UdpHeader {
                frag: Frag(0),
                dst: Addr::Ip(src),
            }
            .encode(&mut expected);
            let mut headroom = [0xAAu8; HEADROOM];
            let start = write_reply_header(&mut headroom, src);
            assert_eq!(&headroom[start..], &expected[..], "{src}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn segmented_runs_are_equal_sizes_to_one_destination_and_bounded() {
        let a: SocketAddr = "192.0.2.1:53".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:53".parse().unwrap();
        let out = |list: &[(SocketAddr, usize)]| -> Vec<Outgoing> {
            list.iter()
                .map(|&(dest, len)| Outgoing {
                    data: Payload::Owned(vec![0; len]),
                    counted: len as u64,
                    dest,
                })
                .collect()
        };
        let run = |list: &[(SocketAddr, usize)]| mmsg::gso_run(&[], &out(list), false);
        let singles = |list: &[(SocketAddr, usize)]| mmsg::singles(&[], &out(list), false);
        assert_eq!(run(&[]), 0);
        assert_eq!(run(&[(a, 100)]), 1);
        assert_eq!(run(&[(a, 100), (a, 100), (a, 99), (a, 100)]), 2);
        assert_eq!(run(&[(a, 100), (b, 100)]), 1);
        // Empty and oversized datagrams are never segmented.
        assert_eq!(run(&[(a, 0), (a, 0)]), 1);
        assert_eq!(run(&[(a, 1473), (a, 1473)]), 1);
        assert_eq!(run(&[(a, 1472), (a, 1472)]), 2);
        let v6: SocketAddr = "[2001:db8::1]:53".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:53".parse().unwrap();
        assert_eq!(run(&[(v6, 1453), (v6, 1453)]), 1);
        assert_eq!(run(&[(v6, 1452), (v6, 1452)]), 2);
        assert_eq!(run(&[(mapped, 1472), (mapped, 1472)]), 2);
        // At most one batch per send.
        assert_eq!(run(&vec![(a, 10); SLOTS + 3]), SLOTS);
        // Singles stop where the next run starts.
        assert_eq!(singles(&[(a, 1), (b, 1), (b, 1)]), 1);
        assert_eq!(singles(&[(a, 1), (b, 2), (a, 3), (a, 3)]), 2);
        assert_eq!(singles(&[(a, 1), (b, 2), (a, 3)]), 3);
        // Loopback destinations are not segmented, unless asked.
        for lo in [
            "127.0.0.1:53",
            "127.3.2.1:53",
            "[::1]:53",
            "[::ffff:127.0.0.1]:53",
            "0.0.0.0:53",
            "[::]:53",
        ] {
            let lo: SocketAddr = lo.parse().unwrap();
            assert_eq!(run(&[(lo, 100), (lo, 100)]), 1, "{lo}");
            assert_eq!(singles(&[(lo, 1), (lo, 1), (a, 3), (a, 3)]), 2, "{lo}");
            assert_eq!(mmsg::gso_run(&[], &out(&[(lo, 100), (lo, 100)]), true), 2);
        }
    }

    #[cfg(target_os = "linux")]
    fn owned(dest: SocketAddr, bytes: Vec<u8>) -> Outgoing {
        Outgoing {
            counted: bytes.len() as u64,
            data: Payload::Owned(bytes),
            dest,
        }
    }

    #[cfg(target_os = "linux")]
    async fn recv_all(socket: &UdpSocket) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
        {
            got.push(buf[..n].to_vec());
        }
        got
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_segmented_send_arrives_as_the_original_datagrams() {
        use std::os::fd::AsRawFd;
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = receiver.local_addr().unwrap();
        let run: Vec<Outgoing> = (0..3u8).map(|i| owned(to, vec![i; 100])).collect();
        mmsg::send_segmented(sender.as_raw_fd(), &[], &run).unwrap();
        assert_eq!(
            recv_all(&receiver).await,
            vec![vec![0u8; 100], vec![1u8; 100], vec![2u8; 100]]
        );
    }

    fn fresh_state() -> State {
        State {
            client_addr: None,
            checked_src: None,
            reassembly: Reassembly::new(Duration::from_secs(5)),
            names: HashMap::new(),
            stats: UdpStats::default(),
            last_activity: Instant::now(),
        }
    }

    /// A receiver with `UDP_GRO` on is handed a segmented packet from loopback whole (one
    /// read with all the segments), so it can tell whether the relay segmented a run.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn runs_to_a_loopback_destination_go_as_separate_datagrams() {
        use nix::sys::socket::{setsockopt, sockopt::UdpGroSegment};
        let socket = RelaySocket::loopback();
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        setsockopt(&receiver, UdpGroSegment, &true).unwrap();
        let to = receiver.local_addr().unwrap();
        let burst = || {
            (0..3u8)
                .map(|i| owned(to, vec![i; 100]))
                .collect::<Vec<_>>()
        };

        let mut state = fresh_state();
        let mut lane = Lane::new();
        lane.outgoing = burst();
        lane.send(&socket, &mut state, Direction::Up, Instant::now())
            .await;
        assert_eq!(state.stats.datagrams_up, 3);
        assert_eq!(
            recv_all(&receiver).await,
            vec![vec![0u8; 100], vec![1u8; 100], vec![2u8; 100]]
        );

        // The same burst segmented arrives as one read: the check above can see a
        // segmented send.
        lane.segment_loopback = true;
        lane.outgoing = burst();
        lane.send(&socket, &mut state, Direction::Up, Instant::now())
            .await;
        assert_eq!(state.stats.datagrams_up, 6);
        let together: Vec<u8> = (0..3u8).flat_map(|i| [i; 100]).collect();
        assert_eq!(recv_all(&receiver).await, vec![together]);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_run_refused_for_its_destination_goes_one_by_one_and_segmentation_stays_on() {
        // An IPv4 socket cannot send to an IPv6 address: the kernel refuses it locally, as
        // it would refuse a destination the rules of the host forbid.
        let socket = RelaySocket::loopback();
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let good = receiver.local_addr().unwrap();
        let refused: SocketAddr = "[::1]:9".parse().unwrap();
        let mut state = fresh_state();
        let mut lane = Lane::new();
        // Both runs are to loopback addresses, which the server never segments.
        lane.segment_loopback = true;
        lane.outgoing = vec![
            owned(refused, vec![9; 50]),
            owned(refused, vec![9; 50]),
            owned(good, vec![1; 60]),
            owned(good, vec![2; 60]),
        ];
        lane.send(&socket, &mut state, Direction::Up, Instant::now())
            .await;
        assert_eq!(state.stats.dropped, 2, "each refused datagram is counted");
        assert_eq!(state.stats.datagrams_up, 2);
        assert!(
            lane.segmented,
            "a destination's error does not turn segmentation off"
        );
        assert!(lane.outgoing.is_empty());
        assert_eq!(
            recv_all(&receiver).await,
            vec![vec![1u8; 60], vec![2u8; 60]]
        );
        assert!(mmsg::cannot_segment(&io::Error::from_raw_os_error(
            nix::libc::EIO
        )));
        assert!(!mmsg::cannot_segment(&io::Error::from_raw_os_error(
            nix::libc::EACCES
        )));
    }
}
