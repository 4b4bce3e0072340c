//! What `connect`, `bind` and `udp` share: the proxy options, turning client errors into
//! exit codes, and the stdin/stdout relay with half-close.

use std::io::{self, Read};
use std::process::ExitCode;
use std::time::Duration;

use ferrosocks_client::{Addr, ClientConfig, Error, IntoTarget, ProxyUrl, Socks5Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// `--proxy` and the timeouts, common to the client commands.
#[derive(Debug, clap::Args)]
pub(crate) struct ProxyArgs {
    /// The proxy: socks5://[USER:PASS@]HOST[:PORT] resolves target names here,
    /// socks5h://… lets the proxy resolve them. Percent-encode ':' and '@' in USER and PASS.
    #[arg(long, short = 'x', value_name = "URL", value_parser = parse_proxy)]
    pub(crate) proxy: ProxyUrl,
    /// Bounds resolving the proxy's name and connecting to it, each.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::args::duration)]
    pub(crate) connect_timeout: Duration,
    /// Bounds the SOCKS handshake (greeting, authentication, request and reply).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::args::duration)]
    pub(crate) handshake_timeout: Duration,
}

impl ProxyArgs {
    pub(crate) fn client_config(&self) -> ClientConfig {
        ClientConfig {
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
            ..ClientConfig::default()
        }
    }
}

fn parse_proxy(s: &str) -> Result<ProxyUrl, String> {
    s.parse::<ProxyUrl>().map_err(|e| e.to_string())
}

/// Parses `HOST:PORT` (`1.2.3.4:80`, `[::1]:80`, `example.com:80`) for clap.
pub(crate) fn parse_target(s: &str) -> Result<Addr, String> {
    s.into_target().map_err(|e| match e {
        Error::InvalidTarget { reason, .. } => format!("expected HOST:PORT: {reason}"),
        other => other.to_string(),
    })
}

/// Prints why a client command failed and returns exit code 1. A refusal names the REP
/// code and its RFC 1928 meaning.
pub(crate) fn fail(command: &str, what: &str, error: &Error) -> ExitCode {
    eprintln!("ferrosocks {command}: {what}: {error}");
    match error {
        Error::AuthFailed(_) => {
            eprintln!("ferrosocks {command}: check the user and password in the --proxy URL")
        }
        Error::NoAcceptableMethod => eprintln!(
            "ferrosocks {command}: the proxy may require a user and password (socks5://USER:PASS@HOST:PORT)"
        ),
        _ => {}
    }
    ExitCode::from(1)
}

/// Relays stdin to the tunnel and the tunnel to stdout until both directions are done.
///
/// - stdin EOF: the tunnel's sending half is shut down (FIN), and reading goes on until
///   the tunnel's EOF, so a peer that answers after the client's EOF is heard in full;
/// - tunnel EOF: stdout is flushed, and the relay ends once stdin is done too, either by
///   its EOF or because the peer no longer takes data (a reset or broken pipe then counts
///   as the normal end, since the peer closed first);
/// - stdout gone (broken pipe): nobody reads any more, so the relay ends at once with
///   success, like `cat` under `head`.
///
/// stdin is read on a plain thread: a read blocked on a terminal or an idle pipe would
/// otherwise hold up the runtime's shutdown when the tunnel ends first.
///
/// With `half_close` false, stdin's EOF sends nothing and the relay ends at the tunnel's
/// EOF: for proxies that tear the whole tunnel down when the client half-closes
/// (microsocks does), at the cost of a target that waits for EOF never answering.
pub(crate) async fn relay_stdio(
    stream: Socks5Stream<TcpStream>,
    half_close: bool,
) -> io::Result<()> {
    let (tcp, buffered) = stream.into_inner();
    let _ = tcp.set_nodelay(true);
    let (mut from_tunnel, mut to_tunnel) = tcp.into_split();
    let mut stdin = spawn_stdin_reader();

    let up = async move {
        while let Some(chunk) = stdin.recv().await {
            to_tunnel.write_all(&chunk?).await?;
        }
        if half_close {
            to_tunnel.shutdown().await?;
            Ok(None)
        } else {
            // Dropping the write half would send FIN too; keep it until the end.
            Ok(Some(to_tunnel))
        }
    };
    let down = async move {
        let mut stdout = tokio::io::stdout();
        stdout.write_all(&buffered).await?;
        stdout.flush().await?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_tunnel.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            stdout.write_all(&buf[..n]).await?;
            stdout.flush().await?;
        }
        stdout.flush().await
    };
    tokio::pin!(up, down);

    let mut kept_open = None;
    let mut up_done = false;
    let mut down_done = false;
    while !(up_done && down_done) {
        // Without half-close the tunnel's EOF ends the command, stdin done or not (it
        // waited for stdin's EOF, so `sleep 15 | ferrosocks connect --no-half-close` took
        // 15 s after the target had closed).
        if down_done && !half_close {
            break;
        }
        tokio::select! {
            result = &mut up, if !up_done => {
                up_done = true;
                match result {
                    Ok(half) => kept_open = half,
                    // The peer closed before we were done sending. If it closed in error,
                    // the read side reports that.
                    Err(e) if peer_gone(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            result = &mut down, if !down_done => {
                down_done = true;
                match result {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
    }
    drop(kept_open);
    Ok(())
}

fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// Reads stdin on a thread of its own and hands over chunks; the channel closes at EOF.
fn spawn_stdin_reader() -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let chunk = match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => Ok(buf[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Reads stdin lines (without their `\n` or `\r\n`) on a thread of its own; the channel
/// closes at EOF.
pub(crate) fn spawn_stdin_lines() -> mpsc::Receiver<io::Result<Vec<u8>>> {
    use std::io::BufRead;
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        loop {
            let mut line = Vec::new();
            let item = match stdin.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    Ok(line)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    rx
}
