//! One line per session: who, what, where, the answer, the bytes and the time.
//!
//! The record holds only the user *name*; credentials never reach this module.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ferrosocks_proto::{Command, Rep};

/// Where access-log lines go and in which format.
#[derive(Clone, Default)]
pub enum AccessLog {
    /// No access log.
    #[default]
    Off,
    /// `key=value` text lines.
    Text(Sink),
    /// One JSON object per line.
    Json(Sink),
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccessLog::Off => "Off",
            AccessLog::Text(_) => "Text",
            AccessLog::Json(_) => "Json",
        })
    }
}

/// Lines waiting for the log's writer, written by a background thread.
///
/// Sessions only append to a buffer under a short lock: no system call, and a log reader
/// that stops reading (a full pipe, a stalled terminal) cannot stall the workers. The
/// writer thread sleeps while there is nothing to write; after a line arrives it gathers
/// for [`FLUSH_INTERVAL`] (less once [`FLUSH_AT`] bytes wait) and writes them all at once.
/// Past [`MAX_PENDING`] bytes, new lines are dropped and counted and the count is reported
/// on the diagnostic log, rather than the buffer growing without bound.
#[derive(Clone)]
pub struct Sink(Arc<Owner>);

/// How long a line may wait before the writer thread writes it.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Pending bytes that end the writer thread's wait early.
pub const FLUSH_AT: usize = 64 * 1024;
/// Pending bytes beyond which new lines are dropped.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;

/// Dropped with the last [`Sink`]: tells the writer thread to write what is left and end.
struct Owner(Arc<Shared>);

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer thread: a first line, a large batch, or the last `Sink` gone.
    wake: Condvar,
    /// Held for the whole of a flush, so batches reach the writer in the order taken.
    writer: Mutex<Writer>,
    /// The file written to, if it is one: [`Sink::reopen`] opens it again.
    path: Option<PathBuf>,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// Lines dropped because `lines` was full, not yet reported.
    dropped: u64,
    /// The writer thread sleeps until a line arrives.
    idle: bool,
    /// The writer thread has been woken early and has not yet taken `lines`.
    woken: bool,
    /// The last `Sink` is gone.
    closed: bool,
}

struct Writer {
    out: Box<dyn Write + Send>,
    /// The buffer written last time, kept to be swapped in for `Pending::lines`.
    spare: Vec<u8>,
}

/// What the spare buffer is cut back to after a burst.
const SPARE_KEPT: usize = 4 * FLUSH_AT;

impl Sink {
    /// Lines go to this writer, from a background thread.
    pub fn new(w: impl Write + Send + 'static) -> Self {
        Self::with_path(Box::new(w), None)
    }

    /// Lines are appended to the file at `path` (created if missing); [`Sink::reopen`]
    /// opens it again after it was moved away (log rotation).
    pub fn file(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let path = path.into();
        let file = open_append(&path)?;
        Ok(Self::with_path(Box::new(file), Some(path)))
    }

    fn with_path(out: Box<dyn Write + Send>, path: Option<PathBuf>) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            writer: Mutex::new(Writer {
                out,
                spare: Vec::new(),
            }),
            path,
        });
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_until_closed(&thread_shared));
        if let Err(e) = spawned {
            // Lines still reach the writer through `flush`, at exit at the latest.
            tracing::error!("access log: cannot start its writer thread: {e}");
        }
        Sink(Arc::new(Owner(shared)))
    }

    /// Lines go to standard output.
    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }

    /// Lines are kept in memory (for tests); read them with [`MemoryLog::lines`].
    pub fn memory() -> (Self, MemoryLog) {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = Self::new(MemoryWriter(bytes.clone()));
        let log = MemoryLog {
            bytes,
            shared: sink.shared().clone(),
        };
        (sink, log)
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.0 .0
    }

    fn write_line(&self, line: &str) {
        let shared = self.shared();
        let mut pending = lock(&shared.pending);
        if pending.lines.len() + line.len() + 1 > MAX_PENDING {
            pending.dropped += 1;
            return;
        }
        pending.lines.extend_from_slice(line.as_bytes());
        pending.lines.push(b'\n');
        if pending.idle {
            pending.idle = false;
            shared.wake.notify_one();
        } else if pending.lines.len() >= FLUSH_AT && !pending.woken {
            pending.woken = true;
            shared.wake.notify_one();
        }
    }

    /// Writes every pending line now (the server calls this before it exits).
    pub fn flush(&self) {
        self.shared().flush();
    }

    /// Opens the log's file again by its name, then writes what is pending to the old one
    /// and switches: after a rotation moved the file away, lines go to a new file of the
    /// same name. Returns the file's name, or `None` when the log is not a file. On error
    /// the old file stays in use. A FIFO without a reader is an error at once (ENXIO)
    /// rather than a wait; writing what is pending to the old destination may still wait
    /// as long as that destination takes nothing.
    pub fn reopen(&self) -> std::io::Result<Option<&Path>> {
        let shared = self.shared();
        let Some(path) = shared.path.as_deref() else {
            return Ok(None);
        };
        let file = open_append_nonblocking(path)?;
        let mut writer = lock(&shared.writer);
        shared.flush_locked(&mut writer);
        writer.out = Box::new(file);
        Ok(Some(path))
    }

    /// Nothing is pending and no write is under way (one stuck in a destination that takes
    /// nothing holds the writer's lock).
    fn written_out(&self) -> bool {
        let shared = self.shared();
        let Ok(_writer) = shared.writer.try_lock() else {
            return false;
        };
        let pending = lock(&shared.pending);
        pending.lines.is_empty() && pending.dropped == 0
    }

    /// Ends the writer thread's wait now instead of at its interval.
    #[cfg(test)]
    fn flush_in_background(&self) {
        lock(&self.shared().pending).woken = true;
        self.shared().wake.notify_one();
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        lock(&self.0.pending).closed = true;
        self.0.wake.notify_one();
    }
}

fn append_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    options
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    append_options().open(path)
}

/// Opens like [`open_append`] without waiting for a FIFO's reader, then makes writes
/// blocking again (the writer thread expects them to be; only its own thread waits).
fn open_append_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::unix::fs::OpenOptionsExt;
    let file = append_options()
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL)?);
    fcntl(&file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(file)
}

impl Shared {
    fn flush(&self) {
        self.flush_locked(&mut lock(&self.writer));
    }

    fn flush_locked(&self, writer: &mut Writer) {
        let dropped = {
            let mut pending = lock(&self.pending);
            pending.woken = false;
            std::mem::swap(&mut pending.lines, &mut writer.spare);
            std::mem::take(&mut pending.dropped)
        };
        if dropped > 0 {
            tracing::warn!(
                "access log: {dropped} lines dropped: more than {MAX_PENDING} bytes were waiting for its writer"
            );
        }
        if writer.spare.is_empty() {
            return;
        }
        // Losing log lines must never end a session, so write errors are only reported.
        let written = writer
            .out
            .write_all(&writer.spare)
            .and_then(|()| writer.out.flush());
        if let Err(e) = written {
            tracing::warn!("access log: write failed: {e}");
        }
        writer.spare.clear();
        writer.spare.shrink_to(SPARE_KEPT);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Only has lines to write if the writer thread could not be started.
        self.flush();
    }
}

/// The writer thread: sleeps while there is nothing to write, gathers lines for one
/// interval, writes them, and ends once the last [`Sink`] is gone and all is written.
fn write_until_closed(shared: &Shared) {
    loop {
        let mut pending = lock(&shared.pending);
        while pending.lines.is_empty() && pending.dropped == 0 && !pending.closed {
            // No timer while idle: an idle server's log thread never wakes.
            pending.idle = true;
            pending = shared.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        pending.idle = false;
        if !pending.woken && !pending.closed {
            // A spurious wake-up only means an early flush.
            pending = shared
                .wake
                .wait_timeout(pending, FLUSH_INTERVAL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let closed = pending.closed;
        drop(pending);
        shared.flush();
        if closed {
            return;
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; logging goes on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An in-memory log for tests.
#[derive(Clone)]
pub struct MemoryLog {
    bytes: Arc<Mutex<Vec<u8>>>,
    shared: Arc<Shared>,
}

impl MemoryLog {
    /// Every line written so far (pending lines are flushed first).
    pub fn lines(&self) -> Vec<String> {
        self.shared.flush();
        let bytes = lock(&self.bytes);
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

struct MemoryWriter(Arc<Mutex<Vec<u8>>>);

impl Write for MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What one session did, filled in as it goes and written once at its end.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// When the connection was accepted.
    pub start: SystemTime,
    /// The client's address.
    pub client: SocketAddr,
    /// The authenticated user name, if any.
    pub user: Option<String>,
    /// The command requested.
    pub command: Option<Command>,
    /// The destination as the client asked for it.
    pub target: Option<String>,
    /// The address actually used: the connected target (CONNECT), the peer (BIND), or the
    /// relay socket (UDP ASSOCIATE).
    pub resolved: Option<SocketAddr>,
    /// The REP sent in the (last) reply, if one was sent.
    pub rep: Option<Rep>,
    /// Bytes from the client to the target (UDP: payload bytes relayed).
    pub bytes_up: u64,
    /// Bytes from the target to the client.
    pub bytes_down: u64,
    /// Session length.
    pub duration: Duration,
    /// How the session ended, in a few words.
    pub end: String,
}

impl SessionRecord {
    /// A record for a session accepted now.
    pub fn new(client: SocketAddr) -> Self {
        Self {
            start: SystemTime::now(),
            client,
            user: None,
            command: None,
            target: None,
            resolved: None,
            rep: None,
            bytes_up: 0,
            bytes_down: 0,
            duration: Duration::ZERO,
            end: String::new(),
        }
    }

    fn timestamp(&self) -> String {
        // Fixed width (milliseconds, UTC) so log lines line up and sort as text.
        const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let t = time::OffsetDateTime::from(self.start);
        t.format(FORMAT).unwrap_or_else(|_| "-".into())
    }

    fn command_name(&self) -> String {
        let mut name = String::new();
        self.push_command(&mut name);
        name
    }

    /// The command's name (`CONNECT` …), its code for an unknown one, `-` for none.
    fn push_command(&self, s: &mut String) {
        match self.command {
            Some(c) => match c.name() {
                Some(name) => s.push_str(name),
                None => {
                    let _ = write!(s, "{:#04x}", c.0);
                }
            },
            None => s.push('-'),
        }
    }

    /// The text form: `key=value` pairs, `end` quoted and escaped as Rust's `{:?}` does.
    ///
    /// Written straight into one `String`, without a `String` per field or the `time`
    /// crate's formatter: this runs once per session on the worker, and the generic path
    /// cost about 8,600 instructions a session (callgrind), a sixth of the server's
    /// user-space work in the sessions/s benchmark.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(200);
        self.push_timestamp(&mut s);
        s.push_str(" client=");
        push_addr(&mut s, self.client);
        s.push_str(" user=");
        push_value(&mut s, self.user.as_deref());
        s.push_str(" cmd=");
        self.push_command(&mut s);
        s.push_str(" dst=");
        push_value(&mut s, self.target.as_deref());
        s.push_str(" resolved=");
        match self.resolved {
            Some(addr) => push_addr(&mut s, addr),
            None => s.push('-'),
        }
        s.push_str(" rep=");
        match self.rep {
            Some(rep) => push_digits(&mut s, rep.0.into(), 2, 16),
            None => s.push('-'),
        }
        s.push_str(" up=");
        push_digits(&mut s, self.bytes_up, 1, 10);
        s.push_str(" down=");
        push_digits(&mut s, self.bytes_down, 1, 10);
        s.push_str(" duration_ms=");
        push_digits(&mut s, self.duration.as_millis() as u64, 1, 10);
        s.push_str(" end=");
        push_quoted(&mut s, &self.end);
        s
    }

    /// [`Self::timestamp`], appended to `s`.
    fn push_timestamp(&self, s: &mut String) {
        let t = time::OffsetDateTime::from(self.start);
        let year = t.year();
        if !(0..=9999).contains(&year) {
            s.push_str(&self.timestamp());
            return;
        }
        let fields = [
            (year as u64, 4, '-'),
            (u8::from(t.month()).into(), 2, '-'),
            (t.day().into(), 2, 'T'),
            (t.hour().into(), 2, ':'),
            (t.minute().into(), 2, ':'),
            (t.second().into(), 2, '.'),
            (t.millisecond().into(), 3, 'Z'),
        ];
        for (value, width, after) in fields {
            push_digits(s, value, width, 10);
            s.push(after);
        }
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "time": self.timestamp(),
            "client": self.client.to_string(),
            "user": self.user,
            "command": self.command.map(|_| self.command_name()),
            "target": self.target,
            "resolved": self.resolved.map(|a| a.to_string()),
            "rep": self.rep.map(|r| r.0),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration_ms": self.duration.as_millis() as u64,
            "end": self.end,
        })
        .to_string()
    }
}

/// Appends `value` in `radix` (10 or 16, lower case), zero-padded to `width` digits.
fn push_digits(s: &mut String, value: u64, width: usize, radix: u64) {
    let mut digits = [b'0'; 20];
    let mut rest = value;
    let mut start = digits.len();
    while rest > 0 || start == digits.len() {
        start -= 1;
        digits[start] = b"0123456789abcdef"[(rest % radix) as usize];
        rest /= radix;
    }
    let start = start.min(digits.len().saturating_sub(width));
    s.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// Appends `addr` as its `Display` writes it; IPv4, the usual case, without the formatter.
fn push_addr(s: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                push_digits(s, octet.into(), 1, 10);
            }
            s.push(':');
            push_digits(s, v4.port().into(), 1, 10);
        }
        SocketAddr::V6(_) => {
            let _ = write!(s, "{addr}");
        }
    }
}

/// Appends a value the client chose (a user name, a requested host): as it is when it is
/// one plain token, the usual case, else quoted and escaped like `end`, so a name with a
/// space, a quote, a newline or a terminal escape cannot forge fields or whole lines of
/// the log. `None` is `-`, and a value that is itself `-` is quoted.
fn push_value(s: &mut String, value: Option<&str>) {
    match value {
        None => s.push('-'),
        Some(text)
            if text != "-"
                && !text.is_empty()
                && text
                    .bytes()
                    .all(|b| (b'!'..=b'~').contains(&b) && b != b'"' && b != b'\\') =>
        {
            s.push_str(text)
        }
        Some(text) => push_quoted(s, text),
    }
}

/// Appends `text` as `{:?}` writes it (quoted, escaped); plain ASCII, the usual case,
/// without going through the formatter.
fn push_quoted(s: &mut String, text: &str) {
    if text
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        s.push('"');
        s.push_str(text);
        s.push('"');
    } else {
        let _ = write!(s, "{text:?}");
    }
}

impl AccessLog {
    /// Writes one record.
    pub fn write(&self, record: &SessionRecord) {
        match self {
            AccessLog::Off => {}
            AccessLog::Text(sink) => sink.write_line(&record.to_text()),
            AccessLog::Json(sink) => sink.write_line(&record.to_json()),
        }
    }

    fn sink(&self) -> Option<&Sink> {
        match self {
            AccessLog::Off => None,
            AccessLog::Text(sink) | AccessLog::Json(sink) => Some(sink),
        }
    }

    /// Writes every pending line now.
    pub fn flush(&self) {
        if let Some(sink) = self.sink() {
            sink.flush();
        }
    }

    /// Opens the log's file again (see [`Sink::reopen`]); `Ok(None)` when it is not a file.
    pub fn reopen(&self) -> std::io::Result<Option<&Path>> {
        self.sink().map_or(Ok(None), Sink::reopen)
    }

    /// Lines dropped (the buffer was full) and not yet reported: the writer thread reports
    /// them once its destination takes lines again.
    pub fn dropped(&self) -> u64 {
        self.sink()
            .map_or(0, |sink| lock(&sink.shared().pending).dropped)
    }

    /// Writes every pending line, waiting at most `limit` for a log destination that does
    /// not take them (a pipe nobody reads), so that exiting does not hang on it. Returns
    /// whether everything was written in time. (If no thread can be started for the wait,
    /// it writes without a limit.)
    pub fn flush_within(&self, limit: Duration) -> bool {
        if self.sink().is_none_or(Sink::written_out) {
            return true;
        }
        let log = self.clone();
        let (done, flushed) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("access-log-flush".into())
            .spawn(move || {
                log.flush();
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => flushed.recv_timeout(limit).is_ok(),
            Err(_) => {
                self.flush();
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A writer that stops inside its first `write` until told to go on.
    struct StallingWriter {
        bytes: Arc<Mutex<Vec<u8>>>,
        entered: Option<mpsc::Sender<()>>,
        go_on: Option<mpsc::Receiver<()>>,
    }

    impl Write for StallingWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let (Some(entered), Some(go_on)) = (self.entered.take(), self.go_on.take()) {
                entered.send(()).unwrap();
                go_on.recv().unwrap();
            }
            lock(&self.bytes).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Waits for `done`; the 10 s limit is a liveness guard, not a timing assertion.
    fn wait_until(done: impl Fn() -> bool, never: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{never}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn line_count(bytes: &Mutex<Vec<u8>>) -> usize {
        lock(bytes).iter().filter(|&&b| b == b'\n').count()
    }

    /// The text line, field by field: what log readers parse.
    #[test]
    fn text_lines_keep_their_format() {
        let full = SessionRecord {
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_763_958_896_007),
            client: "127.0.0.1:40123".parse().unwrap(),
            user: Some("alice".into()),
            command: Some(Command::CONNECT),
            target: Some("example.com:443".into()),
            resolved: Some("[2001:db8::1]:443".parse().unwrap()),
            rep: Some(Rep::SUCCEEDED),
            bytes_up: 1234,
            bytes_down: 0,
            duration: Duration::from_micros(2_500_999),
            end: "closed".into(),
        };
        assert_eq!(
            full.to_text(),
            "2025-11-24T04:34:56.007Z client=127.0.0.1:40123 user=alice cmd=CONNECT \
             dst=example.com:443 resolved=[2001:db8::1]:443 rep=00 up=1234 down=0 \
             duration_ms=2500 end=\"closed\""
        );
        let mut bare = SessionRecord::new("[::1]:9".parse().unwrap());
        bare.start = SystemTime::UNIX_EPOCH;
        bare.command = Some(Command(0x7f));
        bare.rep = Some(Rep(0x0a));
        bare.end = "said \"no\"\tand\\left é".into();
        assert_eq!(
            bare.to_text(),
            "1970-01-01T00:00:00.000Z client=[::1]:9 user=- cmd=0x7f dst=- resolved=- rep=0a \
             up=0 down=0 duration_ms=0 end=\"said \\\"no\\\"\\tand\\\\left é\""
        );
        bare.command = None;
        bare.rep = None;
        bare.end = String::new();
        assert!(bare.to_text().contains(" cmd=- dst=- resolved=- rep=- "));
        assert!(bare.to_text().ends_with(" end=\"\""));
    }

    /// A user name or a requested host is the client's to choose: one that is not a
    /// plain token is quoted and escaped, so it can neither add fields nor start a line.
    #[test]
    fn client_chosen_values_cannot_forge_fields_or_lines() {
        let mut r = SessionRecord::new("127.0.0.1:9".parse().unwrap());
        r.start = SystemTime::UNIX_EPOCH;
        r.user = Some("evil\nclient=1.2.3.4 user=admin \u{1b}[31m".into());
        r.target = Some("\0\n2026 dst=forged:1".into());
        let line = r.to_text();
        assert!(!line.contains('\n') && !line.contains('\u{1b}'), "{line}");
        assert!(
            line.contains(r#" user="evil\nclient=1.2.3.4 user=admin \u{1b}[31m" cmd="#),
            "{line}"
        );
        assert!(
            line.contains(r#" dst="\0\n2026 dst=forged:1" resolved="#),
            "{line}"
        );
        // Plain tokens stay as they were; `-` itself is told apart from "none".
        for (user, written) in [
            ("alice", "user=alice "),
            ("-", "user=\"-\" "),
            ("", "user=\"\" "),
            ("a b", "user=\"a b\" "),
            ("q\"", "user=\"q\\\"\" "),
        ] {
            r.user = Some(user.into());
            assert!(r.to_text().contains(written), "{user:?}: {}", r.to_text());
        }
    }

    /// What `push` appends to an empty `String`.
    fn pushed(push: impl FnOnce(&mut String)) -> String {
        let mut s = String::new();
        push(&mut s);
        s
    }

    /// The hand-written parts of the text line against the generic formatting they replace.
    #[test]
    fn text_fields_match_the_generic_formatting() {
        let mut record = SessionRecord::new("127.0.0.1:1".parse().unwrap());
        for step in 0..20_000u64 {
            // About 70 years in uneven steps, every millisecond value among them.
            let ms = step * 110_503_001 + step % 1000;
            record.start = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(
                pushed(|s| record.push_timestamp(s)),
                record.timestamp(),
                "{ms} ms"
            );
        }
        for rep in 0..=255u8 {
            let hex = pushed(|s| push_digits(s, rep.into(), 2, 16));
            assert_eq!(hex, format!("{rep:02x}"));
        }
        for n in [0, 7, 10, 99, 1000, 65535, u64::from(u32::MAX) + 1, u64::MAX] {
            assert_eq!(pushed(|s| push_digits(s, n, 1, 10)), n.to_string());
        }
        for addr in [
            "0.0.0.0:0",
            "127.0.0.1:1080",
            "255.255.255.255:65535",
            "10.20.0.3:80",
            "[::1]:9",
            "[2001:db8::7]:443",
            "[::ffff:1.2.3.4]:5",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(pushed(|s| push_addr(s, addr)), addr.to_string());
        }
        for text in [
            "",
            "closed",
            "a b",
            "x\"y",
            "back\\slash",
            "tab\t",
            "é",
            "\u{7f}",
            "~ !",
        ] {
            assert_eq!(pushed(|s| push_quoted(s, text)), format!("{text:?}"));
        }
    }

    #[test]
    fn the_writer_thread_writes_lines_without_an_explicit_flush() {
        let (sink, log) = Sink::memory();
        sink.write_line("one");
        sink.write_line("two");
        // The thread writes within FLUSH_INTERVAL on any sane machine.
        wait_until(|| line_count(&log.bytes) >= 2, "lines were never written");
        assert_eq!(*lock(&log.bytes), b"one\ntwo\n");
    }

    #[test]
    fn dropping_the_last_sink_writes_what_is_left_and_ends_the_thread() {
        let (sink, log) = Sink::memory();
        let copy = sink.clone();
        sink.write_line("kept");
        drop(sink);
        copy.write_line("last");
        drop(copy);
        // The thread holds the other reference to the shared state until it ends.
        wait_until(
            || Arc::strong_count(&log.shared) == 1,
            "the thread never ended",
        );
        assert_eq!(*lock(&log.bytes), b"kept\nlast\n");
    }

    #[test]
    fn reopen_after_rotation_writes_to_a_new_file_of_the_same_name() {
        let dir = std::env::temp_dir().join(format!("ferrosocks-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let rotated = dir.join("access.log.1");
        let _ = std::fs::remove_file(&path);
        let sink = Sink::file(&path).unwrap();
        sink.write_line("before");
        std::fs::rename(&path, &rotated).unwrap();
        // Written after the move but before the reopen: still the old file's.
        sink.write_line("pending at the reopen");
        assert_eq!(sink.reopen().unwrap(), Some(path.as_path()));
        sink.write_line("after");
        sink.flush();
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "before\npending at the reopen\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        assert_eq!(Sink::memory().0.reopen().unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_in_each_threads_order() {
        let (sink, log) = Sink::memory();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        sink.write_line(&format!("thread={t} line={i} {}", "x".repeat(i % 50)));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let lines = log.lines();
        assert_eq!(lines.len(), 4 * 5000);
        let mut next = [0usize; 4];
        for line in lines {
            let mut words = line.split(' ');
            let t: usize = words.next().unwrap()["thread=".len()..].parse().unwrap();
            let i: usize = words.next().unwrap()["line=".len()..].parse().unwrap();
            assert_eq!(i, next[t], "thread {t} out of order");
            assert_eq!(words.next().unwrap_or(""), "x".repeat(i % 50));
            next[t] += 1;
        }
    }

    #[test]
    fn a_stalled_writer_neither_blocks_sessions_nor_grows_the_buffer_without_bound() {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered) = mpsc::channel();
        let (go_on, go_on_rx) = mpsc::channel();
        let sink = Sink::new(StallingWriter {
            bytes: bytes.clone(),
            entered: Some(entered_tx),
            go_on: Some(go_on_rx),
        });
        sink.write_line("first");
        sink.flush_in_background();
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer thread reached the writer");

        // The writer is stuck inside `write`; sessions keep logging from another thread.
        let line = "y".repeat(999);
        let total = 2 * MAX_PENDING / 1000;
        let (done_tx, done) = mpsc::channel();
        let logging = sink.clone();
        std::thread::spawn(move || {
            for _ in 0..total {
                logging.write_line(&line);
            }
            done_tx.send(()).unwrap();
        });
        done.recv_timeout(Duration::from_secs(10))
            .expect("write_line blocked behind a stalled writer");
        let dropped = lock(&sink.shared().pending).dropped as usize;
        assert!(lock(&sink.shared().pending).lines.len() <= MAX_PENDING);
        assert_eq!(dropped, total - MAX_PENDING / 1000);

        go_on.send(()).unwrap();
        sink.flush();
        assert_eq!(line_count(&bytes), 1 + total - dropped);
        assert_eq!(
            lock(&sink.shared().pending).dropped,
            0,
            "the drop was reported"
        );
    }
}
