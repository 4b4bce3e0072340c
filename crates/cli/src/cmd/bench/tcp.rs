//! TCP scenarios (`throughput`, `connrate`, `latency`, `idle`) and the TCP targets.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{
    bounded, numbered, percentile_us, Better, ConnrateArgs, Ctx, Direction, IdleArgs, LatencyArgs,
    Record, Registry, StreamReport, ThroughputArgs,
};

/// Bulk transfers write and read in chunks of this size.
const CHUNK: usize = 128 * 1024;

// ---------------------------------------------------------------------------------------
// Targets

/// Upload target: an 8-byte stream id, then bytes counted until EOF.
pub(super) async fn sink(mut s: TcpStream, registry: Arc<Registry>) {
    let mut id = [0u8; 8];
    if s.read_exact(&mut id).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            // A reset: report nothing, so the client's wait for the report fails loudly.
            Err(_) => return,
        }
    }
    registry.deliver(
        u64::from_le_bytes(id),
        StreamReport {
            bytes,
            at: Instant::now(),
        },
    );
    let _ = s.shutdown().await;
}

/// Download target: stream id, duration in ms and byte budget (8 bytes each, little
/// endian), then bytes written until either runs out, then a close.
pub(super) async fn source(mut s: TcpStream, registry: Arc<Registry>) {
    let mut hdr = [0u8; 24];
    if s.read_exact(&mut hdr).await.is_err() {
        return;
    }
    let id = u64::from_le_bytes(hdr[0..8].try_into().unwrap_or_default());
    let ms = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
    let budget = u64::from_le_bytes(hdr[16..24].try_into().unwrap_or_default());
    // The header comes off the wire: a duration too long for the clock is as good as
    // "until the budget runs out".
    let deadline = Instant::now().checked_add(Duration::from_millis(ms));
    let buf = pattern(CHUNK);
    let mut bytes = 0u64;
    while bytes < budget && deadline.is_none_or(|d| Instant::now() < d) {
        let n = (budget - bytes).min(CHUNK as u64) as usize;
        if s.write_all(&buf[..n]).await.is_err() {
            return;
        }
        bytes += n as u64;
    }
    if s.shutdown().await.is_err() {
        return;
    }
    registry.deliver(
        id,
        StreamReport {
            bytes,
            at: Instant::now(),
        },
    );
}

/// Echo target for `connrate` and `latency`.
pub(super) async fn echo(mut s: TcpStream) {
    let (mut r, mut w) = s.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Echo target for `connrate`: one 32-byte echo, then this side closes first. The side
/// that closes first keeps the TIME_WAIT state; here that is a socket on the target's
/// fixed port, so tens of thousands of sessions do not use up the machine's ephemeral
/// ports (a proxy that binds its outgoing sockets, like Dante, would then fail with
/// "network unreachable" in the next case, whichever proxy caused it).
pub(super) async fn echo_once(mut s: TcpStream) {
    let mut b = [0u8; SESSION_PAYLOAD];
    if s.read_exact(&mut b).await.is_err() {
        return;
    }
    if s.write_all(&b).await.is_err() {
        return;
    }
    let _ = s.shutdown().await;
}

/// Bytes echoed once per `connrate` session.
const SESSION_PAYLOAD: usize = 32;

/// Echo target for `idle`: no buffer is held while the connection waits, so ten thousand
/// idle tunnels cost this process little beyond their sockets. A `q` asks it to close
/// first (see [`echo_once`] for why this side should).
pub(super) async fn idle_echo(mut s: TcpStream) {
    loop {
        if s.readable().await.is_err() {
            return;
        }
        let mut b = [0u8; 64];
        match s.try_read(&mut b) {
            Ok(0) => return,
            Ok(n) if b[..n].contains(&b'q') => {
                let _ = s.shutdown().await;
                return;
            }
            Ok(n) => {
                if s.write_all(&b[..n]).await.is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------------------
// throughput

pub(super) async fn throughput(ctx: Ctx, a: ThroughputArgs) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    for &streams in &a.streams {
        if streams == 0 || streams > 1024 {
            bail!("--streams must be 1..=1024");
        }
        for &dir in &a.direction {
            out.push(throughput_case(&ctx, streams, dir, a.common.duration, a.max_bytes).await?);
        }
    }
    Ok(out)
}

async fn throughput_case(
    ctx: &Ctx,
    streams: usize,
    dir: Direction,
    duration: Duration,
    max_bytes: u64,
) -> anyhow::Result<Record> {
    let target = match dir {
        Direction::Up => ctx.targets.sink,
        Direction::Down => ctx.targets.source,
    };
    // Every tunnel is open before the clock starts: this measures the relay, not setup.
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (id, report) = ctx.targets.registry.expect();
        let s = ctx.dial(target).await?;
        conns.push((id, report, s));
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = JoinSet::new();
    for (id, report, s) in conns {
        let t = ctx.timeout;
        set.spawn(async move {
            match dir {
                Direction::Up => upload(s, id, report, deadline, max_bytes, t).await,
                Direction::Down => download(s, id, report, duration, max_bytes, t).await,
            }
        });
    }
    let mut total = 0u64;
    let mut end = start;
    while let Some(res) = set.join_next().await {
        let (bytes, at) = res.context("stream task")??;
        total += bytes;
        end = end.max(at);
    }
    let secs = (end - start).as_secs_f64().max(1e-9);
    let dir_name = match dir {
        Direction::Up => "up",
        Direction::Down => "down",
    };
    let plural = if streams == 1 { "stream" } else { "streams" };
    Ok(Record::new(
        ctx.via
            .tcp_case(format!("tcp {streams} {plural} {dir_name}")),
        "Gbit/s",
        total as f64 * 8.0 / secs / 1e9,
        Better::Higher,
    )
    .detail(json!({ "bytes": total, "seconds": secs, "streams": streams })))
}

/// Writes until the deadline, half-closes, and checks the sink counted every byte. The
/// stream's end is when the sink saw EOF, so bytes still in buffers are not counted early.
async fn upload(
    mut s: TcpStream,
    id: u64,
    report: tokio::sync::oneshot::Receiver<StreamReport>,
    deadline: Instant,
    max_bytes: u64,
    t: Duration,
) -> anyhow::Result<(u64, Instant)> {
    bounded(
        t,
        "upload: writing the stream id",
        s.write_all(&id.to_le_bytes()),
    )
    .await?;
    let buf = pattern(CHUNK);
    let mut sent = 0u64;
    while sent < max_bytes && Instant::now() < deadline {
        let n = (max_bytes - sent).min(CHUNK as u64) as usize;
        bounded(t, "upload: writing", s.write_all(&buf[..n])).await?;
        sent += n as u64;
    }
    bounded(t, "upload: half-close", s.shutdown()).await?;
    let mut rest = Vec::new();
    bounded(t, "upload: waiting for the close", s.read_to_end(&mut rest)).await?;
    if !rest.is_empty() {
        bail!("upload: {} unexpected bytes from the sink", rest.len());
    }
    let r = bounded(t, "upload: the sink's count", report).await?;
    if r.bytes != sent {
        bail!(
            "upload: sent {sent} bytes but the sink received {}",
            r.bytes
        );
    }
    Ok((sent, r.at))
}

/// Asks the source for `duration` of data, reads to EOF, and checks the count both ways.
async fn download(
    mut s: TcpStream,
    id: u64,
    report: tokio::sync::oneshot::Receiver<StreamReport>,
    duration: Duration,
    max_bytes: u64,
    t: Duration,
) -> anyhow::Result<(u64, Instant)> {
    let mut hdr = [0u8; 24];
    hdr[0..8].copy_from_slice(&id.to_le_bytes());
    hdr[8..16].copy_from_slice(&(duration.as_millis() as u64).to_le_bytes());
    hdr[16..24].copy_from_slice(&max_bytes.to_le_bytes());
    bounded(t, "download: writing the request", s.write_all(&hdr)).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    // One bound for the whole transfer: a timer armed per read would cost more than the
    // read itself at loopback speed and lower the figure being measured.
    let read_all = async {
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return std::io::Result::Ok(());
            }
            got += n as u64;
        }
    };
    bounded(duration + t, "download: reading", read_all).await?;
    let end = Instant::now();
    let r = bounded(t, "download: the source's count", report).await?;
    if r.bytes != got {
        bail!(
            "download: the source sent {} bytes but {got} arrived",
            r.bytes
        );
    }
    Ok((got, end))
}

// ---------------------------------------------------------------------------------------
// connrate

pub(super) async fn connrate(ctx: Ctx, a: ConnrateArgs) -> anyhow::Result<Vec<Record>> {
    if a.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let started = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + a.common.duration;
    let mut set = JoinSet::new();
    for _ in 0..a.workers {
        let ctx = ctx.clone();
        let started = started.clone();
        let count = a.count;
        set.spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let n = started.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                let t0 = Instant::now();
                session(&ctx, n)
                    .await
                    .with_context(|| format!("session {n}"))?;
                lat.push(t0.elapsed());
            }
            anyhow::Ok(lat)
        });
    }
    let mut lat = Vec::new();
    while let Some(res) = set.join_next().await {
        match res.context("worker task")? {
            Ok(l) => lat.extend(l),
            Err(e) => {
                set.abort_all();
                return Err(e);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let n = lat.len();
    if n == 0 {
        bail!("connrate: no session completed");
    }
    let detail = json!({ "sessions": n, "seconds": secs, "workers": a.workers });
    let case = ctx.via.tcp_case(format!("connrate {}w", a.workers));
    Ok(vec![
        Record::new(&case, "sessions/s", n as f64 / secs, Better::Higher).detail(detail.clone()),
        Record::new(
            &case,
            "p50 µs",
            percentile_us(&lat, 50.0).unwrap_or(0.0),
            Better::Lower,
        ),
        Record::new(
            &case,
            "p99 µs",
            percentile_us(&lat, 99.0).unwrap_or(0.0),
            Better::Lower,
        ),
    ])
}

/// One whole session: connect, handshake, 32-byte echo (checked), close (the target
/// closes first, the client sees EOF and closes).
async fn session(ctx: &Ctx, n: u64) -> anyhow::Result<()> {
    let mut s = ctx.dial(ctx.targets.echo_once).await?;
    let payload = numbered(n, SESSION_PAYLOAD);
    bounded(ctx.timeout, "writing the payload", s.write_all(&payload)).await?;
    let mut back = [0u8; SESSION_PAYLOAD + 1];
    bounded(
        ctx.timeout,
        "reading the echo",
        s.read_exact(&mut back[..SESSION_PAYLOAD]),
    )
    .await?;
    if back[..SESSION_PAYLOAD] != payload[..] {
        bail!("the echo differs from what was sent");
    }
    let extra = bounded(ctx.timeout, "waiting for the close", s.read(&mut back)).await?;
    if extra != 0 {
        bail!("bytes after the echo");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// latency

/// Warm-up round trips, not counted.
const WARMUP: u64 = 200;

pub(super) async fn latency(ctx: Ctx, a: LatencyArgs) -> anyhow::Result<Vec<Record>> {
    let mut s = ctx.dial(ctx.targets.echo).await?;
    let size = a.size as usize;
    let mut back = vec![0u8; size];
    let mut rtts = Vec::new();
    let mut seq = 0u64;
    let start = Instant::now();
    let deadline = start + a.common.duration;
    while (rtts.len() as u64) < a.count && Instant::now() < deadline {
        let payload = numbered(seq, size);
        let t0 = Instant::now();
        bounded(ctx.timeout, "writing a ping", s.write_all(&payload)).await?;
        bounded(ctx.timeout, "reading a pong", s.read_exact(&mut back)).await?;
        let rtt = t0.elapsed();
        if back != payload {
            bail!("latency: pong {seq} differs from its ping");
        }
        if seq >= WARMUP {
            rtts.push(rtt);
        }
        seq += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    rtts.sort_unstable();
    if rtts.is_empty() {
        bail!("latency: no round trip after the warm-up");
    }
    let detail =
        json!({ "round_trips": rtts.len(), "warmup": WARMUP, "seconds": secs, "size": size });
    let case = ctx.via.tcp_case("latency");
    Ok(vec![
        Record::new(
            &case,
            "p50 µs",
            percentile_us(&rtts, 50.0).unwrap_or(0.0),
            Better::Lower,
        )
        .detail(detail),
        Record::new(
            &case,
            "p99 µs",
            percentile_us(&rtts, 99.0).unwrap_or(0.0),
            Better::Lower,
        ),
    ])
}

// ---------------------------------------------------------------------------------------
// idle

pub(super) async fn idle(ctx: Ctx, a: IdleArgs) -> anyhow::Result<Vec<Record>> {
    // Each tunnel costs this process two descriptors: the client end and the target end.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let want = a.tunnels;
    let fit = (limit.saturating_sub(64) / 2) as usize;
    let tunnels = want.min(fit);
    if tunnels < want {
        eprintln!("bench idle: the open-files limit {limit} allows {tunnels} tunnels, not {want}");
    }
    let before = MemSnapshot::take(&a.proxy_pid)?;
    let t_open = Instant::now();
    // Opening is bounded as a whole too: a proxy that stalls is reported with the count it
    // reached, not waited for.
    let open_deadline = t_open + a.common.duration.max(Duration::from_secs(60));
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let mut set = JoinSet::new();
    let mut open = Vec::with_capacity(tunnels);
    let mut failures = 0usize;
    let mut first_error: Option<String> = None;
    let mut launched = 0usize;
    while launched < tunnels || !set.is_empty() {
        let can_launch = launched < tunnels && failures < 64 && Instant::now() < open_deadline;
        if can_launch {
            if let Ok(permit) = sem.clone().try_acquire_owned() {
                let ctx = ctx.clone();
                let ping = !a.no_ping;
                set.spawn(async move {
                    let r = open_tunnel(&ctx, ping).await;
                    drop(permit);
                    r
                });
                launched += 1;
                continue;
            }
        } else if set.is_empty() {
            break;
        }
        match set.join_next().await {
            Some(Ok(Ok(s))) => open.push(s),
            Some(Ok(Err(e))) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Some(Err(e)) => bail!("idle: tunnel task: {e}"),
            None => {}
        }
    }
    let open_secs = t_open.elapsed().as_secs_f64();
    tokio::time::sleep(a.settle).await;
    let after = MemSnapshot::take(&a.proxy_pid)?;
    let opened = open.len();
    // The targets close first, so the TIME_WAIT states stay off the ephemeral ports.
    let mut closes = JoinSet::new();
    for mut s in open {
        let t = ctx.timeout;
        closes.spawn(async move {
            bounded(t, "idle: asking to close", s.write_all(b"q")).await?;
            let mut b = [0u8; 1];
            bounded(t, "idle: waiting for the close", s.read(&mut b)).await
        });
    }
    let mut unclean = 0usize;
    while let Some(r) = closes.join_next().await {
        if !matches!(r, Ok(Ok(0))) {
            unclean += 1;
        }
    }
    if unclean > 0 {
        eprintln!("bench idle: {unclean} tunnels did not close cleanly");
    }
    if let Some(e) = &first_error {
        eprintln!("bench idle: {failures} tunnels failed; the first: {e}");
    }
    if opened == 0 {
        bail!(
            "idle: no tunnel opened ({})",
            first_error.unwrap_or_default()
        );
    }
    let per = |b: Option<u64>, a: Option<u64>, sign: i64| -> Option<f64> {
        let (b, a) = (b? as i64, a? as i64);
        Some(((a - b) * sign) as f64 / opened as f64)
    };
    let detail = json!({
        "requested": want,
        "opened": opened,
        "failed": failures,
        "first_error": first_error,
        "open_seconds": open_secs,
        "proxy_processes_after": after.proxy_procs,
        "proxy_rss_kib": [before.proxy_rss, after.proxy_rss],
        "proxy_pss_kib": [before.proxy_pss, after.proxy_pss],
        "mem_available_kib": [before.mem_available, after.mem_available],
        "kernel_kib": [before.kernel, after.kernel],
        "generator_rss_kib": [before.self_rss, after.self_rss],
    });
    let case = ctx.via.tcp_case("idle tunnels");
    let mut out = vec![Record::new(&case, "opened", opened as f64, Better::Higher).detail(detail)];
    if let Some(v) = per(before.proxy_rss, after.proxy_rss, 1) {
        out.push(Record::new(&case, "RSS KiB/tunnel", v, Better::Lower));
    }
    if let Some(v) = per(before.proxy_pss, after.proxy_pss, 1) {
        out.push(Record::new(&case, "PSS KiB/tunnel", v, Better::Lower));
    }
    if let Some(v) = per(Some(before.mem_available), Some(after.mem_available), -1) {
        out.push(Record::new(
            &case,
            "MemAvailable drop KiB/tunnel",
            v,
            Better::Lower,
        ));
    }
    if let Some(v) = per(Some(before.kernel), Some(after.kernel), 1) {
        out.push(Record::new(&case, "kernel KiB/tunnel", v, Better::Lower));
    }
    if let Some(v) = per(Some(before.self_rss), Some(after.self_rss), 1) {
        out.push(Record::new(
            &case,
            "generator RSS KiB/tunnel",
            v,
            Better::Lower,
        ));
    }
    Ok(out)
}

/// A tunnel to the idle echo target, proven by a one-byte round trip unless `ping` is off.
async fn open_tunnel(ctx: &Ctx, ping: bool) -> anyhow::Result<TcpStream> {
    let mut s = ctx.dial(ctx.targets.idle_echo).await?;
    if ping {
        bounded(ctx.timeout, "idle: ping", s.write_all(b"i")).await?;
        let mut b = [0u8; 1];
        bounded(ctx.timeout, "idle: pong", s.read_exact(&mut b)).await?;
        if &b != b"i" {
            bail!("idle: the pong differs from the ping");
        }
    }
    Ok(s)
}

/// Memory figures in KiB.
#[derive(Debug, Clone, Copy)]
struct MemSnapshot {
    proxy_rss: Option<u64>,
    proxy_pss: Option<u64>,
    proxy_procs: usize,
    mem_available: u64,
    /// Slab + KernelStack + PageTables, machine-wide: socket structures, threads' and
    /// processes' kernel memory. Less disturbed by other jobs' page cache and heaps than
    /// MemAvailable, so it is reported beside it.
    kernel: u64,
    self_rss: u64,
}

impl MemSnapshot {
    fn take(roots: &[u32]) -> anyhow::Result<MemSnapshot> {
        let mem_available = meminfo_kib("MemAvailable")?;
        let kernel =
            meminfo_kib("Slab")? + meminfo_kib("KernelStack")? + meminfo_kib("PageTables")?;
        let self_rss = status_kib(std::process::id(), "VmRSS")?.unwrap_or(0);
        if roots.is_empty() {
            return Ok(MemSnapshot {
                proxy_rss: None,
                proxy_pss: None,
                proxy_procs: 0,
                mem_available,
                kernel,
                self_rss,
            });
        }
        let pids = with_descendants(roots)?;
        let mut rss = 0u64;
        let mut pss = Some(0u64);
        for &pid in &pids {
            // A process may exit between the listing and the read; it then holds nothing.
            rss += status_kib(pid, "VmRSS").ok().flatten().unwrap_or(0);
            pss = match (pss, pss_kib(pid)) {
                (Some(t), Some(p)) => Some(t + p),
                _ => None,
            };
        }
        Ok(MemSnapshot {
            proxy_rss: Some(rss),
            proxy_pss: pss,
            proxy_procs: pids.len(),
            mem_available,
            kernel,
            self_rss,
        })
    }
}

fn meminfo_kib(key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    field_kib(&text, key).with_context(|| format!("/proc/meminfo has no {key}"))
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<Option<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(field_kib(&text, key))
}

fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    field_kib(&text, "Pss")
}

/// `Key:   1234 kB` → 1234.
fn field_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// What the bench reads of one process in `/proc/PID/stat`.
pub(super) struct ProcStat {
    pub(super) pid: u32,
    /// One letter: `R`, `S`, `Z`…
    pub(super) state: String,
    pub(super) ppid: u32,
    pub(super) pgrp: u32,
}

/// Every process on the machine; one that ends while being read is left out.
pub(super) fn processes() -> std::io::Result<Vec<ProcStat>> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: fields resume after the last
        // ')' with state, ppid, pgrp.
        let parsed = stat.rsplit_once(')').and_then(|(_, after)| {
            let mut f = after.split_whitespace();
            let state = f.next()?.to_string();
            let ppid = f.next()?.parse().ok()?;
            let pgrp = f.next()?.parse().ok()?;
            Some(ProcStat {
                pid,
                state,
                ppid,
                pgrp,
            })
        });
        all.extend(parsed);
    }
    Ok(all)
}

/// The given processes and all their descendants (Dante forks helpers as load grows).
fn with_descendants(roots: &[u32]) -> anyhow::Result<Vec<u32>> {
    for &r in roots {
        if !std::path::Path::new(&format!("/proc/{r}")).exists() {
            bail!("--proxy-pid {r}: no such process");
        }
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in processes().context("listing /proc")? {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut seen: HashSet<u32> = HashSet::new();
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(p) = stack.pop() {
        if seen.insert(p) {
            if let Some(c) = children.get(&p) {
                stack.extend(c);
            }
        }
    }
    let mut v: Vec<u32> = seen.into_iter().collect();
    v.sort_unstable();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_parsing() {
        let t = "MemTotal:       24000000 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(field_kib(t, "MemAvailable"), Some(22_000_000));
        assert_eq!(field_kib(t, "Mem"), None);
    }

    #[test]
    fn own_process_is_found_with_its_descendants() {
        let me = std::process::id();
        assert!(with_descendants(&[me]).unwrap().contains(&me));
    }
}
