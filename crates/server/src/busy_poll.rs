//! Bounded busy-polling after traffic: for a short window after a tunnel or a UDP
//! association moved data, its task keeps the worker awake instead of letting it sleep in
//! `epoll_wait`, so the answer that usually follows within microseconds is picked up
//! without a wake-up.
//!
//! Why: putting a core to sleep and waking it is what a proxied round trip mostly costs.
//! On a virtual machine an idle vCPU halts (a VM exit), and waking it takes an
//! inter-processor interrupt from the sending core (another exit) and the host scheduling
//! the vCPU again: on the 2-core benchmark machine (guest halt-polling off) a 32-byte
//! round trip through the proxy took ~150 µs at the median against ~4 µs direct, the same
//! for Dante and microsocks. Polling for 50 µs after each message took the median to
//! ~43 µs and p99 from ~220 to ~90 µs (README, Performance). The same trade is HAProxy's
//! `busy-polling` and Linux's guest halt-polling (`haltpoll`); unlike HAProxy's, this one
//! only runs right after traffic, so an idle server never spins.
//!
//! How: the waiting task yields to tokio, which defers a yielded task until it has polled
//! the I/O driver with a zero timeout (`epoll_wait(…, 0)`), so each round of the spin is one
//! non-blocking readiness check that also serves every other socket on the worker. Other
//! ready tasks run between rounds, so a spin never delays real work by more than a round.
//!
//! Only with one worker thread: in tokio's multi-threaded runtime with several workers, an
//! idle worker sleeps holding the I/O driver, so a spinning worker cannot poll it, and each
//! round of its spin wakes the sleeping worker to look for work. Measured with two workers
//! and one sparse round trip per millisecond: the proxy's CPU went from 3 % to 10 %, its
//! context switches from ~9k to ~30k in 3 s, and the median round trip got slower (86 →
//! 100 µs). So by default ([`BusyPoll::Auto`]) the server polls only where it runs one
//! worker: the binary's `workers = "auto"` gives one where the process may run on one or
//! two CPUs (a container limited to them, or pinned with `taskset`, as the benchmark pins
//! it), and `workers = 1` anywhere.

use std::future::{poll_fn, Future};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Default window: long enough to cover a loopback peer's answer (tens of µs), short
/// enough that sparse traffic costs little CPU (at most 50 µs per burst).
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

/// The longest window accepted: beyond a millisecond a spin costs far more than the
/// wake-up it saves.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(1);

/// The `busy_poll` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BusyPoll {
    /// [`DEFAULT_BUSY_POLL`] where the server's runtime has one worker thread, off where it
    /// has several (see the module documentation for why).
    #[default]
    Auto,
    /// This window whatever the runtime; zero turns busy-polling off.
    Window(Duration),
}

impl BusyPoll {
    /// The window sessions use on the runtime this is called from.
    pub fn window(self) -> Duration {
        match self {
            BusyPoll::Window(window) => window,
            BusyPoll::Auto if runs_on_one_worker() => DEFAULT_BUSY_POLL,
            BusyPoll::Auto => Duration::ZERO,
        }
    }
}

/// Whether the current tokio runtime runs its tasks on a single thread.
fn runs_on_one_worker() -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => match handle.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => true,
            _ => handle.metrics().num_workers() == 1,
        },
        Err(_) => false,
    }
}

/// Waits until `poll_ready` is ready (tokio's `poll_read_ready` or `poll_write_ready`). For
/// up to `window` (at most [`MAX_BUSY_POLL`]) it polls without sleeping; after that it waits
/// the ordinary way. A zero window waits the ordinary way at once.
///
/// A poll function rather than a readiness future (tokio's `readable()`): the future is
/// 152 bytes kept in the task of every idle tunnel, twice, while the poll function keeps
/// its waker in the socket's registration, which exists anyway. That registration has one
/// waker per direction, so only one future may wait on a socket's direction at a time.
pub(crate) async fn until_ready<T>(
    window: Duration,
    mut poll_ready: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> T {
    if !window.is_zero() {
        let deadline = Instant::now() + window.min(MAX_BUSY_POLL);
        loop {
            if let Poll::Ready(out) = poll_fn(|cx| Poll::Ready(poll_ready(cx))).await {
                return out;
            }
            tokio::task::yield_now().await;
            if Instant::now() >= deadline {
                break;
            }
        }
    }
    poll_fn(poll_ready).await
}

/// The window as state for a task that waits on several things at once in a `select!`
/// (the UDP relay): [`Spin::active`] says whether to add a [`tick`] branch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spin {
    window: Duration,
    until: Option<Instant>,
}

impl Spin {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window: window.min(MAX_BUSY_POLL),
            until: None,
        }
    }

    /// Traffic just moved: poll without sleeping for the next window.
    pub(crate) fn moved(&mut self) {
        if !self.window.is_zero() {
            self.until = Some(Instant::now() + self.window);
        }
    }

    /// What is left of the window (zero once it has closed, or before any traffic).
    pub(crate) fn remaining(&self) -> Duration {
        self.until.map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(Instant::now())
        })
    }

    /// Whether the window is still open.
    pub(crate) fn active(&self) -> bool {
        !self.remaining().is_zero()
    }
}

/// One round of a spin: completes once the runtime has checked for I/O without sleeping.
pub(crate) fn tick() -> impl Future<Output = ()> {
    tokio::task::yield_now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn data_that_arrives_during_the_window_is_seen() {
        let (mut a, b) = pair().await;
        // Long enough that the write lands inside the window on any machine.
        let waiting = until_ready(MAX_BUSY_POLL * 1000, |cx| b.poll_read_ready(cx));
        let writing = async {
            tokio::task::yield_now().await;
            a.write_all(b"x").await.unwrap();
        };
        let (ready, ()) = tokio::join!(waiting, writing);
        ready.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(b.try_read(&mut buf).unwrap(), 1);
    }

    #[tokio::test]
    async fn data_that_arrives_after_the_window_is_seen() {
        let (mut a, b) = pair().await;
        let waiting = until_ready(Duration::from_micros(1), |cx| b.poll_read_ready(cx));
        let writing = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.write_all(b"y").await.unwrap();
        };
        let (ready, ()) = tokio::join!(waiting, writing);
        ready.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(b.try_read(&mut buf).unwrap(), 1);
        assert_eq!(&buf, b"y");
    }

    #[tokio::test]
    async fn a_zero_window_waits_the_ordinary_way() {
        let (mut a, b) = pair().await;
        a.write_all(b"z").await.unwrap();
        until_ready(Duration::ZERO, |cx| b.poll_read_ready(cx))
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(b.try_read(&mut buf).unwrap(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn auto_polls_on_a_single_thread_runtime() {
        assert_eq!(BusyPoll::Auto.window(), DEFAULT_BUSY_POLL);
    }

    #[test]
    fn auto_polls_with_one_worker_and_not_with_two() {
        for (workers, expected) in [(1, DEFAULT_BUSY_POLL), (2, Duration::ZERO)] {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .build()
                .unwrap();
            let window = runtime.block_on(async { BusyPoll::Auto.window() });
            assert_eq!(window, expected, "{workers} workers");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_explicit_window_applies_whatever_the_runtime() {
        let window = Duration::from_micros(20);
        assert_eq!(BusyPoll::Window(window).window(), window);
        assert_eq!(BusyPoll::Window(Duration::ZERO).window(), Duration::ZERO);
    }

    #[test]
    fn the_window_opens_on_traffic_and_closes_by_itself() {
        let mut spin = Spin::new(Duration::from_secs(60));
        assert!(!spin.active(), "no traffic yet");
        spin.moved();
        assert!(spin.active());
        assert!(spin.remaining() > Duration::ZERO);
        assert!(spin.remaining() <= MAX_BUSY_POLL, "windows are capped");
        let mut short = Spin::new(Duration::from_micros(1));
        assert_eq!(short.remaining(), Duration::ZERO, "no traffic yet");
        short.moved();
        std::thread::sleep(Duration::from_millis(2));
        assert!(!short.active());
        assert_eq!(short.remaining(), Duration::ZERO);
        let mut off = Spin::new(Duration::ZERO);
        off.moved();
        assert!(!off.active(), "a zero window never spins");
    }
}
