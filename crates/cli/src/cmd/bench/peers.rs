//! `ferrosocks bench peers`: direct, Dante, microsocks and ferrosocks side by side, with
//! HAProxy and nginx (its stream module) as plain forwarders beside them: no SOCKS at all,
//! so their figures are what mature relays on the same core cost (HAProxy TCP with splice,
//! nginx TCP and UDP), a floor for the TCP, latency and UDP rows. In the UDP rows, this
//! binary's bare forwarder (`bench bare-udp-forwarder`) shows what a relay that does the
//! least work per datagram reaches on that core.
//!
//! Every proxy runs on loopback pinned to one core (`taskset -c PROXY_CPU`); every
//! measurement is a fresh `ferrosocks bench SCENARIO` process pinned to the other core,
//! so the generator is the same program for every contender. Contenders are interleaved
//! (A B C D A B C D …) case by case, so a slow spell on this shared machine hits all of
//! them alike, and ratios are taken within one repetition before the median is taken.
//! Before each idle-memory case the proxy is restarted, so memory kept by its allocator
//! from earlier cases neither inflates nor hides the growth per tunnel; after it, and after
//! any measurement that failed, the proxy is stopped and started again for its next one.
//!
//! Any other SOCKS5 server (one built outside this project, say) joins with `--peer
//! NAME=COMMAND` and runs the same cases under the same rules.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use serde::Serialize;
use tokio::process::{Child, Command};

use super::iperf3;
use super::report::{self, Row, NOT_APPLICABLE};
use super::{RunReport, LOOPBACK, TARGETS};

#[derive(Debug, Clone, Args)]
pub(crate) struct PeersArgs {
    /// Repetitions; each runs every contender once per case, interleaved.
    #[arg(long, default_value_t = 3)]
    pub(crate) reps: usize,
    /// A shorter run: 1 s per measurement and 3000 idle tunnels.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Time per measurement [default: 3s, 1s with --quick].
    #[arg(long, value_parser = crate::args::duration)]
    pub(crate) duration: Option<Duration>,
    /// Idle tunnels per idle measurement [default: 9000, 3000 with --quick].
    #[arg(long)]
    pub(crate) tunnels: Option<usize>,
    /// Contenders, in the order they run within a repetition [default:
    /// direct,dante,microsocks,haproxy,nginx,bare-udp, each --peer, ferrosocks].
    #[arg(long, value_delimiter = ',')]
    pub(crate) contenders: Vec<String>,
    /// Another SOCKS5 server to compare, built or installed outside this project (repeat
    /// for several): NAME=COMMAND, where COMMAND is a shell command line (run by `sh -c`)
    /// that runs the server in the foreground on 127.0.0.1, `{port}` standing for the port
    /// it must listen on, e.g. --peer 'hev=./hev.sh {port}'. It is pinned to the proxy
    /// core like the others, runs every SOCKS case (what it cannot do, UDP say, shows as
    /// n/a) and is stopped with everything its command started.
    #[arg(long, value_name = "NAME=COMMAND", value_parser = parse_peer)]
    pub(crate) peer: Vec<Peer>,
    /// Cases to run (default: all).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    pub(crate) scenarios: Vec<String>,
    /// Datagrams per second in the fixed-rate UDP case. It is meant as a rate direct
    /// sustains without loss, so that any loss is the relay's; on a slower machine, pick a
    /// lower one (`ferrosocks bench udp --direct --rate N` tells).
    #[arg(long, default_value_t = 150_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) udp_rate: u32,
    /// The name the `connrate-by-name` sessions give their targets by. It must resolve to
    /// 127.0.0.1 only (checked before the run; the case is left out, with a warning, if
    /// not): where `localhost` also gives `::1`, as on a stock Debian, every proxy would try
    /// `::1` first and pay a refused connect per session. A line such as `127.0.0.1
    /// bench-target` in /etc/hosts makes such a name.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub(crate) target_name: String,
    /// The ferrosocks binary to serve with [default: this executable].
    #[arg(long)]
    pub(crate) ferrosocks_bin: Option<PathBuf>,
    /// Extra argument for `ferrosocks serve` (repeat), e.g. --serve-arg=--relay=copy.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) serve_arg: Vec<String>,
    /// The Dante server binary.
    #[arg(long, default_value = "danted")]
    pub(crate) danted: String,
    /// The microsocks binary.
    #[arg(long, default_value = "microsocks")]
    pub(crate) microsocks: String,
    /// The HAProxy binary (a TCP forwarder: throughput and latency only).
    #[arg(long, default_value = "haproxy")]
    pub(crate) haproxy: String,
    /// The nginx binary (its stream module forwards TCP and UDP: throughput, latency, udp).
    #[arg(long, default_value = "nginx")]
    pub(crate) nginx: String,
    /// nginx's stream module, loaded when this file exists (Debian's libnginx-mod-stream).
    #[arg(long, default_value = "/usr/lib/nginx/modules/ngx_stream_module.so")]
    pub(crate) nginx_stream_module: PathBuf,
    /// iperf3, the second generator of the TCP throughput rows (`iperf3` cases).
    #[arg(long, default_value = "iperf3")]
    pub(crate) iperf3: String,
    /// proxychains-ng, which takes iperf3 through each SOCKS server.
    #[arg(long, default_value = "proxychains4")]
    pub(crate) proxychains: String,
    /// The core the proxies are pinned to.
    #[arg(long, default_value_t = 1)]
    pub(crate) proxy_cpu: usize,
    /// The core the load generator is pinned to.
    #[arg(long, default_value_t = 0)]
    pub(crate) generator_cpu: usize,
    /// Where the summary and every raw figure go.
    #[arg(long, default_value = "bench/results/latest.json")]
    pub(crate) json: PathBuf,
    /// Where the chart goes.
    #[arg(long, default_value = "bench/results/latest.svg")]
    pub(crate) svg: PathBuf,
}

/// What `--scenarios` can name.
const SCENARIOS: [&str; 7] = [
    "throughput",
    "iperf3",
    "connrate",
    "connrate-by-name",
    "latency",
    "udp",
    "idle",
];

/// One case: a name and the load that runs it.
struct Case {
    name: &'static str,
    scenario: &'static str,
    load: Load,
}

enum Load {
    /// `ferrosocks bench` with these arguments.
    Generator(Vec<String>),
    /// iperf3 (see `iperf3.rs`).
    Iperf3 { streams: usize, reverse: bool },
}

fn cases(a: &PeersArgs, tunnels: usize) -> Vec<Case> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut all = vec![
        Case {
            name: "tcp 1 up",
            scenario: "throughput",
            load: Load::Generator(s(&["throughput", "--streams", "1", "--direction", "up"])),
        },
        Case {
            name: "tcp 1 down",
            scenario: "throughput",
            load: Load::Generator(s(&["throughput", "--streams", "1", "--direction", "down"])),
        },
        Case {
            name: "tcp 8 up",
            scenario: "throughput",
            load: Load::Generator(s(&["throughput", "--streams", "8", "--direction", "up"])),
        },
        Case {
            name: "tcp 8 down",
            scenario: "throughput",
            load: Load::Generator(s(&["throughput", "--streams", "8", "--direction", "down"])),
        },
    ];
    // The same four rows by iperf3, a generator that is not ours (two processes).
    all.extend(
        [
            ("iperf3 1 up", 1, false),
            ("iperf3 1 down", 1, true),
            ("iperf3 8 up", 8, false),
            ("iperf3 8 down", 8, true),
        ]
        .map(|(name, streams, reverse)| Case {
            name,
            scenario: "iperf3",
            load: Load::Iperf3 { streams, reverse },
        }),
    );
    all.extend([
        Case {
            name: "connrate",
            scenario: "connrate",
            load: Load::Generator(s(&["connrate", "--workers", "8"])),
        },
        // The same sessions with the target given by name, as `socks5h://` clients and
        // browsers with remote DNS send it: the proxy resolves a name in each session.
        // Direct has no proxy to do that, so this row has no ratio to direct.
        Case {
            name: "connrate by name",
            scenario: "connrate-by-name",
            load: Load::Generator(s(&[
                "connrate",
                "--workers",
                "8",
                "--target-name",
                &a.target_name,
            ])),
        },
        Case {
            name: "latency",
            scenario: "latency",
            load: Load::Generator(s(&["latency", "--size", "32"])),
        },
        Case {
            name: "udp",
            scenario: "udp",
            load: Load::Generator(s(&["udp", "--size", "512", "--window", "64"])),
        },
        // The same datagrams at a fixed rate that direct sustains without loss: what a
        // relay loses or keeps up with (the field report in the seeds lost packets).
        Case {
            name: "udp rate",
            scenario: "udp",
            load: Load::Generator(s(&[
                "udp",
                "--size",
                "512",
                "--rate",
                &a.udp_rate.to_string(),
            ])),
        },
        Case {
            name: "idle",
            scenario: "idle",
            load: Load::Generator(vec!["idle".into(), "--tunnels".into(), tunnels.to_string()]),
        },
    ]);
    all.into_iter()
        .filter(|c| a.scenarios.is_empty() || a.scenarios.iter().any(|s| s == c.scenario))
        .collect()
}

/// A proxy this run started; stopped by its own pid.
struct Proxy {
    kind: String,
    child: Child,
    pid: u32,
    addr: SocketAddr,
    /// A `--peer`: its shell and everything the shell started form a process group of
    /// their own, stopped together.
    own_group: bool,
}

pub(crate) async fn run(a: PeersArgs) -> ExitCode {
    match run_inner(a).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ferrosocks bench peers: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Serialize)]
struct Summary<'a> {
    date: String,
    machine: BTreeMap<&'static str, String>,
    command: String,
    repetitions: usize,
    seconds_per_measurement: f64,
    idle_tunnels: usize,
    proxy_cpu: usize,
    generator_cpu: usize,
    contenders: &'a [String],
    table: String,
    rows: &'a [Row],
    /// Per case and contender, the median share of each pinned core that was busy.
    cpu_busy: Vec<CpuSummary>,
    /// Every measurement as it came: repetition, case, contender, records or error.
    raw: &'a [Raw],
    /// What makes some figures of this run say less than they seem to (printed too).
    warnings: &'a [String],
}

/// How busy the two pinned cores were during one measurement, in percent of their time
/// (from `/proc/stat`, over the whole generator run: its start and end included). A
/// generator core near 100 % while the proxy's has time to spare says the generator, not
/// the proxy, set the figure.
#[derive(Debug, Clone, Copy, Serialize)]
struct CpuBusy {
    generator: f64,
    proxy: f64,
}

#[derive(Serialize)]
struct CpuSummary {
    case: String,
    contender: String,
    generator_median: f64,
    proxy_median: f64,
}

#[derive(Serialize)]
struct Raw {
    rep: usize,
    case: String,
    contender: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<RunReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_busy_percent: Option<CpuBusy>,
}

impl Raw {
    /// A case `contender` was not measured in, and why.
    fn unmeasured(rep: usize, case: &Case, contender: &str, error: String) -> Raw {
        Raw {
            rep,
            case: case.name.to_string(),
            contender: contender.to_string(),
            report: None,
            error: Some(error),
            cpu_busy_percent: None,
        }
    }
}

/// The fixed-rate UDP row is meant to run at a rate direct sustains, so that what a relay
/// loses is the relay's. Where direct lost datagrams too, the generator's core could not
/// keep the rate, and the row measures the generator: one line saying so (with the worst
/// repetition), or none.
fn direct_losses_at_fixed_rate(raw: &[Raw], rate: u32) -> Vec<String> {
    let losses: Vec<(usize, f64)> = raw
        .iter()
        .filter(|r| r.contender == "direct" && r.case == "udp rate")
        .filter_map(|r| {
            let records = &r.report.as_ref()?.records;
            let loss = records.iter().find(|x| x.metric == "loss %")?.value;
            (loss > 0.0).then_some((r.rep, loss))
        })
        .collect();
    let Some(&(rep, worst)) = losses.iter().max_by(|x, y| x.1.total_cmp(&y.1)) else {
        return Vec::new();
    };
    vec![format!(
        "direct lost datagrams at {rate}/s in {} of the repetitions (up to {worst:.2} % in \
         repetition {}): the generator cannot keep that rate on this machine, so the \
         fixed-rate UDP row measures the generator, not the relays; run again with a lower \
         --udp-rate",
        losses.len(),
        rep + 1
    )]
}

async fn run_inner(a: PeersArgs) -> anyhow::Result<bool> {
    let duration = a.duration.unwrap_or(if a.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    });
    let tunnels = a.tunnels.unwrap_or(if a.quick { 3000 } else { 9000 });
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let contenders = contenders(&a)?;
    // A forwarder has no handshake to name a target, so it maps a block of its ports to
    // a block of fixed target ports; only measurements through one pin the targets.
    let targets_port = if contenders.iter().any(|c| is_forwarder(c)) {
        Some(port_block(TARGETS)?)
    } else {
        None
    };
    let me = std::env::current_exe().context("locating this executable")?;
    let ferro_bin = a.ferrosocks_bin.clone().unwrap_or_else(|| me.clone());
    // Children inherit the raised limit: every proxy needs two descriptors per tunnel.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let work = std::env::temp_dir().join(format!("ferrosocks-peers-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut cases = cases(&a, tunnels);
    // Left out, with a warning, where the name also resolves elsewhere (`::1`, say):
    // every proxy would then try that address first and pay a refused connect per session.
    let mut warnings = Vec::new();
    if cases.iter().any(|c| c.scenario == "connrate-by-name") {
        if let Err(e) = super::checked_target_name(&a.target_name) {
            let why = format!("the by-name sessions are left out: {e:#}");
            println!("bench peers: {why}");
            warnings.push(why);
            cases.retain(|c| c.scenario != "connrate-by-name");
        }
    }
    // Nothing to measure must not end in an empty report written over the last one.
    if cases.is_empty() {
        bail!("no case left to run ({})", warnings.join("; "));
    }
    println!(
        "bench peers: {} repetitions x {} cases x {} contenders, {:?} each, {} idle tunnels; \
         proxies on CPU {}, generator on CPU {}; logs in {}",
        a.reps,
        cases.len(),
        contenders.len(),
        duration,
        tunnels,
        a.proxy_cpu,
        a.generator_cpu,
        work.display()
    );

    let mut proxies: BTreeMap<String, Proxy> = BTreeMap::new();
    // SIGTERM or SIGINT ends the run early but still stops every server it started.
    let interrupted = crate::signals::shutdown("already stopping").first();
    let run = async {
        // A server that runs no selected case is not started (nor required).
        let runs_a_case = |c: &str| cases.iter().any(|case| applies(c, case.scenario).is_ok());
        // A peer that does not start is reported in each of its cases; the run goes on
        // without it. Without ferrosocks there is nothing to compare.
        let mut not_started: BTreeMap<String, String> = BTreeMap::new();
        for c in contenders
            .iter()
            .filter(|c| *c != "direct" && runs_a_case(c))
        {
            match start_proxy(c, &a, &ferro_bin, &work, targets_port).await {
                Ok(p) => {
                    println!("  {c}: {} (pid {})", p.addr, p.pid);
                    proxies.insert(c.clone(), p);
                }
                Err(e) if c != "ferrosocks" => {
                    println!("  {c}: did not start, left out: {e:#}");
                    not_started.insert(c.clone(), format!("{e:#}"));
                }
                Err(e) => return Err(e),
            }
        }
        let mut raw = Vec::new();
        let started = Instant::now();
        for rep in 0..a.reps {
            for case in &cases {
                let mut line = format!("[{}/{}] {:<10}", rep + 1, a.reps, case.name);
                for c in &contenders {
                    let skipped = match applies(c, case.scenario) {
                        Err(why) => Some(("-", format!("{NOT_APPLICABLE}: {why}"))),
                        Ok(()) => {
                            // A fresh process before the idle case, so that memory from
                            // earlier cases does not count, and after one was stopped (below).
                            let restart = case.scenario == "idle" || !proxies.contains_key(c);
                            if restart && c != "direct" && !not_started.contains_key(c) {
                                if let Some(old) = proxies.remove(c) {
                                    stop_proxy(old).await;
                                }
                                match start_proxy(c, &a, &ferro_bin, &work, targets_port).await {
                                    Ok(p) => {
                                        proxies.insert(c.clone(), p);
                                    }
                                    Err(e) if c != "ferrosocks" => {
                                        not_started.insert(c.clone(), format!("{e:#}"));
                                    }
                                    Err(e) => return Err(e),
                                }
                            }
                            not_started
                                .get(c)
                                .map(|why| ("n/a", format!("did not start: {why}")))
                        }
                    };
                    if let Some((mark, error)) = skipped {
                        let _ = write!(line, "  {c}: {mark}");
                        raw.push(Raw::unmeasured(rep, case, c, error));
                        continue;
                    }
                    let proxy = proxies.get(c);
                    let forward = targets_port.filter(|_| is_forwarder(c));
                    let before = cpu_times();
                    let out = measure(&a, &me, case, proxy, forward, duration, &work).await;
                    let cpu_busy_percent = cpu_busy(&before, &cpu_times(), &a);
                    let _ = write!(line, "  {c}: {}", brief(&out));
                    // Stopped at once, and started again before its next measurement: the
                    // idle case leaves thousands of closed tunnels behind and a failed
                    // measurement may leave a server broken, and a broken server must not
                    // slow the other contenders on the core they share (hev-socks5-server
                    // stalls at ~3,300 idle tunnels and then spins on failing accepts).
                    if case.scenario == "idle" || out.is_err() {
                        if let Some(old) = proxies.remove(c) {
                            stop_proxy(old).await;
                        }
                    }
                    let (report, error) = match out {
                        Ok(r) => (Some(r), None),
                        Err(e) => (None, Some(format!("{e:#}"))),
                    };
                    raw.push(Raw {
                        rep,
                        case: case.name.to_string(),
                        contender: c.clone(),
                        report,
                        error,
                        cpu_busy_percent,
                    });
                }
                println!("{line}");
            }
        }
        println!(
            "bench peers: measured in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        anyhow::Ok(raw)
    };
    let result = tokio::select! {
        r = run => r,
        () = interrupted => Err(anyhow::anyhow!("interrupted; the servers it started are stopped")),
    };
    for (_, p) in std::mem::take(&mut proxies) {
        stop_proxy(p).await;
    }
    let raw = result?;

    let rows = summarize(&raw, &cases, &contenders, a.reps);
    let table = report::peers_table(&rows, &contenders);
    println!();
    print!("{table}");
    println!(
        "medians of {} repetitions; X/direct and ferro/X are medians of per-repetition ratios; \
         n/a = the contender failed or cannot do it (see the JSON for why)",
        a.reps
    );
    let cpu = cpu_summary(&raw, &contenders);
    println!("CPU busy, % of the generator's core / the proxies' core (medians):");
    if a.proxy_cpu == a.generator_cpu {
        println!(
            "  (proxies and generator share CPU {}: both figures are that core's)",
            a.proxy_cpu
        );
    }
    for case in cpu.chunk_by(|x, y| x.case == y.case) {
        let mut line = format!("  {:<10}", case[0].case);
        for c in case {
            let _ = write!(
                line,
                "  {} {:.0}/{:.0}",
                c.contender, c.generator_median, c.proxy_median
            );
        }
        println!("{line}");
    }
    warnings.extend(direct_losses_at_fixed_rate(&raw, a.udp_rate));
    for w in &warnings {
        println!("  warning: {w}");
    }
    let mut ok = true;
    for r in &raw {
        if let Some(e) = r.error.as_ref().filter(|e| !e.starts_with(NOT_APPLICABLE)) {
            println!("  {} {} rep {}: {e}", r.contender, r.case, r.rep + 1);
            if r.contender == "direct" || r.contender == "ferrosocks" {
                ok = false;
            }
        }
    }
    let machine = machine();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let summary = Summary {
        date: date.clone(),
        machine: machine.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        repetitions: a.reps,
        seconds_per_measurement: duration.as_secs_f64(),
        idle_tunnels: tunnels,
        proxy_cpu: a.proxy_cpu,
        generator_cpu: a.generator_cpu,
        contenders: &contenders,
        table: table.clone(),
        rows: &rows,
        cpu_busy: cpu,
        raw: &raw,
        warnings: &warnings,
    };
    report::write_json(&a.json, &summary)?;
    let title = format!(
        "ferrosocks bench peers, {} ({} cores, {}), medians of {} repetitions",
        &date[..date.len().min(10)],
        machine.get("cores").map_or("?", |s| s.as_str()),
        machine.get("cpu").map_or("?", |s| s.as_str()),
        a.reps
    );
    report::chart(&a.svg, &title, &rows, &contenders)?;
    println!("wrote {} and {}", a.json.display(), a.svg.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(ok)
}

/// Busy and total jiffies of each CPU (`cpuN` lines of `/proc/stat`), by CPU number.
fn cpu_times() -> BTreeMap<usize, (u64, u64)> {
    std::fs::read_to_string("/proc/stat")
        .map(|text| parse_cpu_times(&text))
        .unwrap_or_default()
}

fn parse_cpu_times(stat: &str) -> BTreeMap<usize, (u64, u64)> {
    stat.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let cpu = f.next()?.strip_prefix("cpu")?.parse::<usize>().ok()?;
            // user nice system idle iowait irq softirq (guest time is inside user). Steal,
            // time the host gave the vCPU to others, is neither: the share is of the time
            // the vCPU ran.
            let v: Vec<u64> = f.take(7).filter_map(|x| x.parse().ok()).collect();
            let total: u64 = v.iter().sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            Some((cpu, (total - idle, total)))
        })
        .collect()
}

fn cpu_busy(
    before: &BTreeMap<usize, (u64, u64)>,
    after: &BTreeMap<usize, (u64, u64)>,
    a: &PeersArgs,
) -> Option<CpuBusy> {
    let share = |cpu: usize| {
        let (b0, t0) = before.get(&cpu)?;
        let (b1, t1) = after.get(&cpu)?;
        let total = t1.checked_sub(*t0).filter(|&t| t > 0)?;
        // iowait can step back on Linux, so a share could stray past the bounds.
        Some((100.0 * b1.saturating_sub(*b0) as f64 / total as f64).clamp(0.0, 100.0))
    };
    Some(CpuBusy {
        generator: share(a.generator_cpu)?,
        proxy: share(a.proxy_cpu)?,
    })
}

/// Medians of the busy shares per case and contender: cases in the order measured, each
/// case's contenders in `contenders` order.
fn cpu_summary(raw: &[Raw], contenders: &[String]) -> Vec<CpuSummary> {
    // (case, contender) in the order first measured, with every share measured for it.
    let mut groups: Vec<(&Raw, Vec<CpuBusy>)> = Vec::new();
    for r in raw {
        let Some(busy) = r.cpu_busy_percent.filter(|_| r.error.is_none()) else {
            continue;
        };
        let same = |(first, _): &&mut (&Raw, Vec<CpuBusy>)| {
            first.case == r.case && first.contender == r.contender
        };
        match groups.iter_mut().find(same) {
            Some((_, shares)) => shares.push(busy),
            None => groups.push((r, vec![busy])),
        }
    }
    groups.sort_by_cached_key(|(first, _)| {
        (
            raw.iter().position(|r| r.case == first.case),
            contenders.iter().position(|c| *c == first.contender),
        )
    });
    groups
        .into_iter()
        .filter_map(|(first, shares)| {
            let of = |f: fn(&CpuBusy) -> f64| shares.iter().map(f).collect::<Vec<_>>();
            Some(CpuSummary {
                case: first.case.clone(),
                contender: first.contender.clone(),
                generator_median: report::median(&of(|b| b.generator))?,
                proxy_median: report::median(&of(|b| b.proxy))?,
            })
        })
        .collect()
}

fn brief(out: &anyhow::Result<RunReport>) -> String {
    match out {
        Ok(r) => r
            .records
            .first()
            .map(|x| format!("{} {}", report::fmt_value(x.value), x.metric))
            .unwrap_or_default(),
        Err(_) => "n/a".into(),
    }
}

/// Builds the rows in the order the records first appear; a failed contender gets `None`
/// for that repetition and its first error.
fn summarize(raw: &[Raw], cases: &[Case], contenders: &[String], reps: usize) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut case_rows: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for case in cases {
        for r in raw.iter().filter(|r| r.case == case.name) {
            let Some(rep) = &r.report else { continue };
            for rec in &rep.records {
                let i = match rows
                    .iter()
                    .position(|x| x.case == rec.case && x.metric == rec.metric)
                {
                    Some(i) => i,
                    None => {
                        let mut row = Row::new(&rec.case, &rec.metric, rec.better);
                        for c in contenders {
                            row.reps.insert(c.clone(), vec![None; reps]);
                        }
                        rows.push(row);
                        case_rows.entry(case.name).or_default().push(rows.len() - 1);
                        rows.len() - 1
                    }
                };
                if let Some(v) = rows[i].reps.get_mut(&r.contender) {
                    v[r.rep] = Some(rec.value);
                }
            }
        }
    }
    for r in raw {
        if let Some(e) = &r.error {
            for &i in case_rows.get(r.case.as_str()).into_iter().flatten() {
                rows[i]
                    .errors
                    .entry(r.contender.clone())
                    .or_insert_with(|| e.clone());
            }
        }
    }
    for row in &mut rows {
        row.summarize(contenders);
    }
    rows
}

/// Runs one case: a fresh generator process pinned to the generator core, or iperf3.
async fn measure(
    a: &PeersArgs,
    me: &Path,
    case: &Case,
    proxy: Option<&Proxy>,
    forward: Option<u16>,
    duration: Duration,
    work: &Path,
) -> anyhow::Result<RunReport> {
    let args = match &case.load {
        Load::Generator(args) => args,
        &Load::Iperf3 { streams, reverse } => {
            return measure_iperf3(a, streams, reverse, proxy, forward, duration, work).await
        }
    };
    let json = work.join("measure.json");
    let _ = std::fs::remove_file(&json);
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(a.generator_cpu.to_string())
        .arg(me)
        .arg("bench")
        .args(args)
        .arg("--duration")
        .arg(format!("{}ms", duration.as_millis()))
        .arg("--json")
        .arg(&json)
        .arg("--quiet");
    match (proxy, forward) {
        (None, _) => {
            cmd.arg("--direct");
        }
        (Some(p), Some(targets_port)) => {
            cmd.arg("--forward")
                .arg(p.addr.to_string())
                .arg("--targets-port")
                .arg(targets_port.to_string());
        }
        (Some(p), None) => {
            cmd.arg("--proxy").arg(p.addr.to_string());
        }
    }
    if let (Some(p), "idle") = (proxy, case.scenario) {
        cmd.arg("--proxy-pid").arg(p.pid.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().context("starting the generator (taskset)")?;
    // Generous, but a bound: opening idle tunnels may take up to a minute by itself.
    let limit = duration * 8 + Duration::from_secs(90);
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(o) => o?,
        Err(_) => bail!("the generator did not finish within {limit:?}"),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim();
        bail!(
            "{}",
            last.strip_prefix("ferrosocks bench: ").unwrap_or(last)
        );
    }
    let text = std::fs::read_to_string(&json).context("reading the generator's JSON")?;
    Ok(serde_json::from_str(&text)?)
}

/// One iperf3 case: its one-off server on the generator's core, on the forwarder's first
/// target port when `forward` names one (a forwarder maps its port to that one), else on
/// a free port below the ephemeral range (see [`port_block`]).
async fn measure_iperf3(
    a: &PeersArgs,
    streams: usize,
    reverse: bool,
    proxy: Option<&Proxy>,
    forward: Option<u16>,
    duration: Duration,
    work: &Path,
) -> anyhow::Result<RunReport> {
    let route = match (proxy, forward) {
        (None, _) => iperf3::Route::Direct,
        (Some(p), Some(_)) => iperf3::Route::Forward(p.addr),
        (Some(p), None) => iperf3::Route::Socks(p.addr),
    };
    let run = iperf3::Run {
        iperf3: &a.iperf3,
        proxychains: &a.proxychains,
        cpu: a.generator_cpu,
        server_port: match forward {
            Some(targets_port) => targets_port,
            None => port_block(1)?,
        },
        route,
        streams,
        reverse,
        duration,
    };
    iperf3::measure(&run, work).await
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind(LOOPBACK)?;
    Ok(l.local_addr()?.port())
}

/// Every contender `bench peers` knows.
const CONTENDERS: [&str; 7] = [
    "direct",
    "dante",
    "microsocks",
    "haproxy",
    "nginx",
    "bare-udp",
    "ferrosocks",
];

/// A SOCKS5 server from outside this project (`--peer NAME=COMMAND`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Peer {
    name: String,
    /// Run as `sh -c COMMAND` with `{port}` replaced (the shell stays as its parent
    /// unless the command starts with `exec`).
    command: String,
}

fn parse_peer(s: &str) -> Result<Peer, String> {
    let (name, command) = s
        .split_once('=')
        .ok_or("expected NAME=COMMAND, e.g. hev='./hev.sh {port}'")?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "peer name {name:?}: letters, digits, '-' and '_' only"
        ));
    }
    if CONTENDERS.contains(&name) {
        return Err(format!("{name} is built in: give the peer another name"));
    }
    if !command.contains("{port}") {
        return Err("the command must contain {port}, the port the server is to listen on".into());
    }
    Ok(Peer {
        name: name.to_string(),
        command: command.trim().to_string(),
    })
}

/// The contenders in running order: `--contenders`, or every built-in one with the peers
/// before ferrosocks. Each must be known and named once.
fn contenders(a: &PeersArgs) -> anyhow::Result<Vec<String>> {
    let list: Vec<String> = if a.contenders.is_empty() {
        let (last, built_in) = CONTENDERS.split_last().expect("not empty");
        built_in
            .iter()
            .map(|c| c.to_string())
            .chain(a.peer.iter().map(|p| p.name.clone()))
            .chain([last.to_string()])
            .collect()
    } else {
        a.contenders.clone()
    };
    for (i, c) in list.iter().enumerate() {
        if !CONTENDERS.contains(&c.as_str()) && !a.peer.iter().any(|p| &p.name == c) {
            bail!(
                "unknown contender {c:?} (built in: {}; others need --peer {c}=COMMAND)",
                CONTENDERS.join(", ")
            );
        }
        if list[..i].contains(c) {
            bail!("contender {c:?} is named twice");
        }
    }
    for (i, p) in a.peer.iter().enumerate() {
        if a.peer[..i].iter().any(|q| q.name == p.name) {
            bail!("--peer {} is given twice", p.name);
        }
        if !list.contains(&p.name) {
            bail!(
                "--peer {0} is not among --contenders: add it there, or drop the --peer",
                p.name
            );
        }
    }
    Ok(list)
}

/// Plain forwarders: no SOCKS, reached through `--forward`.
fn is_forwarder(contender: &str) -> bool {
    matches!(contender, "haproxy" | "nginx" | "bare-udp")
}

/// Whether `contender` can run `scenario`, and why not.
fn applies(contender: &str, scenario: &str) -> Result<(), &'static str> {
    match (contender, scenario) {
        ("haproxy", "throughput" | "iperf3" | "latency")
        | ("nginx", "throughput" | "iperf3" | "latency" | "udp")
        | ("bare-udp", "udp") => Ok(()),
        ("haproxy", _) => {
            Err("HAProxy runs as a plain TCP forwarder here: no SOCKS handshake, no UDP")
        }
        ("nginx", _) => Err("nginx runs as a plain forwarder here: no SOCKS handshake"),
        ("bare-udp", _) => Err("the bare forwarder relays UDP only, without SOCKS"),
        ("direct", "connrate-by-name") => Err("direct has no proxy to resolve the targets' name"),
        _ => Ok(()),
    }
}

/// The first of `n` consecutive loopback ports free for both TCP and UDP when probed.
/// They are looked for below the ephemeral range first: a port there is never handed to
/// an outgoing connection as its local port, which would keep a target or a forwarder
/// from binding it later in the run.
pub(super) fn port_block(n: u16) -> anyhow::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let free = |first: u16| {
        first.checked_add(n).is_some()
            && (first..first + n).all(|p| {
                let at = SocketAddr::new(LOOPBACK.ip(), p);
                // Both held at once: the check is for the pair.
                let tcp = std::net::TcpListener::bind(at);
                let udp = std::net::UdpSocket::bind(at);
                tcp.is_ok() && udp.is_ok()
            })
    };
    // Blocks handed out earlier in this run are not bound yet (a forwarder's targets
    // are bound by each measurement), so the search goes on from past the last one.
    static NEXT: AtomicU16 = AtomicU16::new(20_000);
    let start = NEXT.load(Ordering::Relaxed);
    let below = (start..ephemeral_low.saturating_sub(n)).step_by(usize::from(n.max(1)));
    for first in below {
        if free(first) {
            NEXT.store(first + n, Ordering::Relaxed);
            return Ok(first);
        }
    }
    // Above it, a block is only likely not to collide with an earlier one.
    for _ in 0..50 {
        let first = free_port()?;
        if free(first) {
            return Ok(first);
        }
    }
    bail!("found no {n} consecutive free loopback ports")
}

async fn start_proxy(
    kind: &str,
    a: &PeersArgs,
    ferro_bin: &Path,
    work: &Path,
    targets_port: Option<u16>,
) -> anyhow::Result<Proxy> {
    // Only a forwarder's configuration names the targets' ports.
    let targets = || targets_port.with_context(|| format!("{kind} needs the targets' ports"));
    let mut last_err = None;
    // A free port may be taken between the probe and the proxy's bind: try again.
    for _ in 0..3 {
        let port = if is_forwarder(kind) {
            port_block(TARGETS)?
        } else {
            free_port()?
        };
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let log = std::fs::File::create(work.join(format!("{kind}.log")))?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(a.proxy_cpu.to_string());
        match kind {
            "dante" => {
                let conf = work.join("danted.conf");
                std::fs::write(&conf, dante_conf(port))?;
                cmd.arg(&a.danted)
                    .arg("-f")
                    .arg(&conf)
                    .arg("-p")
                    .arg(work.join("danted.pid"))
                    .arg("-N")
                    .arg("1");
            }
            "microsocks" => {
                cmd.arg(&a.microsocks)
                    .arg("-i")
                    .arg("127.0.0.1")
                    .arg("-p")
                    .arg(port.to_string());
            }
            "haproxy" => {
                let conf = work.join("haproxy.cfg");
                std::fs::write(&conf, haproxy_conf(port, targets()?))?;
                cmd.arg(&a.haproxy).arg("-f").arg(&conf).arg("-db");
            }
            "nginx" => {
                let conf = work.join("nginx.conf");
                let module = a
                    .nginx_stream_module
                    .exists()
                    .then_some(&*a.nginx_stream_module);
                std::fs::write(&conf, nginx_conf(port, targets()?, module, work))?;
                // -p: nginx resolves its other paths (logs, temp) under the work folder.
                cmd.arg(&a.nginx)
                    .arg("-p")
                    .arg(work)
                    .arg("-c")
                    .arg(&conf)
                    .arg("-e")
                    .arg("stderr");
            }
            "bare-udp" => {
                cmd.arg(ferro_bin)
                    .args(["bench", "bare-udp-forwarder", "--listen"])
                    .arg(addr.to_string())
                    .arg("--to")
                    .arg(SocketAddr::new(LOOPBACK.ip(), targets()?).to_string());
            }
            "ferrosocks" => {
                cmd.arg(ferro_bin)
                    .arg("serve")
                    .arg("--listen")
                    .arg(addr.to_string())
                    .args(&a.serve_arg);
            }
            other => {
                let peer = a
                    .peer
                    .iter()
                    .find(|p| p.name == other)
                    .with_context(|| format!("unknown proxy {other}"))?;
                // Any shell command line (variables, `cd … &&`, a wrapper script): the
                // shell stays as the server's parent, and the idle case counts the RSS
                // the whole tree gains. Its own process group lets `stop_proxy` reach
                // whatever the command started.
                cmd.arg("sh")
                    .arg("-c")
                    .arg(peer.command.replace("{port}", &port.to_string()))
                    .process_group(0);
            }
        }
        // The built-in servers stay in this process group, so a Ctrl-C in the terminal
        // stops them too (a peer's group is stopped by the run's own signal handling).
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {kind}"))?;
        let pid = child.id().context("the proxy exited at once")?;
        let mut p = Proxy {
            kind: kind.to_string(),
            child,
            pid,
            addr,
            own_group: !CONTENDERS.contains(&kind),
        };
        match wait_ready(&mut p).await {
            Ok(()) => return Ok(p),
            Err(e) => {
                // Exited, yet its port answers (soon): it went to the background in a
                // session of its own, out of reach of `stop_proxy`. Starting it again
                // would leave one more behind.
                let mut backgrounded = false;
                if matches!(p.child.try_wait(), Ok(Some(_))) {
                    for _ in 0..20 {
                        if tokio::net::TcpStream::connect(addr).await.is_ok() {
                            backgrounded = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                stop_proxy(p).await;
                if backgrounded {
                    bail!(
                        "{kind} exited but something now listens on {addr}: the server went \
                         to the background and is still running there (stop it by hand); \
                         its command must keep it in the foreground"
                    );
                }
                last_err = Some(e);
            }
        }
    }
    let log = std::fs::read_to_string(work.join(format!("{kind}.log"))).unwrap_or_default();
    Err(last_err
        .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
        .context(format!(
            "{kind} did not start; its log ends:\n{}",
            &log[log.len().saturating_sub(2000)..]
        )))
}

/// Waits (15 s at most) until the proxy accepts connections.
async fn wait_ready(p: &mut Proxy) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = p.child.try_wait() {
            bail!("{} exited: {status}", p.kind);
        }
        if tokio::net::TcpStream::connect(p.addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{} does not accept on {} after 15 s", p.kind, p.addr)
}

/// SIGTERM by pid (Dante and nginx then stop their helpers), or to a peer's whole process
/// group; SIGKILL after 5 s.
async fn stop_proxy(mut p: Proxy) {
    // `kill -TERM -- -PGID` signals the group whose id is the shell's pid.
    let target = if p.own_group {
        format!("-{}", p.pid)
    } else {
        p.pid.to_string()
    };
    let kill = |signal: &str| {
        std::process::Command::new("kill")
            .args([signal, "--", &target])
            .stderr(Stdio::null())
            .status()
    };
    let _ = kill("-TERM");
    let stopped = tokio::time::timeout(Duration::from_secs(5), p.child.wait())
        .await
        .is_ok();
    if p.own_group {
        // The shell may be gone before what it started: give the group the same 5 s.
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_alive(p.pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if group_alive(p.pid) {
            let _ = kill("-KILL");
        }
    }
    if !stopped {
        let _ = p.child.kill().await;
    }
}

/// Whether a process of group `pgid` is still running (zombies waiting for a parent to
/// collect them do not count).
fn group_alive(pgid: u32) -> bool {
    super::tcp::processes()
        .map(|all| all.iter().any(|p| p.pgrp == pgid && p.state != "Z"))
        .unwrap_or(false)
}

/// Dante on loopback. As root it needs both privilege users; `client pass` admits the
/// TCP connection, `socks pass` the request, and UDP needs `udpassociate` and `udpreply`.
fn dante_conf(port: u16) -> String {
    format!(
        "logoutput: stderr
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
user.privileged: root
user.unprivileged: nobody
clientmethod: none
socksmethod: none
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}
socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect bind udpassociate bindreply udpreply }}
"
    )
}

/// HAProxy as a TCP forwarder, `listen` + N to `targets` + N, with kernel splicing where
/// it judges it pays (`splice-auto`) and its defaults otherwise.
/// `maxconn` bounds the descriptors it asks for, which must stay under the hard limit.
fn haproxy_conf(listen: u16, targets: u16) -> String {
    let mut conf = String::from(
        "global
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option splice-auto
",
    );
    for n in 0..TARGETS {
        let _ = write!(
            conf,
            "listen target{n}
    bind 127.0.0.1:{}
    server target{n} 127.0.0.1:{}
",
            listen + n,
            targets + n
        );
    }
    conf
}

/// nginx's stream module as a forwarder, `listen` + N to `targets` + N for TCP and
/// `listen` to `targets` for UDP, in the foreground with one worker process (every server
/// here gets one core), its defaults otherwise.
fn nginx_conf(listen: u16, targets: u16, module: Option<&Path>, work: &Path) -> String {
    let mut conf = String::new();
    if let Some(m) = module {
        let _ = writeln!(conf, "load_module {};", m.display());
    }
    let _ = write!(
        conf,
        "worker_processes 1;
daemon off;
pid {};
error_log stderr warn;
events {{ worker_connections 4096; }}
stream {{
    server {{ listen 127.0.0.1:{listen} udp; proxy_pass 127.0.0.1:{targets}; }}
",
        work.join("nginx.pid").display()
    );
    for n in 0..TARGETS {
        let _ = writeln!(
            conf,
            "    server {{ listen 127.0.0.1:{}; proxy_pass 127.0.0.1:{}; }}",
            listen + n,
            targets + n
        );
    }
    conf.push_str("}\n");
    conf
}

/// What the chart and JSON say about the machine.
fn machine() -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    m.insert(
        "cores",
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_default(),
    );
    if let Ok(cpu) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(name) = cpu
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        {
            m.insert("cpu", name.1.trim().to_string());
        }
    }
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        m.insert("kernel", k.trim().to_string());
    }
    // The generator's sockets (and Dante's and microsocks') use this; ferrosocks uses its
    // `local_congestion` (default cubic) on loopback, so a reader can tell the two apart.
    if let Ok(cc) = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control") {
        m.insert("tcp_congestion_control", cc.trim().to_string());
    }
    // Likewise for unsent data (`local_notsent_lowat`, default 16384, on ferrosocks' side).
    if let Ok(v) = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_notsent_lowat") {
        m.insert("tcp_notsent_lowat", v.trim().to_string());
    }
    if let Ok(mem) = std::fs::read_to_string("/proc/meminfo") {
        if let Some(l) = mem.lines().find(|l| l.starts_with("MemTotal")) {
            m.insert(
                "memory",
                l.trim_start_matches("MemTotal:").trim().to_string(),
            );
        }
    }
    if let Ok(out) = std::process::Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${Package} ${Version}\\n",
            "dante-server",
            "microsocks",
            "haproxy",
            "nginx",
            "libnginx-mod-stream",
            "iperf3",
            "proxychains4",
        ])
        .output()
    {
        m.insert(
            "peers",
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .replace('\n', ", "),
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_forwards_each_port_of_its_block_to_the_same_target() {
        let conf = haproxy_conf(42000, 43000);
        for n in 0..TARGETS {
            let bind = format!(
                "bind 127.0.0.1:{}\n    server target{n} 127.0.0.1:{}",
                42000 + n,
                43000 + n
            );
            assert!(conf.contains(&bind), "{conf}");
        }
        assert_eq!(conf.matches("listen target").count(), usize::from(TARGETS));
    }

    #[test]
    fn nginx_forwards_tcp_port_by_port_and_udp_to_the_echo() {
        let work = Path::new("/tmp/w");
        let conf = nginx_conf(42000, 43000, Some(Path::new("/m/stream.so")), work);
        assert!(conf.starts_with("load_module /m/stream.so;\n"), "{conf}");
        assert!(conf.contains("listen 127.0.0.1:42000 udp; proxy_pass 127.0.0.1:43000;"));
        for n in 0..TARGETS {
            let line = format!(
                "listen 127.0.0.1:{}; proxy_pass 127.0.0.1:{};",
                42000 + n,
                43000 + n
            );
            assert!(conf.contains(&line), "{conf}");
        }
        assert!(!nginx_conf(1, 2, None, work).contains("load_module"));
    }

    #[test]
    fn a_fixed_rate_direct_could_not_keep_is_reported() {
        let run = |rep: usize, contender: &str, loss: f64| Raw {
            rep,
            case: "udp rate".into(),
            contender: contender.into(),
            report: Some(RunReport::new(
                "direct".into(),
                vec![
                    report::Record::new(
                        "udp 512 B at 150000/s",
                        "datagrams/s",
                        1e5,
                        report::Better::Higher,
                    ),
                    report::Record::new(
                        "udp 512 B at 150000/s",
                        "loss %",
                        loss,
                        report::Better::Lower,
                    ),
                ],
            )),
            error: None,
            cpu_busy_percent: None,
        };
        // A relay's loss is what the row is for; direct's is not.
        let clean = [run(0, "direct", 0.0), run(0, "ferrosocks", 14.4)];
        assert!(direct_losses_at_fixed_rate(&clean, 150_000).is_empty());
        let lossy = [
            run(0, "direct", 0.0),
            run(1, "direct", 8.3),
            run(2, "direct", 4.13),
            run(1, "ferrosocks", 20.0),
        ];
        let warnings = direct_losses_at_fixed_rate(&lossy, 150_000);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let w = &warnings[0];
        assert!(w.contains("150000/s in 2 of the repetitions"), "{w}");
        assert!(w.contains("up to 8.30 % in repetition 2"), "{w}");
        assert!(w.contains("--udp-rate"), "{w}");
    }

    #[test]
    fn port_blocks_handed_out_in_one_run_do_not_overlap() {
        // Nothing is bound between the calls, as in a run before the first measurement.
        let a = port_block(TARGETS).unwrap();
        let b = port_block(TARGETS).unwrap();
        assert!(a + TARGETS <= b || b + TARGETS <= a, "{a} and {b}");
    }

    fn args(extra: &[&str]) -> PeersArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            peers: PeersArgs,
        }
        let mut argv = vec!["peers"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.peers).unwrap()
    }

    #[test]
    fn peers_join_before_ferrosocks_unless_the_order_is_given() {
        let a = args(&[
            "--peer",
            "hev=./hev.sh {port}",
            "--peer",
            "g_2=gost -L :{port}",
        ]);
        assert_eq!(
            a.peer[0],
            Peer {
                name: "hev".into(),
                command: "./hev.sh {port}".into()
            }
        );
        assert_eq!(
            contenders(&a).unwrap(),
            [
                "direct",
                "dante",
                "microsocks",
                "haproxy",
                "nginx",
                "bare-udp",
                "hev",
                "g_2",
                "ferrosocks"
            ]
        );
        assert_eq!(contenders(&args(&[])).unwrap(), CONTENDERS);
        let a = args(&["--peer", "hev=x {port}", "--contenders", "hev,direct"]);
        assert_eq!(contenders(&a).unwrap(), ["hev", "direct"]);

        let unknown = contenders(&args(&["--contenders", "direct,hev"])).unwrap_err();
        assert!(
            unknown.to_string().contains("--peer hev=COMMAND"),
            "{unknown}"
        );
        let twice = args(&["--peer", "a=x {port}", "--peer", "a=y {port}"]);
        assert!(contenders(&twice).is_err());
        let twice = [
            "--peer",
            "a=x {port}",
            "--peer",
            "a=y {port}",
            "--contenders",
            "a",
        ];
        assert!(contenders(&args(&twice)).is_err());
        let unused = args(&["--peer", "a=x {port}", "--contenders", "direct,ferrosocks"]);
        assert!(
            contenders(&unused).is_err(),
            "a --peer left out is a mistake"
        );
        assert!(contenders(&args(&["--contenders", "direct,direct"])).is_err());

        for bad in [
            "hev",
            "=x {port}",
            "h v=x {port}",
            "dante=x {port}",
            "hev=./hev.sh",
        ] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn busy_shares_come_from_proc_stat_per_cpu() {
        let stat = |cpu0: (u64, u64), cpu1: (u64, u64)| {
            format!(
                "cpu  1 2 3 4 5 6 7 8 0 0\n\
                 cpu0 {} 0 50 {} 0 0 0 0 0 0\n\
                 cpu1 {} 0 0 {} 7 0 0 9 0 0\n\
                 intr 12345\n",
                cpu0.0, cpu0.1, cpu1.0, cpu1.1
            )
        };
        let before = parse_cpu_times(&stat((100, 850), (0, 0)));
        assert_eq!(before[&0], (150, 1000));
        assert_eq!(
            before[&1],
            (0, 7),
            "iowait counts as idle, steal not at all"
        );
        assert_eq!(before.len(), 2, "the all-CPU line is not a CPU");
        let after = parse_cpu_times(&stat((190, 860), (30, 70)));
        let mut a = args(&[]);
        (a.generator_cpu, a.proxy_cpu) = (1, 0);
        let busy = cpu_busy(&before, &after, &a).unwrap();
        assert_eq!((busy.generator, busy.proxy), (30.0, 90.0));
        assert!(cpu_busy(&before, &before, &a).is_none(), "no time passed");
        a.proxy_cpu = 7;
        assert!(cpu_busy(&before, &after, &a).is_none(), "no such CPU");

        let raw = |case: &str, contender: &str, g: f64, error: Option<&str>| Raw {
            rep: 0,
            case: case.into(),
            contender: contender.into(),
            report: None,
            error: error.map(String::from),
            cpu_busy_percent: Some(CpuBusy {
                generator: g,
                proxy: 100.0 - g,
            }),
        };
        let names = ["direct", "other", "ferrosocks"].map(String::from);
        let summary = cpu_summary(
            &[
                raw("udp", "direct", 99.0, None),
                raw("udp", "ferrosocks", 98.0, None),
                raw("udp", "direct", 97.0, None),
                raw("udp", "ferrosocks", 90.0, Some("failed")),
                raw("udp", "direct", 100.0, None),
            ],
            &names,
        );
        assert_eq!(summary.len(), 2);
        assert_eq!(
            (summary[0].contender.as_str(), summary[0].generator_median),
            ("direct", 99.0)
        );
        assert_eq!(summary[0].proxy_median, 1.0);
        assert_eq!(
            summary[1].generator_median, 98.0,
            "failed runs do not count"
        );

        // A contender that failed its first repetition still takes its place in its case.
        let summary = cpu_summary(
            &[
                raw("udp", "direct", 99.0, None),
                raw("udp", "ferrosocks", 90.0, Some("failed")),
                raw("udp", "other", 90.0, None),
                raw("latency", "direct", 50.0, None),
                raw("udp", "ferrosocks", 98.0, None),
            ],
            &names,
        );
        let order: Vec<_> = summary
            .iter()
            .map(|c| (c.case.as_str(), c.contender.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("udp", "direct"),
                ("udp", "other"),
                ("udp", "ferrosocks"),
                ("latency", "direct")
            ]
        );
    }

    #[test]
    fn each_contender_runs_only_what_it_can() {
        for scenario in ["throughput", "iperf3", "latency"] {
            assert!(applies("haproxy", scenario).is_ok());
            assert!(applies("nginx", scenario).is_ok());
        }
        assert!(applies("nginx", "udp").is_ok());
        assert!(applies("haproxy", "udp").is_err());
        for scenario in ["connrate", "connrate-by-name", "idle"] {
            assert!(applies("haproxy", scenario).is_err());
            assert!(applies("nginx", scenario).is_err());
        }
        assert!(applies("bare-udp", "udp").is_ok());
        for scenario in SCENARIOS.into_iter().filter(|s| *s != "udp") {
            assert!(applies("bare-udp", scenario).is_err());
        }
        for scenario in SCENARIOS {
            assert!(applies("ferrosocks", scenario).is_ok());
            assert!(applies("dante", scenario).is_ok());
            assert!(
                applies("hev", scenario).is_ok(),
                "a --peer is a SOCKS server"
            );
            assert_eq!(
                applies("direct", scenario).is_ok(),
                scenario != "connrate-by-name"
            );
        }
        let names = cases(&args(&["--scenarios", "connrate-by-name"]), 1);
        let [case] = &names[..] else {
            panic!("one case")
        };
        let Load::Generator(load) = &case.load else {
            panic!("by the generator")
        };
        assert!(load.windows(2).any(|w| w == ["--target-name", "localhost"]));
        let named = cases(
            &args(&[
                "--scenarios",
                "connrate-by-name",
                "--target-name",
                "bench-target",
            ]),
            1,
        );
        let Load::Generator(load) = &named[0].load else {
            panic!("by the generator")
        };
        assert!(load
            .windows(2)
            .any(|w| w == ["--target-name", "bench-target"]));
        // Every case can be selected, and every selectable scenario has a case.
        let all = cases(&args(&[]), 1);
        let mut scenarios: Vec<&str> = all.iter().map(|c| c.scenario).collect();
        scenarios.dedup();
        assert_eq!(scenarios, SCENARIOS);
    }
}
