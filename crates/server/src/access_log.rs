//! One line per session: who, what, where, the answer, the bytes and the time.
//!
//! The record holds only the user *name*; credentials never reach this module.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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

/// A shared writer for log lines.
#[derive(Clone)]
pub struct Sink(Arc<Mutex<Box<dyn Write + Send>>>);

impl Sink {
    /// Lines go to this writer.
    pub fn new(w: impl Write + Send + 'static) -> Self {
        Sink(Arc::new(Mutex::new(Box::new(w))))
    }

    /// Lines go to standard output.
    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }

    /// Lines are kept in memory (for tests); read them with [`MemoryLog::lines`].
    pub fn memory() -> (Self, MemoryLog) {
        let log = MemoryLog::default();
        (Self::new(log.clone()), log)
    }

    fn write_line(&self, line: &str) {
        // A poisoned lock only means another writer panicked mid-line; keep logging.
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Losing a log line must never end a session, so write errors are ignored.
        let _ = writeln!(w, "{line}");
        let _ = w.flush();
    }
}

/// An in-memory log for tests.
#[derive(Clone, Default)]
pub struct MemoryLog(Arc<Mutex<Vec<u8>>>);

impl MemoryLog {
    /// Every line written so far.
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for MemoryLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
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
        self.command
            .map(|c| {
                c.name()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{:#04x}", c.0))
            })
            .unwrap_or_else(|| "-".into())
    }

    /// The text form: `key=value` pairs, values with spaces quoted.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(200);
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let _ = write!(
            s,
            "{} client={} user={} cmd={} dst={} resolved={} rep={} up={} down={} duration_ms={} end={:?}",
            self.timestamp(),
            self.client,
            dash(self.user.clone()),
            self.command_name(),
            dash(self.target.clone()),
            dash(self.resolved.map(|a| a.to_string())),
            dash(self.rep.map(|r| format!("{:02x}", r.0))),
            self.bytes_up,
            self.bytes_down,
            self.duration.as_millis(),
            self.end,
        );
        s
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

impl AccessLog {
    /// Writes one record.
    pub fn write(&self, record: &SessionRecord) {
        match self {
            AccessLog::Off => {}
            AccessLog::Text(sink) => sink.write_line(&record.to_text()),
            AccessLog::Json(sink) => sink.write_line(&record.to_json()),
        }
    }
}
