//! The TCP relay: both directions at once, half-close passed on, an idle deadline, and
//! byte counts that are exact at the end.
//!
//! Two engines move the bytes:
//! - [`RelayMode::Splice`] (Linux): `splice(2)` from the socket into a pipe and from the pipe
//!   into the other socket, so bulk data never enters user space; the first read after a
//!   wake-up, and whatever splice cannot read, go through a 4 KiB buffer on the stack (see
//!   `splice::pump`). Pipes come from a shared [`PipePool`] and are held only while a
//!   chunk is in flight.
//! - [`RelayMode::Copy`]: the portable read/write loop. Its buffer is allocated when data
//!   is waiting and freed when the socket runs dry.
//!
//! Either way an idle tunnel holds no buffer of its own: it costs its two sockets and its
//! task, nothing more.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::busy_poll::{until_ready, Spin};

/// Copy-mode buffer while a direction is busy. 64 KiB moves a loopback stream with few
/// syscalls; it is freed as soon as the socket has nothing more to read.
const COPY_BUFFER: usize = 64 * 1024;

/// How the relay moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayMode {
    /// Zero-copy `splice(2)` through a pipe for bulk data (Linux); elsewhere the same as
    /// `Copy`.
    #[default]
    Splice,
    /// A read/write loop through a user-space buffer.
    Copy,
}

impl std::str::FromStr for RelayMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "splice" => Ok(RelayMode::Splice),
            "copy" => Ok(RelayMode::Copy),
            other => Err(format!(
                "unknown relay mode {other:?} (expected \"splice\" or \"copy\")"
            )),
        }
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed their sending half.
    Closed,
    /// No byte moved for the idle timeout.
    IdleTimeout,
    /// One side failed (reset, broken pipe ...).
    Error,
    /// The server's drain time ran out while the tunnel was open.
    Shutdown,
}

impl RelayEnd {
    /// A few words for the access log.
    pub fn describe(self) -> &'static str {
        match self {
            RelayEnd::Closed => "closed",
            RelayEnd::IdleTimeout => "idle timeout",
            RelayEnd::Error => "connection error",
            RelayEnd::Shutdown => "server shutdown",
        }
    }
}

/// What a tunnel moved.
#[derive(Debug, Clone, Copy)]
pub struct RelayStats {
    /// Client to target.
    pub up: u64,
    /// Target to client.
    pub down: u64,
    /// How it ended.
    pub end: RelayEnd,
}

/// Coarse activity clock shared by both directions: milliseconds since the tunnel began.
struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One direction of a tunnel and what it shares with the other. A pump's task holds one
/// reference to this instead of one per field: every argument of an `async fn` is kept
/// twice in its task (argument and local), in every idle tunnel, for both directions.
struct Direction<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    /// Bytes delivered to `dst`.
    moved: AtomicU64,
    /// Shared by both directions: the idle clock.
    activity: &'a Activity,
    /// Shared by both directions: set by the first to reach EOF (see [`end_of_stream`]).
    ended: &'a AtomicBool,
    busy_poll: Duration,
}

impl<'a> Direction<'a> {
    fn new(
        src: &'a TcpStream,
        dst: &'a TcpStream,
        activity: &'a Activity,
        ended: &'a AtomicBool,
        busy_poll: Duration,
    ) -> Self {
        Self {
            src,
            dst,
            moved: AtomicU64::new(0),
            activity,
            ended,
            busy_poll,
        }
    }
}

/// Passes a source's EOF on to `dst`. Only the first direction to end sends a `shutdown`:
/// when the second ends, the tunnel is over and closing the sockets, which the caller must
/// do at once (see [`relay`]), sends the same FIN, one system call fewer per tunnel.
/// Nothing is left unread then (the other direction read to EOF), so the close is a FIN
/// and never a reset.
fn end_of_stream(dst: &TcpStream, other_ended: &AtomicBool) -> io::Result<()> {
    if other_ended.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    shutdown_write(dst)
}

/// Passes a half-close on: the peer sees EOF, and can still send to us.
fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(stream).shutdown(Shutdown::Write) {
        // The peer is already gone entirely: nothing left to tell it.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

/// Writes all of `buf` to `dst`. Like every readiness wait in the relay, it goes through
/// tokio's poll functions, which keep one waker per socket and direction: only one future
/// may wait on `dst`'s writability at a time (here, the direction that writes to it; both
/// directions run in one task). `last`: see [`send`].
async fn write_all(dst: &TcpStream, mut buf: &[u8], last: bool) -> io::Result<()> {
    while !buf.is_empty() {
        std::future::poll_fn(|cx| dst.poll_write_ready(cx)).await?;
        match send(dst, buf, last) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Flags for the last bytes of a stream where the kernel has `MSG_MORE`: they wait in the
/// socket for what the program sends next, here the FIN. `MSG_NOSIGNAL` as the standard
/// library's own sends have it: a peer gone since (a reset after its half-close) is an
/// `EPIPE` error, not a SIGPIPE that would kill a program embedding the server that left
/// the signal at its default.
#[cfg(any(target_os = "linux", target_os = "android"))]
const LAST_BYTES: Option<libc::c_int> = Some(libc::MSG_MORE | libc::MSG_NOSIGNAL);
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const LAST_BYTES: Option<libc::c_int> = None;

/// One non-blocking send. `last`: the source has ended and these are its last bytes, so
/// they are held back (`MSG_MORE`) for the FIN that the caller sends right after (a
/// `shutdown`, or the close when the other direction has ended too), and bytes and FIN
/// leave in one segment instead of two.
fn send(dst: &TcpStream, buf: &[u8], last: bool) -> io::Result<usize> {
    match LAST_BYTES {
        Some(flags) if last => dst.try_io(tokio::io::Interest::WRITABLE, || {
            socket2::SockRef::from(dst).send_with_flags(buf, flags)
        }),
        _ => dst.try_write(buf),
    }
}

/// What a second read, right after one that did not fill its buffer, found behind the
/// bytes.
enum ReadOn {
    /// More bytes, or nothing yet: the stream goes on.
    Open,
    /// The peer's FIN: the bytes read are its last.
    Eof,
    /// The socket failed; the bytes read before it still go on first.
    Failed(io::Error),
}

/// After a read of `n` bytes that left room in `buf`, reads once more into that room,
/// before the bytes are sent on rather than at the next turn (the same number of reads:
/// that turn's read would have found the socket empty too). A peer that sends its last
/// bytes and closes (a request, an HTTP/1.0 response, the sessions of `bench connrate`)
/// has usually queued its FIN behind them by then, and the bytes and the FIN can leave
/// together (see [`send`]): one segment less for the receiver to take in and acknowledge.
/// A receiver that delays its acknowledgement (Linux does, for a FIN, hoping to send its
/// own with it) also no longer holds two of our segments unacknowledged, which with many
/// clients made the kernel retransmit one of them (a tail-loss probe) in about one
/// session of six at 512 clients.
fn read_on(src: &TcpStream, buf: &mut [u8], n: &mut usize) -> ReadOn {
    match src.try_read(&mut buf[*n..]) {
        Ok(0) => ReadOn::Eof,
        Ok(more) => {
            *n += more;
            ReadOn::Open
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadOn::Open,
        Err(e) => ReadOn::Failed(e),
    }
}

/// Ends a direction after its last bytes went on: passes the FIN on, or the failure.
fn after_read_on(read_on: ReadOn, dir: &Direction<'_>) -> Option<io::Result<()>> {
    match read_on {
        ReadOn::Open => None,
        ReadOn::Eof => Some(end_of_stream(dir.dst, dir.ended)),
        ReadOn::Failed(e) => Some(Err(e)),
    }
}

/// One direction through a user-space buffer that exists only while data is flowing.
async fn pump_copy(dir: &Direction<'_>) -> io::Result<()> {
    let (src, dst) = (dir.src, dir.dst);
    // Polls without sleeping only for `busy_poll` after bytes last moved.
    let mut spin = Spin::new(dir.busy_poll);
    loop {
        // `poll_read_ready` spends a unit of tokio's task budget each time it finds the
        // socket ready, so a tunnel that always has data still lets the other tasks on its
        // worker run (tokio's `readable()` future spent none, and a `consume_budget` was
        // needed here).
        until_ready(spin.remaining(), |cx| src.poll_read_ready(cx)).await?;
        let mut buf = Vec::new();
        loop {
            if buf.is_empty() {
                buf = vec![0u8; COPY_BUFFER];
            }
            let mut n = match src.try_read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return end_of_stream(dst, dir.ended);
            }
            let read_on = if n < buf.len() {
                read_on(src, &mut buf, &mut n)
            } else {
                ReadOn::Open
            };
            write_all(dst, &buf[..n], matches!(read_on, ReadOn::Eof)).await?;
            count(n, dir, &mut spin);
            if let Some(end) = after_read_on(read_on, dir) {
                return end;
            }
        }
    }
}

/// Counts `n` bytes moved in one direction: the tunnel's total, its idle clock, and the
/// direction's busy-poll window.
fn count(n: usize, dir: &Direction<'_>, spin: &mut Spin) {
    dir.moved.fetch_add(n as u64, Ordering::Relaxed);
    dir.activity.touch();
    spin.moved();
}

/// Relays between `client` and `target` until both directions are closed, one fails,
/// nothing moves for `idle`, or `stop` completes. After each chunk a direction polls for
/// the next one without sleeping for `busy_poll` (see [`crate::busy_poll`]). The first EOF is passed on with a
/// `shutdown`; the second is not: the caller must close (drop) both sockets as soon as this
/// returns, and that close is what tells the peer.
pub async fn relay(
    client: &TcpStream,
    target: &TcpStream,
    idle: Duration,
    mode: RelayMode,
    busy_poll: Duration,
    pipes: &PipePool,
    stop: impl std::future::Future<Output = ()>,
) -> RelayStats {
    let ended = AtomicBool::new(false);
    let activity = Activity {
        origin: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let up = Direction::new(client, target, &activity, &ended, busy_poll);
    let down = Direction::new(target, client, &activity, &ended, busy_poll);
    let both = async {
        match mode {
            #[cfg(target_os = "linux")]
            RelayMode::Splice => {
                tokio::try_join!(splice::pump(&up, pipes), splice::pump(&down, pipes)).map(|_| ())
            }
            _ => {
                let _ = pipes;
                tokio::try_join!(pump_copy(&up), pump_copy(&down)).map(|_| ())
            }
        }
    };
    let idle_watch = async {
        loop {
            let deadline = activity.last() + idle;
            tokio::time::sleep_until(deadline).await;
            if activity.last() + idle <= Instant::now() {
                return;
            }
        }
    };
    let end = tokio::select! {
        r = both => if r.is_ok() { RelayEnd::Closed } else { RelayEnd::Error },
        () = idle_watch => RelayEnd::IdleTimeout,
        () = stop => RelayEnd::Shutdown,
    };
    RelayStats {
        up: up.moved.load(Ordering::Relaxed),
        down: down.moved.load(Ordering::Relaxed),
        end,
    }
}

pub use splice::PipePool;

#[cfg(target_os = "linux")]
mod splice {
    use std::io;
    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::Mutex;

    use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::{
        after_read_on, count, end_of_stream, read_on, send, until_ready, Direction, ReadOn, Spin,
    };

    /// Pipe capacity asked for. Larger pipes move a bulk stream in fewer splice calls; the
    /// kernel may grant less (`/proc/sys/fs/pipe-max-size`), which only costs calls.
    const PIPE_SIZE: usize = 256 * 1024;
    /// What one `recv` reads at most; a read that fills it hands the direction to splice.
    const RECV_BUFFER: usize = 4096;
    /// Empty pipes kept for reuse. Beyond this, returned pipes are closed.
    const POOL_MAX: usize = 256;

    /// A pipe's two ends.
    #[derive(Debug)]
    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        capacity: usize,
    }

    /// Empty pipes shared by all tunnels, so a tunnel holds a pipe (two descriptors and its
    /// pages) only while a chunk is in flight, and busy tunnels do not pay `pipe2` per chunk.
    #[derive(Debug, Default)]
    pub struct PipePool {
        pipes: Mutex<Vec<Pipe>>,
    }

    impl PipePool {
        /// An empty pool.
        pub fn new() -> Self {
            Self::default()
        }

        fn take(&self) -> io::Result<Pipe> {
            if let Some(p) = self.pipes.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                return Ok(p);
            }
            let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            let capacity = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
                .map(|c| c as usize)
                .unwrap_or(64 * 1024);
            Ok(Pipe {
                read,
                write,
                capacity,
            })
        }

        /// Takes back a pipe. Only empty pipes may be returned: one that still holds bytes
        /// is dropped (closed) by the caller instead.
        fn put(&self, pipe: Pipe) {
            let mut pipes = self.pipes.lock().unwrap_or_else(|e| e.into_inner());
            if pipes.len() < POOL_MAX {
                pipes.push(pipe);
            }
        }
    }

    const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

    /// One direction, until EOF. Small reads go through `recv` and `send` (as many system
    /// calls as splicing them in and out); once a read fills its buffer the direction
    /// splices, socket → pipe → socket, until splice finds nothing.
    ///
    /// Splice is trusted only when it moves bytes. It stops at a TCP urgent mark (out-of-band
    /// data: an FTP client's ABOR, a telnet interrupt) and never passes it, answering EAGAIN,
    /// or 0 once a FIN has arrived, while the bytes behind the mark wait; so every EAGAIN or
    /// 0 from splice is checked at once with `recv`, which skips the urgent byte (it is out
    /// of band), reads on, and tells an empty socket and the end of the stream apart.
    pub(super) async fn pump(dir: &Direction<'_>, pool: &PipePool) -> io::Result<()> {
        let (src, dst) = (dir.src, dir.dst);
        // Polls without sleeping only for `busy_poll` after bytes last moved.
        let mut spin = Spin::new(dir.busy_poll);
        let mut bulk = false;
        loop {
            // Spends task budget when ready: see `pump_copy`.
            until_ready(spin.remaining(), |cx| src.poll_read_ready(cx)).await?;
            if bulk {
                if splice_chunk(dir, pool, &mut spin).await? {
                    continue;
                }
                bulk = false;
            }
            // The wait for `dst` comes after the match, so that the match's temporaries
            // are not kept in the task while it waits.
            let (rest, read_on) = match recv_and_send(src, dst)? {
                Received::Read {
                    n,
                    sent,
                    rest,
                    read_on,
                } => {
                    if sent > 0 {
                        count(sent, dir, &mut spin);
                    }
                    bulk = n == RECV_BUFFER;
                    (rest, read_on)
                }
                Received::Eof => return end_of_stream(dst, dir.ended),
                // The read cleared the socket's readiness: the next turn waits.
                Received::Nothing => continue,
            };
            if !rest.is_empty() {
                super::write_all(dst, &rest, matches!(read_on, ReadOn::Eof)).await?;
                count(rest.len(), dir, &mut spin);
            }
            if let Some(end) = after_read_on(read_on, dir) {
                return end;
            }
        }
    }

    /// Splices what `src` holds through a pipe into `dst`, counting what goes out.
    /// `false`: splice read nothing, with `src`'s readiness left as it was for the `recv`
    /// that must follow.
    async fn splice_chunk(
        dir: &Direction<'_>,
        pool: &PipePool,
        spin: &mut Spin,
    ) -> io::Result<bool> {
        let (src, dst) = (dir.src, dir.dst);
        let pipe = pool.take()?;
        let filled = src.try_io(Interest::READABLE, || {
            match splice(src.as_fd(), None, &pipe.write, None, pipe.capacity, FLAGS) {
                // Returned as a value, not as WouldBlock, which would clear the readiness
                // that the checking `recv` needs.
                Err(nix::errno::Errno::EAGAIN) => Ok(0),
                other => other.map_err(io::Error::from),
            }
        });
        let mut pending = match filled {
            Ok(0) => {
                pool.put(pipe);
                return Ok(false);
            }
            Ok(n) => n,
            // From tokio itself, without calling splice, when it holds no readiness (a
            // wake-up may come with none): the `recv` that follows says the same and waits.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pool.put(pipe);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        while pending > 0 {
            std::future::poll_fn(|cx| dst.poll_write_ready(cx)).await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, dst.as_fd(), None, pending, FLAGS).map_err(io::Error::from)
            }) {
                Ok(n) => {
                    // Counted as it goes out, so a tunnel that fails mid-chunk still
                    // reports what was delivered.
                    pending -= n;
                    count(n, dir, spin);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The pipe still holds bytes: it is dropped (closed), not pooled.
                Err(e) => return Err(e),
            }
        }
        pool.put(pipe);
        Ok(true)
    }

    /// What one `recv` found.
    enum Received {
        /// `n` bytes read, of which `sent` went on at once and `rest` waits for `dst`
        /// (empty, and not allocated, when `dst` took them all); what a second read found
        /// behind them, when the first left room.
        Read {
            n: usize,
            sent: usize,
            rest: Vec<u8>,
            read_on: ReadOn,
        },
        /// The peer's FIN.
        Eof,
        /// Nothing to read.
        Nothing,
    }

    /// One `recv` into a buffer on the stack (two when the first leaves room: see
    /// [`read_on`]) and one non-blocking `send` of what they got. Synchronous, so the
    /// buffer is never part of the tunnel's task; only bytes `dst` cannot take at once are
    /// copied out to wait.
    fn recv_and_send(src: &TcpStream, dst: &TcpStream) -> io::Result<Received> {
        let mut buf = [0u8; RECV_BUFFER];
        let mut n = match src.try_read(&mut buf) {
            Ok(0) => return Ok(Received::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Received::Nothing),
            Err(e) => return Err(e),
        };
        let read_on = if n < RECV_BUFFER {
            read_on(src, &mut buf, &mut n)
        } else {
            ReadOn::Open
        };
        let sent = match send(dst, &buf[..n], matches!(read_on, ReadOn::Eof)) {
            Ok(sent) => sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        Ok(Received::Read {
            n,
            sent,
            rest: buf[sent..n].to_vec(),
            read_on,
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod splice {
    /// Without `splice(2)` there is nothing to pool.
    #[derive(Debug, Default)]
    pub struct PipePool;

    impl PipePool {
        /// An empty pool.
        pub fn new() -> Self {
            PipePool
        }
    }
}
