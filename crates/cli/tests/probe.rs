//! `ferrosocks probe` against three real servers: ours (in-process), Dante (`danted`) and
//! microsocks, each started here on a free loopback port. Every assertion states what that
//! server really does (found by running it, and cross-checked with raw sockets), so a
//! wrong verdict of the probe in either direction fails the test. A missing daemon fails
//! the test: `scripts/test-all` installs `dante-server` and `microsocks`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferrosocks_proto::Password;
use ferrosocks_server::{AuthMethod, Credential, Users};
use ferrosocks_testkit::{daemons, spawn_server, test_config};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferrosocks");
/// A whole probe run: at most a few step timeouts (5 s) and close waits (3 s) in sequence.
const PROBE_DEADLINE: Duration = Duration::from_secs(90);

/// Runs the probe binary; returns (exit code, stdout, stderr).
async fn run_probe(args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("probe")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PROBE_DEADLINE, cmd.output())
        .await
        .expect("probe finished within its deadline")
        .expect("probe binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The probe's JSON report as `id -> (status, value, detail)`.
type Findings = BTreeMap<String, (String, String, String)>;

async fn probe_json(url: &str, extra: &[&str]) -> (Findings, String) {
    let mut args = vec!["--proxy", url, "--json"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run_probe(&args).await;
    assert_eq!(
        code, 0,
        "probe exit code; stderr: {stderr}\nstdout: {stdout}"
    );
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("probe printed JSON ({e}): {stdout}"));
    let mut findings = Findings::new();
    for c in report["checks"].as_array().expect("checks array") {
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
        findings.insert(s("id"), (s("status"), s("value"), s("detail")));
    }
    (findings, stdout)
}

/// Asserts the status of every check (the list must name every check the probe ran) and
/// the value of those given one.
fn assert_findings(who: &str, got: &Findings, want: &[(&str, &str, Option<&str>)], raw: &str) {
    let ids: Vec<&str> = want.iter().map(|w| w.0).collect();
    let got_ids: Vec<&str> = got.keys().map(String::as_str).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(got_ids, sorted, "{who}: the set of checks\n{raw}");
    let mut wrong = Vec::new();
    for (id, status, value) in want {
        let (s, v, d) = &got[*id];
        if s != status || value.is_some_and(|value| v != value) {
            wrong.push(format!(
                "{id}: got {s} [{v}] ({d}); want {status}{}",
                value.map(|v| format!(" [{v}]")).unwrap_or_default()
            ));
        }
    }
    assert!(wrong.is_empty(), "{who}:\n{}\n\n{raw}", wrong.join("\n"));
}

// --- ours --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_without_auth_passes_everything_it_offers() {
    let server = spawn_server(test_config()).await;
    let url = format!("socks5://{}", server.addr);
    let (got, raw) = probe_json(&url, &[]).await;
    assert_findings(
        "ferrosocks (no auth)",
        &got,
        &[
            ("methods.no_auth", "pass", Some("00")),
            ("methods.user_pass", "unsupported", Some("ff")),
            ("methods.gssapi", "unsupported", Some("ff")),
            ("methods.both", "pass", Some("00")),
            ("methods.none_acceptable", "pass", Some("ff closes")),
            ("auth.userpass", "n/a", None),
            ("auth.wrong_password", "n/a", None),
            ("connect.ipv4", "pass", None),
            ("connect.bnd", "pass", None),
            ("connect.ipv6", "pass", None),
            ("connect.domain", "pass", None),
            ("connect.refused", "pass", Some("05 closes")),
            ("malformed.version", "pass", Some("closes")),
            ("malformed.command", "pass", Some("07 closes")),
            ("malformed.atyp", "pass", Some("08 closes")),
            ("pipelining", "pass", Some("works")),
            ("bind.announce", "pass", None),
            ("bind.peer", "pass", None),
            ("bind.data", "pass", None),
            ("udp.associate", "pass", None),
            ("udp.echo", "pass", None),
            ("udp.multi", "pass", None),
            ("udp.frag", "pass", Some("reassembles")),
            ("udp.tcp_close", "pass", Some("ends")),
        ],
        &raw,
    );
    // Announced addresses are the real loopback ones, never 0.0.0.0.
    assert!(got["bind.announce"].1.starts_with("127.0.0.1:"), "{raw}");
    assert!(got["udp.associate"].1.starts_with("127.0.0.1:"), "{raw}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_with_userpass_passes_auth_and_every_command() {
    let mut config = test_config();
    let mut users = Users::new();
    users.insert("alice", Credential::Plain(Password::new("s3cret")));
    config.users = users;
    config.auth_methods = vec![AuthMethod::UserPass];
    let server = spawn_server(config).await;
    let url = format!("socks5://{}", server.addr);
    let (got, raw) = probe_json(&url, &["--user", "alice", "--pass", "s3cret"]).await;
    assert_findings(
        "ferrosocks (user/pass)",
        &got,
        &[
            ("methods.no_auth", "unsupported", Some("ff")),
            ("methods.user_pass", "pass", Some("02")),
            ("methods.gssapi", "unsupported", Some("ff")),
            ("methods.both", "pass", Some("02")),
            ("methods.none_acceptable", "pass", Some("ff closes")),
            ("auth.userpass", "pass", Some("00")),
            ("auth.wrong_password", "pass", Some("01 closes")),
            ("connect.ipv4", "pass", None),
            ("connect.bnd", "pass", None),
            ("connect.ipv6", "pass", None),
            ("connect.domain", "pass", None),
            ("connect.refused", "pass", Some("05 closes")),
            ("malformed.version", "pass", Some("closes")),
            ("malformed.command", "pass", Some("07 closes")),
            ("malformed.atyp", "pass", Some("08 closes")),
            ("pipelining", "pass", Some("works")),
            ("bind.announce", "pass", None),
            ("bind.peer", "pass", None),
            ("bind.data", "pass", None),
            ("udp.associate", "pass", None),
            ("udp.echo", "pass", None),
            ("udp.multi", "pass", None),
            ("udp.frag", "pass", Some("reassembles")),
            ("udp.tcp_close", "pass", Some("ends")),
        ],
        &raw,
    );

    // Credentials in the URL work the same; wrong ones make the session checks n/a, and
    // the probe still runs (exit 0) and says why.
    let bad = format!("socks5://alice:wrong@{}", server.addr);
    let (got, raw) = probe_json(&bad, &[]).await;
    assert_eq!(got["auth.userpass"].0, "fail", "{raw}");
    assert_eq!(got["auth.wrong_password"].0, "pass", "{raw}");
    assert_eq!(got["connect.ipv4"].0, "n/a", "{raw}");
    assert!(got["connect.ipv4"].2.contains("rejected"), "{raw}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_output_and_exit_codes() {
    let server = spawn_server(test_config()).await;
    let url = format!("socks5://{}", server.addr);
    let (code, table, stderr) = run_probe(&["--proxy", &url]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        table.starts_with(&format!("probe of {url} ({})", server.addr)),
        "{table}"
    );
    assert!(table.contains("CHECK"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("udp.frag ")
            && l.contains(" pass ")
            && l.contains("reassembles")),
        "{table}"
    );
    assert!(table.contains("0 fail,"), "{table}");
    server.shutdown().await;

    // Nothing listening: exit 1 with a message, no report.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, stdout, stderr) =
        run_probe(&["--proxy", &format!("socks5://127.0.0.1:{port}")]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");

    // Usage errors: exit 2.
    for args in [
        &["--proxy", "http://127.0.0.1:1080"][..],
        &[][..],
        &["--proxy", "socks5://127.0.0.1:1080", "--user", "a"][..],
    ] {
        let (code, _, stderr) = run_probe(args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }

    let (code, help, _) = run_probe(&["--help"]).await;
    assert_eq!(code, 0);
    assert!(
        help.contains("Examples:") && help.contains("Exit codes:"),
        "{help}"
    );
}

// --- other servers ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dante_report_matches_what_dante_does() {
    let dante = daemons::dante();
    let url = format!("socks5://{}", dante.addr);
    let (got, raw) = probe_json(&url, &[]).await;
    let raw = format!("{raw}\n{}", dante.log());
    // Dante 1.4: CONNECT, BIND and UDP all work and announce real addresses; it reads
    // pipelined bytes correctly. Deviations, cross-checked with raw sockets: an unknown
    // command or address type gets no reply at all (the connection just closes), and
    // fragmented UDP datagrams are dropped (allowed: it does not implement §7 FRAG).
    assert_findings(
        "dante",
        &got,
        &[
            ("methods.no_auth", "pass", Some("00")),
            ("methods.user_pass", "unsupported", Some("ff")),
            ("methods.gssapi", "unsupported", Some("ff")),
            ("methods.both", "pass", Some("00")),
            ("methods.none_acceptable", "pass", Some("ff closes")),
            ("auth.userpass", "n/a", None),
            ("auth.wrong_password", "n/a", None),
            ("connect.ipv4", "pass", None),
            ("connect.bnd", "pass", None),
            ("connect.ipv6", "pass", None),
            ("connect.domain", "pass", None),
            ("connect.refused", "pass", Some("05 closes")),
            ("malformed.version", "pass", Some("closes")),
            ("malformed.command", "fail", Some("none closes")),
            ("malformed.atyp", "fail", Some("none closes")),
            ("pipelining", "pass", Some("works")),
            ("bind.announce", "pass", None),
            ("bind.peer", "pass", None),
            ("bind.data", "pass", None),
            ("udp.associate", "pass", None),
            ("udp.echo", "pass", None),
            ("udp.multi", "pass", None),
            ("udp.frag", "unsupported", Some("drops")),
            ("udp.tcp_close", "pass", Some("ends")),
        ],
        &raw,
    );
    assert!(got["bind.announce"].1.starts_with("127.0.0.1:"), "{raw}");
    assert!(got["udp.associate"].1.starts_with("127.0.0.1:"), "{raw}");
}

/// What microsocks does with any authentication setting: CONNECT everywhere (BND
/// 0.0.0.0:0), no BIND, no UDP, `05 FF` to a wrong version, and pipelined bytes lost
/// (one `recv` per handshake state, see STYLE.md anti-pattern 1).
const MICROSOCKS_COMMON: &[(&str, &str, Option<&str>)] = &[
    ("methods.gssapi", "unsupported", Some("ff")),
    ("methods.none_acceptable", "pass", Some("ff closes")),
    ("connect.ipv4", "pass", Some("0.0.0.0:0")),
    ("connect.bnd", "fail", Some("0.0.0.0:0")),
    ("connect.ipv6", "pass", None),
    ("connect.domain", "pass", None),
    ("connect.refused", "pass", Some("05 closes")),
    ("malformed.version", "fail", Some("answers 05 ff closes")),
    ("malformed.command", "pass", Some("07 closes")),
    ("malformed.atyp", "pass", Some("08 closes")),
    ("pipelining", "fail", Some("broken")),
    ("bind.announce", "unsupported", Some("07")),
    ("bind.peer", "n/a", None),
    ("bind.data", "n/a", None),
    ("udp.associate", "unsupported", Some("07")),
    ("udp.echo", "n/a", None),
    ("udp.multi", "n/a", None),
    ("udp.frag", "n/a", None),
    ("udp.tcp_close", "n/a", None),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsocks_report_matches_what_microsocks_does() {
    let micro = daemons::microsocks(None);
    let url = format!("socks5://{}", micro.addr);
    let (got, raw) = probe_json(&url, &[]).await;
    let mut want = MICROSOCKS_COMMON.to_vec();
    want.extend([
        ("methods.no_auth", "pass", Some("00")),
        ("methods.user_pass", "unsupported", Some("ff")),
        ("methods.both", "pass", Some("00")),
        ("auth.userpass", "n/a", None),
        ("auth.wrong_password", "n/a", None),
    ]);
    assert_findings("microsocks", &got, &want, &raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsocks_with_password_report_matches() {
    let micro = daemons::microsocks(Some(("alice", "s3cret")));
    let url = format!("socks5://{}", micro.addr);
    let (got, raw) = probe_json(&url, &["--user", "alice", "--pass", "s3cret"]).await;
    let mut want = MICROSOCKS_COMMON.to_vec();
    want.extend([
        ("methods.no_auth", "unsupported", Some("ff")),
        ("methods.user_pass", "pass", Some("02")),
        ("methods.both", "pass", Some("02")),
        ("auth.userpass", "pass", Some("00")),
        // microsocks answers a wrong password with status 02 (any non-zero is a failure).
        ("auth.wrong_password", "pass", Some("02 closes")),
    ]);
    assert_findings("microsocks (user/pass)", &got, &want, &raw);
}

/// A listener that accepts and never says a word: every wait is bounded, the probe still
/// exits 0 (it ran), the method checks fail with the timeout, and the session checks are
/// not retried one timeout after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_is_reported_within_bounded_time() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let url = format!("socks5://{addr}");
    let started = Instant::now();
    let (got, raw) = probe_json(&url, &["--timeout", "1s", "--close-wait", "1s"]).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}\n{raw}");
    assert_eq!(got["methods.no_auth"].0, "fail", "{raw}");
    assert!(
        got["methods.no_auth"]
            .2
            .contains("no method selection within 1s"),
        "{raw}"
    );
    assert_eq!(got["malformed.version"].0, "fail", "{raw}");
    assert_eq!(got["malformed.version"].1, "stays open", "{raw}");
    for id in [
        "connect.ipv4",
        "bind.announce",
        "udp.associate",
        "pipelining",
    ] {
        assert_eq!(got[id].0, "n/a", "{id}\n{raw}");
    }
    holder.abort();
}
