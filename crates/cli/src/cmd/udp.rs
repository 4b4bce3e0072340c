//! `ferrosocks udp`: datagrams through a SOCKS5 proxy (UDP ASSOCIATE), one per stdin line,
//! with each reply printed next to its source.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use ferrosocks_client::{Addr, Error, UdpAssociation};

use super::tunnel::{fail, spawn_stdin_lines, ProxyArgs};

/// Room for the largest UDP payload plus the SOCKS header the relay puts in front.
const RECV_BUFFER: usize = 65_536 + ferrosocks_client::udp::MAX_HEADER_LEN;

/// Arguments of `ferrosocks udp`.
#[derive(Debug, clap::Args)]
pub(crate) struct UdpArgs {
    #[command(flatten)]
    pub(crate) proxy: ProxyArgs,
    /// Where every datagram goes: IPv4:PORT, [IPv6]:PORT or NAME:PORT.
    #[arg(value_name = "HOST:PORT", value_parser = super::tunnel::parse_target)]
    pub(crate) target: Addr,
    /// Print each reply as a JSON line {"source":"IP:PORT","payload":"…"}.
    #[arg(long)]
    pub(crate) json: bool,
    /// Binary data: stdin lines are hex and replies are printed in hex.
    #[arg(long)]
    pub(crate) hex: bool,
    /// After stdin's EOF, how long to wait for more replies (counted from the last one).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::args::duration)]
    pub(crate) wait: Duration,
}

pub(crate) const EXAMPLES: &str = "Examples:
  echo ping | ferrosocks udp --proxy socks5://127.0.0.1:1080 127.0.0.1:7
  printf 'a\\nb\\n' | ferrosocks udp --proxy socks5h://127.0.0.1:1080 --json --wait 3s echo.example:7
  echo 0001ff | ferrosocks udp --proxy socks5://127.0.0.1:1080 --hex [::1]:9999

Each stdin line (without its line end) is one datagram to HOST:PORT. Each datagram that
comes back is printed as a line 'SOURCE<TAB>PAYLOAD', the payload as UTF-8 (invalid bytes
replaced) or in hex with --hex; with --json as {\"source\":\"IP:PORT\",\"payload\":\"…\"}.
The command ends when stdin is at EOF and no reply came for --wait, or when the proxy
closes the association.

Exit codes: 0 stdin was sent and the wait ran out; 1 the proxy refused UDP ASSOCIATE (the
message names the REP code and its meaning), closed the association early, or the network
failed; 2 bad arguments (or a stdin line that is not hex with --hex).";

pub(crate) async fn run(args: UdpArgs) -> ExitCode {
    let config = args.proxy.client_config();
    let udp = match UdpAssociation::associate_with_config(&args.proxy.proxy, None, &config).await {
        Ok(u) => u,
        Err(e) => return fail("udp", "UDP ASSOCIATE", &e),
    };
    let mut lines = spawn_stdin_lines();
    let mut stdin_done = false;
    let mut buf = vec![0u8; RECV_BUFFER];
    let quiet = tokio::time::sleep(args.wait);
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            line = lines.recv(), if !stdin_done => match line {
                Some(Ok(line)) => {
                    let payload = if args.hex {
                        match decode_hex(&line) {
                            Some(p) => p,
                            None => {
                                eprintln!("ferrosocks udp: not hex: {:?}", String::from_utf8_lossy(&line));
                                return ExitCode::from(2);
                            }
                        }
                    } else {
                        line
                    };
                    if let Err(e) = udp.send_to(&args.target, &payload).await {
                        return fail("udp", &format!("sending to {}", args.target), &e);
                    }
                }
                Some(Err(e)) => {
                    eprintln!("ferrosocks udp: reading stdin: {e}");
                    return ExitCode::from(1);
                }
                None => {
                    stdin_done = true;
                    quiet.as_mut().reset(tokio::time::Instant::now() + args.wait);
                }
            },
            received = udp.recv_from(&mut buf) => match received {
                Ok((len, source)) => {
                    if !print_reply(&args, &source, &buf[..len]) {
                        // stdout is gone: nobody reads replies any more.
                        return ExitCode::SUCCESS;
                    }
                    if stdin_done {
                        quiet.as_mut().reset(tokio::time::Instant::now() + args.wait);
                    }
                }
                Err(Error::AssociationClosed) => {
                    eprintln!("ferrosocks udp: the proxy closed the association");
                    return ExitCode::from(1);
                }
                Err(e) => return fail("udp", "receiving", &e),
            },
            () = &mut quiet, if stdin_done => return ExitCode::SUCCESS,
        }
    }
}

/// Writes one reply line; false when stdout is closed.
fn print_reply(args: &UdpArgs, source: &Addr, payload: &[u8]) -> bool {
    let text = if args.hex {
        encode_hex(payload)
    } else {
        String::from_utf8_lossy(payload).into_owned()
    };
    let line = if args.json {
        serde_json::json!({ "source": source.to_string(), "payload": text }).to_string()
    } else {
        // One line per reply: a payload's line breaks (or a hostile source name's) are
        // escaped rather than starting lines of their own.
        let source = source.to_string();
        format!("{}\t{}", super::printable(&source), super::printable(&text))
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    let text: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(encode_hex(&[0, 1, 0xff]), "0001ff");
        assert_eq!(decode_hex(b"00 01ff"), Some(vec![0, 1, 0xff]));
        assert_eq!(decode_hex(b""), Some(vec![]));
        assert_eq!(decode_hex(b"0"), None);
        assert_eq!(decode_hex(b"zz"), None);
    }
}
