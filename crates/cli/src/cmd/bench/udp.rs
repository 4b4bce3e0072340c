//! The `udp` scenario: UDP ASSOCIATE, numbered datagrams echoed through the relay, sent
//! with a window of datagrams in flight or at a fixed rate; datagrams/s and loss.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::BytesMut;
use ferrosocks_proto::udp::{decode_datagram, encode_datagram};
use ferrosocks_proto::{Addr, Command, Frag, UdpHeader};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Notify};

use super::{
    bounded, forwarded, numbered, udp_socket, Better, Ctx, Record, UdpArgs, Via, LOOPBACK,
};

/// Echo target: each datagram back to its sender.
pub(super) async fn echo(sock: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    loop {
        // An error here is an ICMP report about an earlier reply (a client gone): ignore it.
        if let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    }
}

/// With a window, no echo for this long means the datagrams in flight are lost: the
/// window is freed so the run goes on (and the loss is counted at the end).
const STALL: Duration = Duration::from_millis(100);
/// How long to wait for the last echoes after the sending stops.
const DRAIN: Duration = Duration::from_secs(1);

pub(super) async fn udp(ctx: Ctx, a: UdpArgs) -> anyhow::Result<Vec<Record>> {
    let size = a.size as usize;
    if a.rate.is_none() && a.window == 0 {
        bail!("--window must be at least 1");
    }
    let sock = Arc::new(udp_socket(LOOPBACK)?);
    let local = sock.local_addr()?;
    let echo_addr = ctx.targets.udp_echo;

    // The association: its control connection must stay open for the whole run.
    let (control, relay, prefix) = match &ctx.via {
        Via::Direct => (None, echo_addr, Vec::new()),
        Via::Forward {
            forwarder,
            targets_port,
        } => (
            None,
            forwarded(*forwarder, *targets_port, echo_addr)?,
            Vec::new(),
        ),
        Via::Socks { proxy, .. } => {
            let (s, reply) = ctx.dial_command(Command::UDP_ASSOCIATE, local).await?;
            let bnd = reply
                .and_then(|r| r.bnd.ip_socket_addr())
                .ok_or_else(|| anyhow!("UDP ASSOCIATE reply carries no IP address"))?;
            // 0.0.0.0 means "the address you reached me at" (RFC 1928 §6 leaves it open).
            let relay = if bnd.ip().is_unspecified() {
                SocketAddr::new(proxy.ip(), bnd.port())
            } else {
                bnd
            };
            let mut hdr = BytesMut::new();
            encode_datagram(
                &UdpHeader {
                    frag: Frag(0),
                    dst: Addr::Ip(echo_addr),
                },
                &[],
                &mut hdr,
            );
            (Some(s), relay, hdr.to_vec())
        }
    };
    let control_closed = Arc::new(AtomicBool::new(false));
    let control_task = control.map(|mut s| {
        let closed = control_closed.clone();
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            // The proxy sends nothing on the control connection; EOF or an error ends the
            // association.
            let _ = s.read(&mut b).await;
            closed.store(true, Ordering::SeqCst);
        })
    });

    let received = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let receiver = tokio::spawn(receive(
        sock.clone(),
        Expect {
            socks: matches!(ctx.via, Via::Socks { .. }),
            echo: echo_addr,
            size,
            max_seq: a.count,
        },
        received.clone(),
        progress.clone(),
        stop_rx,
    ));

    // Send.
    let start = Instant::now();
    let deadline = start + a.common.duration;
    let mut buf = Vec::with_capacity(prefix.len() + size);
    let mut sent = 0u64;
    let mut written_off = 0u64;
    let mut stalls = 0u64;
    while sent < a.count && Instant::now() < deadline {
        match a.rate {
            Some(rate) => {
                let due = start + Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            None => loop {
                let notified = progress.notified();
                let got = received.load(Ordering::Relaxed);
                if sent.saturating_sub(got).saturating_sub(written_off) < a.window {
                    break;
                }
                if tokio::time::timeout(STALL, notified).await.is_err() {
                    stalls += 1;
                    written_off = sent.saturating_sub(received.load(Ordering::Relaxed));
                }
            },
        }
        buf.clear();
        buf.extend_from_slice(&prefix);
        buf.extend_from_slice(&numbered(sent, size));
        bounded(ctx.timeout, "sending a datagram", sock.send_to(&buf, relay)).await?;
        sent += 1;
    }
    let send_secs = start.elapsed().as_secs_f64();
    // Let the last echoes in.
    let drain_end = Instant::now() + DRAIN;
    while received.load(Ordering::Relaxed) < sent && Instant::now() < drain_end {
        let _ = tokio::time::timeout(Duration::from_millis(20), progress.notified()).await;
    }
    let _ = stop_tx.send(());
    let seen = bounded(ctx.timeout, "stopping the receiver", receiver).await??;
    if let Some(t) = control_task {
        t.abort();
    }
    if control_closed.load(Ordering::SeqCst) {
        bail!("udp: the proxy closed the UDP ASSOCIATE control connection during the run");
    }
    if seen.bad > 0 {
        bail!(
            "udp: {} echoed datagrams were malformed or differ from what was sent",
            seen.bad
        );
    }
    if seen.unique == 0 {
        bail!("udp: none of {sent} datagrams came back through {relay}");
    }
    let lost = sent - seen.unique;
    let secs = seen
        .last
        .map(|l| (l - start).as_secs_f64())
        .unwrap_or(send_secs)
        .max(1e-9);
    let detail = json!({
        "sent": sent,
        "received": seen.unique,
        "lost": lost,
        "duplicates": seen.duplicates,
        "from_elsewhere": seen.foreign,
        "window_stalls": stalls,
        "size": size,
        "window": if a.rate.is_none() { Some(a.window) } else { None },
        "rate": a.rate,
        "relay": relay.to_string(),
        "seconds": secs,
        // What the kernel granted of the 8 MiB asked for (capped by net.core.rmem_max).
        "generator_receive_buffer": socket2::SockRef::from(&*sock).recv_buffer_size().ok(),
    });
    let case = match a.rate {
        Some(rate) => format!("udp {size} B at {rate}/s"),
        None => format!("udp {size} B"),
    };
    Ok(vec![
        Record::new(
            &case,
            "datagrams/s",
            seen.unique as f64 / secs,
            Better::Higher,
        )
        .detail(detail),
        Record::new(
            &case,
            "loss %",
            lost as f64 * 100.0 / sent.max(1) as f64,
            Better::Lower,
        ),
    ])
}

struct Expect {
    socks: bool,
    echo: SocketAddr,
    size: usize,
    max_seq: u64,
}

#[derive(Debug, Default)]
struct Seen {
    unique: u64,
    duplicates: u64,
    foreign: u64,
    bad: u64,
    last: Option<Instant>,
}

/// Receives echoes until stopped, checking each: the relay's header must name the echo
/// target, the payload must be exactly what was sent for its sequence number.
async fn receive(
    sock: Arc<UdpSocket>,
    e: Expect,
    received: Arc<AtomicU64>,
    progress: Arc<Notify>,
    mut stop: oneshot::Receiver<()>,
) -> anyhow::Result<Seen> {
    let mut seen = Seen::default();
    let mut bits: Vec<u64> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, _from) = tokio::select! {
            _ = &mut stop => return Ok(seen),
            r = sock.recv_from(&mut buf) => match r {
                Ok(v) => v,
                // ICMP errors surface here; they are not datagrams.
                Err(_) => continue,
            },
        };
        let payload = if e.socks {
            match decode_datagram(&buf[..n]) {
                Ok((h, p)) if h.dst == Addr::Ip(e.echo) && h.frag == Frag(0) => p,
                Ok(_) => {
                    seen.foreign += 1;
                    continue;
                }
                Err(_) => {
                    seen.bad += 1;
                    continue;
                }
            }
        } else {
            &buf[..n]
        };
        if payload.len() != e.size {
            seen.bad += 1;
            continue;
        }
        let seq = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
        if seq >= e.max_seq || payload != numbered(seq, e.size).as_slice() {
            seen.bad += 1;
            continue;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1024, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            seen.duplicates += 1;
            continue;
        }
        bits[word] |= 1 << bit;
        seen.unique += 1;
        seen.last = Some(Instant::now());
        received.store(seen.unique, Ordering::Relaxed);
        progress.notify_one();
    }
}
