//! Runs the built binary: check-config diagnostics, serve on port 0, exit codes, signals,
//! running out of file descriptors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferrosocks");

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrosocks-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A running `ferrosocks serve`, killed on drop.
struct Served {
    child: Child,
    addr: SocketAddr,
    /// The stderr lines up to and including the one with the listen address.
    startup: Vec<String>,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Served {
    /// All the server wrote to stdout (the access log), once it has exited.
    fn stdout_to_end(&mut self) -> String {
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        stdout
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(shell_prefix: &str, args: &str) -> Served {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("{shell_prefix} exec {BIN} serve {args}"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut startup = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("server printed its listen address");
        let addr = line
            .split("listening on ")
            .nth(1)
            .map(|rest| rest.trim().parse().unwrap());
        startup.push(line);
        if let Some(addr) = addr {
            break addr;
        }
    };
    Served {
        child,
        addr,
        startup,
        stderr: rx,
    }
}

fn socks_connect(proxy: SocketAddr, target: SocketAddr) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let mut s = TcpStream::connect(proxy)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let SocketAddr::V4(t) = target else {
        panic!("ipv4 only here")
    };
    let mut req = vec![5, 1, 0, 5, 1, 0, 1];
    req.extend(t.ip().octets());
    req.extend(t.port().to_be_bytes());
    s.write_all(&req)?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    Ok((s, head.to_vec()))
}

/// Runs `ferrosocks check-config FILE`.
fn check_config(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn check_config_accepts_the_example_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ferrosocks.example.toml");
    let out = Command::new(BIN)
        .args(["check-config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn check_config_points_at_the_bad_line_and_exits_2() {
    let path = temp_file(
        "bad.toml",
        "[server]\nlisten = [\"127.0.0.1:1080\"]\n\n[auth]\nmethods = [\"none\", \"kerberos\"]\n",
    );
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5:", path.display())), "{err}");
    assert!(err.contains("kerberos"), "{err}");
}

/// `check-config` checks the access log's path without opening it: it creates no file,
/// does not wait for a FIFO's reader, and rejects a path whose directory is missing.
#[test]
fn check_config_checks_the_access_log_without_opening_it() {
    let config = |access: &std::path::Path| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:1080\"]\n\n[log]\naccess = \"{}\"\n",
            access.display()
        )
    };
    let new_log = std::env::temp_dir()
        .join(format!("ferrosocks-cli-{}", std::process::id()))
        .join("never-created.log");
    let _ = std::fs::remove_file(&new_log);
    let out = check_config(&temp_file("new-log.toml", &config(&new_log)));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!new_log.exists(), "check-config created the access log");

    let readerless = fifo("check-config.fifo");
    let out = check_config(&temp_file("fifo-log.toml", &config(&readerless)));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    std::fs::remove_file(&readerless).unwrap();

    let out = check_config(&temp_file(
        "missing-dir.toml",
        &config(std::path::Path::new(
            "/nonexistent-ferrosocks-dir/access.log",
        )),
    ));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no directory /nonexistent-ferrosocks-dir"),
        "{err}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn check_config_warns_about_a_congestion_control_this_host_lacks() {
    // Well formed, so the file is valid (exit 0), but no kernel has it.
    let path = temp_file("cc.toml", "[server]\nlocal_congestion = \"nosuchcc\"\n");
    let out = check_config(&path);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: local_congestion \"nosuchcc\" is not usable"),
        "{err}"
    );
    // The built-in one passes without a word.
    let path = temp_file("cc-ok.toml", "[server]\nlocal_congestion = \"reno\"\n");
    let out = check_config(&path);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for the child to exit (at most 10 s) and returns its exit code (`None`: killed by
/// a signal).
fn exit_code_within_10s(served: &mut Served) -> Option<i32> {
    exit_code_within(served, Duration::from_secs(10))
}

fn exit_code_within(served: &mut Served, limit: Duration) -> Option<i32> {
    wait_within(&mut served.child, limit)
        .expect("server did not exit")
        .code()
}

/// The child's exit status, or `None` if it is still running after `limit`.
fn wait_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send_signal(served: &Served, signal: &str) {
    let pid = served.child.id().to_string();
    assert!(Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
}

/// A signal sent the moment the server says where it listens finds its handler: SIGHUP
/// reloads instead of killing, SIGTERM drains and exits 0. (The handlers were once
/// registered only after the listeners were running, and a quick SIGTERM killed the
/// process with the default action.)
#[test]
fn signals_sent_right_after_start_are_handled() {
    for _ in 0..5 {
        let mut served = serve("", "--listen 127.0.0.1:0");
        send_signal(&served, "-HUP");
        send_signal(&served, "-TERM");
        assert_eq!(exit_code_within_10s(&mut served), Some(0));
    }
}

#[test]
fn serve_refuses_an_open_proxy_and_names_the_flag() {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-open-proxy"), "{err}");
}

/// A timeout or cache time too long for the clock is refused with exit code 2 (the server
/// used to start, and a session computing its deadline panicked), from the command line
/// and from the file.
#[test]
fn durations_beyond_a_century_are_refused() {
    let (code, err) = serve_refusing(&[
        "--listen",
        "127.0.0.1:0",
        "--connect-timeout",
        "500000000000years",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--connect-timeout") && err.contains("100 years"),
        "{err}"
    );
    // The client commands' durations are bounded the same way (a deadline beyond the
    // clock panicked there too).
    for args in [
        &["udp", "--wait", "500000000000years", "127.0.0.1:9"][..],
        &[
            "bench",
            "connrate",
            "--direct",
            "--duration",
            "500000000000years",
        ],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("100 years"), "{args:?}: {err}");
    }

    let path = temp_file(
        "long-cache.toml",
        "[server]\nlisten = [\"127.0.0.1:1080\"]\nname_cache = \"500000000000y\"\n",
    );
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("name_cache"), "{err}");
    let century = temp_file(
        "century.toml",
        "[server]\nlisten = [\"127.0.0.1:1080\"]\nidle_timeout = \"100years\"\nname_cache = \"100y\"\n",
    );
    assert_eq!(check_config(&century).status.code(), Some(0));
}

/// A limit is the size of a semaphore: zero or more than one holds is refused with exit
/// code 2 (a huge one passed `check-config` and made `serve` panic at start).
#[test]
fn limits_beyond_a_semaphore_are_refused() {
    for (setting, value) in [
        ("max_connections", "9223372036854775807"),
        ("max_handshakes", "0"),
        ("max_udp_associations", "2305843009213693952"),
    ] {
        let path = temp_file(
            &format!("{setting}.toml"),
            &format!("[server]\nlisten = [\"127.0.0.1:1080\"]\n{setting} = {value}\n"),
        );
        let out = check_config(&path);
        assert_eq!(out.status.code(), Some(2), "{setting}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(setting) && err.contains("out of range"),
            "{err}"
        );
    }
}

/// What `serve` could not run, or would run uselessly, `check-config` refuses (each of
/// these passed it before).
#[test]
fn check_config_refuses_what_serve_could_not_run() {
    for (name, body, says) in [
        ("empty-log", "[log]\naccess = \"\"\n", "empty path"),
        (
            "twice",
            "[server]\nlisten = [\"127.0.0.1:1080\", \"127.0.0.1:1080\"]\n",
            "overlap",
        ),
        (
            "zero-idle",
            "[server]\nidle_timeout = \"0s\"\n",
            "idle_timeout",
        ),
        (
            "star",
            "[[rule]]\naction = \"deny\"\nto = [\"*\"]\n",
            "leave `to` out",
        ),
    ] {
        let out = check_config(&temp_file(&format!("{name}.toml"), body));
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{name}: {err}");
    }
}

#[test]
fn serve_relays_and_exits_0_on_sigterm() {
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = target.accept() {
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        }
    });
    let mut served = serve("", "--listen 127.0.0.1:0 --access-log-format json");
    let (mut s, head) = socks_connect(served.addr, target_addr).unwrap();
    assert_eq!(&head[..4], &[5, 0, 5, 0]);
    s.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    drop(s);

    let pid = served.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let stdout = served.stdout_to_end();
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["command"], "CONNECT");
    assert_eq!(line["rep"], 0);
    assert_eq!(line["bytes_up"], 5);
}

/// A connection still in its handshake when the drain time ends has no access-log line
/// to write; the server says how many it closed that way instead of dropping them
/// silently, and still exits 0.
#[test]
fn handshakes_cut_off_by_the_end_of_the_drain_are_counted() {
    let mut served = serve(
        "",
        "--listen 127.0.0.1:0 --drain-timeout 100ms --handshake-timeout 60s",
    );
    let mut client = TcpStream::connect(served.addr).unwrap();
    // Half a greeting: the session waits for the rest.
    client.write_all(&[5]).unwrap();
    // Accepted once the server has started it: the listener logs nothing per connection,
    // so give the accept loop a moment.
    std::thread::sleep(Duration::from_millis(200));
    send_signal(&served, "-TERM");
    wait_for_stderr(&served, "closed without an access-log line");
    assert_eq!(exit_code_within_10s(&mut served), Some(0));
    drop(client);
}

/// A session that gives a failure reply has written its access-log line, then lingers up
/// to 2 s for its client to close, which the shutdown does not wait for: it must not be
/// counted among the sessions closed without a line. Here the request is completed after
/// the drain is over (so it gets REP 01) and the client then stays silent.
#[test]
fn a_session_lingering_after_its_logged_reply_is_not_counted_as_unlogged() {
    let mut served = serve(
        "",
        "--listen 127.0.0.1:0 --drain-timeout 100ms --access-log-format json",
    );
    let mut client = TcpStream::connect(served.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Half a greeting: the session waits for the rest.
    client.write_all(&[5]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    send_signal(&served, "-TERM");
    wait_for_stderr(&served, "drain time");
    // The rest of the greeting and a CONNECT, after the drain: REP 01. Late enough that
    // the session's linger outlasts the shutdown's last 2 s.
    std::thread::sleep(Duration::from_millis(300));
    client
        .write_all(&[1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 9])
        .unwrap();
    let mut replies = [0u8; 12];
    client.read_exact(&mut replies).unwrap();
    assert_eq!(&replies[..4], &[5, 0, 5, 1]);
    assert_eq!(exit_code_within_10s(&mut served), Some(0));
    // Every line: the reader ends at the exited process's end of file.
    let stderr: Vec<String> = served.stderr.iter().collect();
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains("closed without an access-log line")),
        "{stderr:?}"
    );
    let stdout = served.stdout_to_end();
    assert!(stdout.contains("\"rep\":1"), "{stdout}");
    drop(client);
}

/// A second SIGTERM or SIGINT during the drain closes the open tunnels at once (each with
/// its access-log line) instead of waiting out the drain time, and the exit is still 0.
#[test]
fn a_second_signal_ends_the_drain_at_once() {
    for (first, second) in [("-TERM", "-INT"), ("-INT", "-INT")] {
        let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target_addr = target.local_addr().unwrap();
        // Holds its end open until the server closes the tunnel.
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = target.accept() {
                let _ = s.read_to_end(&mut Vec::new());
            }
        });
        let mut served = serve(
            "",
            "--listen 127.0.0.1:0 --access-log-format json --drain-timeout 10min",
        );
        let (mut tunnel, head) = socks_connect(served.addr, target_addr).unwrap();
        assert_eq!(&head[..4], &[5, 0, 5, 0]);
        send_signal(&served, first);
        wait_for_stderr(&served, "draining sessions");
        let started = Instant::now();
        send_signal(&served, second);
        wait_for_stderr(&served, "received again");
        // The tunnel is closed by the server, long before the drain time.
        tunnel
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(tunnel.read(&mut [0u8; 1]).unwrap(), 0, "{first} {second}");
        assert_eq!(
            exit_code_within_10s(&mut served),
            Some(0),
            "{first} {second}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let stdout = served.stdout_to_end();
        let line: serde_json::Value =
            serde_json::from_str(stdout.lines().next().expect("the tunnel's line")).unwrap();
        assert_eq!(line["end"], "server shutdown", "{line}");
    }
}

/// A target that closes every connection at once: each session through it is one
/// access-log line and nothing else.
fn closing_target() -> SocketAddr {
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in target.incoming() {
            drop(s);
        }
    });
    target_addr
}

/// Runs `count` sessions through the server to `target`, each to its close.
fn sessions(served: &Served, target: SocketAddr, count: usize) {
    for i in 0..count {
        let (mut s, head) =
            socks_connect(served.addr, target).unwrap_or_else(|e| panic!("session {i}: {e}"));
        assert_eq!(&head[..4], &[5, 0, 5, 0], "session {i}");
        s.read_to_end(&mut Vec::new())
            .unwrap_or_else(|e| panic!("session {i} not closed: {e}"));
    }
}

/// A reader that stops reading the access log (here: nobody reads the stdout pipe, which
/// holds 64 KiB) stalls neither the sessions nor the exit. The log used to be written by
/// the worker threads themselves, so the first full pipe froze every tunnel.
#[test]
fn a_stalled_access_log_reader_stalls_neither_sessions_nor_exit() {
    let target = closing_target();
    let mut served = serve("", "--listen 127.0.0.1:0");
    // ~200 bytes per line: 2000 sessions write several times what the pipe holds.
    sessions(&served, target, 2000);
    send_signal(&served, "-TERM");
    assert_eq!(exit_code_within_10s(&mut served), Some(0));
    let warned = std::iter::from_fn(|| served.stderr.recv_timeout(Duration::from_secs(10)).ok())
        .any(|l| l.contains("took no lines"));
    assert!(warned, "the lost lines were not reported");
    let stdout = served.stdout_to_end();
    let first = stdout.lines().next().expect("some lines reached the pipe");
    assert!(first.contains("cmd=CONNECT"), "{first}");
}

/// Log rotation: after the file is moved away, SIGHUP makes the server write to a new file
/// of the same name; the lines of earlier sessions stay in the moved file.
#[test]
fn sighup_reopens_the_access_log_file() {
    let target = closing_target();
    let log = temp_file("rotate-access.log", "");
    let rotated = log.with_extension("log.1");
    let mut served = serve(
        "",
        &format!("--listen 127.0.0.1:0 --access-log {}", log.display()),
    );
    sessions(&served, target, 1);
    // The line is written after the client saw the close, within the writer's interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&log).unwrap().lines().count() < 1 {
        assert!(
            Instant::now() < deadline,
            "the first session was never logged"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::rename(&log, &rotated).unwrap();
    send_signal(&served, "-HUP");
    wait_for_stderr(&served, "reopened access log");
    sessions(&served, target, 1);
    send_signal(&served, "-TERM");
    assert_eq!(exit_code_within_10s(&mut served), Some(0));
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&log).unwrap();
    assert_eq!(old.lines().count(), 1, "{old}");
    assert_eq!(new.lines().count(), 1, "{new}");
    assert!(new.contains("cmd=CONNECT"), "{new}");
}

/// An emptied users file must not turn authentication off: at start it is refused, and a
/// SIGHUP that finds it empty (or half-rewritten) keeps the running users.
#[test]
fn an_empty_users_file_never_turns_authentication_off() {
    let users = temp_file("users-emptied.txt", "alice:pw\n");
    let mut served = serve(
        "",
        &format!(
            "--listen 127.0.0.1:0 --access-log off --users-file {}",
            users.display()
        ),
    );
    let methods = |served: &Served| {
        let mut s = TcpStream::connect(served.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&[5, 1, 0]).unwrap();
        let mut reply = [0u8; 2];
        s.read_exact(&mut reply).unwrap();
        reply
    };
    assert_eq!(
        methods(&served),
        [5, 0xff],
        "no-auth refused while users exist"
    );
    std::fs::write(&users, "# everyone left\n").unwrap();
    send_signal(&served, "-HUP");
    wait_for_stderr(&served, "configuration not reloaded");
    assert_eq!(
        methods(&served),
        [5, 0xff],
        "still refused after the reload"
    );
    send_signal(&served, "-TERM");
    assert_eq!(exit_code_within_10s(&mut served), Some(0));

    let users_file = format!("--users-file={}", users.display());
    let (code, err) = serve_refusing(&["--listen", "127.0.0.1:0", &users_file]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no users in it"), "{err}");
}

/// Runs `serve ARGS` expecting it to refuse to start: its exit code (`None` if it was
/// still running after 10 s and had to be killed) and its stderr. Spawned, not run to
/// the end, so a server that accepted what it should refuse fails the test, not hangs it.
fn serve_refusing(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_within(&mut child, Duration::from_secs(10));
    if status.is_none() {
        child.kill().unwrap();
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.and_then(|s| s.code()), err)
}

/// A FIFO at a fresh path in this run's directory (a leftover from a run with the same
/// process id is removed first: writing to it would wait for a reader forever).
fn fifo(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir()
        .join(format!("ferrosocks-cli-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap()
        .success());
    path
}

/// The runtime's worker threads, counted by the name tokio gives them, in `/proc`. A new
/// thread takes that name only once it runs, which may be after the server said where it
/// listens (tokio does not wait for its workers to start): so this waits up to 5 s for
/// `expected`, and returns the last count.
fn worker_threads(served: &Served, expected: usize) -> usize {
    let tasks = format!("/proc/{}/task", served.child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let count = std::fs::read_dir(&tasks)
            .unwrap()
            .filter(|task| {
                let comm = std::fs::read_to_string(task.as_ref().unwrap().path().join("comm"));
                comm.is_ok_and(|name| name.trim() == "tokio-rt-worker")
            })
            .count();
        if count == expected || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first CPU this process may run on (`Cpus_allowed_list` in `/proc/self/status`).
fn first_allowed_cpu() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    let first = list.trim().split([',', '-']).next().unwrap();
    first.parse().unwrap()
}

/// `workers` sets how many threads run the sessions, from the flag or the file; `auto`
/// takes one fewer than the CPUs the process may run on (at least one), and
/// busy-polling's `auto` follows: on with one worker, off with several.
#[test]
fn workers_sets_the_runtime_threads_and_auto_leaves_a_cpu_free() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    // The shell restricts itself to one CPU, and what it execs inherits that.
    let pinned = format!("taskset -p -c {} $$ >/dev/null &&", first_allowed_cpu());
    let file = temp_file("workers-two.toml", "[server]\nworkers = 2\n");
    let from_file = format!("--config {}", file.display());
    let overridden = format!("--config {} --workers 1", file.display());
    let several = "off (several worker threads";
    let mut cases = vec![
        (pinned.as_str(), "", 1, "50µs"),
        (pinned.as_str(), "--workers 3", 3, several),
        ("", "--workers 1", 1, "50µs"),
        ("", from_file.as_str(), 2, several),
        ("", overridden.as_str(), 1, "50µs"),
    ];
    if cpus >= 3 {
        cases.push(("", "", cpus - 1, several));
    } else {
        cases.push(("", "", 1, "50µs"));
    }
    for (prefix, args, workers, busy_poll) in cases {
        let served = serve(prefix, &format!("--listen 127.0.0.1:0 {args}"));
        let log = served.startup.join("\n");
        assert_eq!(
            worker_threads(&served, workers),
            workers,
            "{prefix} {args}: {log}"
        );
        assert!(
            log.contains(&format!("serve: {workers} worker thread(s)")),
            "{prefix} {args}: {log}"
        );
        assert!(
            log.contains(&format!("busy-polling after traffic: {busy_poll}")),
            "{prefix} {args}: {log}"
        );
        // It serves: a CONNECT to a closed port is answered.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = closed.local_addr().unwrap();
        drop(closed);
        let (_, head) = socks_connect(served.addr, target).unwrap();
        assert_eq!(&head[..2], &[5, 0], "{prefix} {args}");
        assert_eq!(head[3], 5, "connection refused, {prefix} {args}");
    }
}

#[test]
fn workers_must_be_auto_or_a_number_from_one() {
    for bad in ["0", "many", "-1", "100000"] {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--workers", bad])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A value wrongly accepted would start a server: fail instead of waiting for it.
        let status = wait_within(&mut child, Duration::from_secs(10));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(status.and_then(|s| s.code()), Some(2), "--workers {bad}");
    }
    let file = temp_file("workers-zero.toml", "[server]\nworkers = 0\n");
    let out = check_config(&file);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("workers") && stderr.contains(":2:"),
        "{stderr}"
    );
}

/// One worker thread, whatever CPUs the machine gives: a blocked worker stalls everything.
const ONE_WORKER: &str = "--workers 1";

/// Waits for a stderr line containing `needle` (at most 10 s).
fn wait_for_stderr(served: &Served, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = served
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no stderr line with {needle:?}"));
        if line.contains(needle) {
            return;
        }
    }
}

/// SIGHUP's reopen writes what is pending first, so with a destination that takes nothing
/// (here a FIFO whose reader never reads) it waits; that wait must stall neither a session
/// nor the reload, and a second SIGHUP meanwhile is queued behind it, not piled up.
#[test]
fn sighup_with_a_stalled_access_log_stalls_no_session() {
    let target = closing_target();
    let fifo = fifo("stalled-access.fifo");
    // Opens the FIFO (so the server's open does not block) and never reads it.
    let reader_path = fifo.clone();
    let (opened, reader) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let file = std::fs::File::open(reader_path).unwrap();
        opened.send(file).unwrap();
    });
    let mut served = serve(
        "",
        &format!(
            "{ONE_WORKER} --listen 127.0.0.1:0 --access-log {}",
            fifo.display()
        ),
    );
    let _reader = reader.recv_timeout(Duration::from_secs(10)).unwrap();
    // Several times what the FIFO holds, so the writer thread is stuck in `write`.
    sessions(&served, target, 2000);
    std::thread::sleep(Duration::from_millis(300));
    send_signal(&served, "-HUP");
    wait_for_stderr(&served, "SIGHUP: reloaded users");
    sessions(&served, target, 200);
    send_signal(&served, "-HUP");
    wait_for_stderr(&served, "reopening again after it");
    sessions(&served, target, 200);
    send_signal(&served, "-TERM");
    // The exit waits 5 s for the log, then gives up.
    assert_eq!(
        exit_code_within(&mut served, Duration::from_secs(20)),
        Some(0)
    );
    std::fs::remove_file(&fifo).unwrap();
}

/// Opening a FIFO for writing waits for a reader. With the access log's reader gone, SIGHUP
/// must wait for one neither on a worker (the reload) nor at all (the reopen, which fails
/// at once and keeps the old destination).
#[test]
fn sighup_with_an_access_log_fifo_nobody_reads_stalls_no_session() {
    let target = closing_target();
    let fifo = fifo("readerless-access.fifo");
    // Lets the server open the FIFO, then goes away.
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || drop(std::fs::File::open(reader_path).unwrap()));
    let mut served = serve(
        "",
        &format!(
            "{ONE_WORKER} --listen 127.0.0.1:0 --access-log {}",
            fifo.display()
        ),
    );
    reader.join().unwrap();
    send_signal(&served, "-HUP");
    wait_for_stderr(&served, "SIGHUP: reloaded users");
    wait_for_stderr(&served, "access log not reopened");
    sessions(&served, target, 50);
    send_signal(&served, "-TERM");
    assert_eq!(exit_code_within_10s(&mut served), Some(0));
    std::fs::remove_file(&fifo).unwrap();
}

#[test]
fn accept_loop_survives_running_out_of_file_descriptors() {
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap();
    // 40 descriptors: a handful for the runtime, the rest are quickly used up by clients.
    let served = serve(
        "ulimit -n 40;",
        "--listen 127.0.0.1:0 --handshake-timeout 60s",
    );
    let mut hogs = Vec::new();
    for _ in 0..60 {
        if let Ok(s) = TcpStream::connect(served.addr) {
            hogs.push(s);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = served
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server reports the accept failure");
        if line.contains("accept failed") {
            break;
        }
    }
    drop(hogs);
    // The server frees the descriptors as the clients leave and serves again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match socks_connect(served.addr, target_addr) {
            Ok((_, head)) if head[..4] == [5, 0, 5, 0] => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("server did not recover: {other:?}"),
        }
    }
}

/// A network namespace of this test's own, with only a loopback interface: there, a
/// connect to any other address fails at once with ENETUNREACH, and no packet can leave.
struct IsolatedNamespace(String);

impl IsolatedNamespace {
    fn new() -> IsolatedNamespace {
        let name = format!("ferrosocks-test-{}", std::process::id());
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
                panic!("`ip` (Debian iproute2, installed by scripts/test-all) is needed: {e}")
            });
            assert!(
                out.status.success(),
                "ip {args:?} failed (this test needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        IsolatedNamespace(name)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, program]);
        cmd
    }
}

impl Drop for IsolatedNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn network_unreachable_gets_rep_03() {
    let ns = IsolatedNamespace::new();
    let mut server = ns
        .command(BIN)
        .args(["serve", "--listen", "127.0.0.1:1080"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("listening on 127.0.0.1:1080"))),
        "the server in the namespace did not start"
    );
    // 10.0.0.1 has no route in the namespace: the kernel answers ENETUNREACH.
    let out = ns
        .command(BIN)
        .args([
            "connect",
            "--proxy",
            "socks5://127.0.0.1:1080",
            "10.0.0.1:80",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("REP 0x03") && err.contains("network unreachable"),
        "{err}"
    );
}

/// Two network namespaces of this test's own joined by a veth pair, 10.203.0.1 in the
/// first and 10.203.0.2 in the second: a destination that is not loopback, whose packets
/// cross a real (virtual) device, and still never leave the machine.
struct LinkedNamespaces([String; 2]);

impl LinkedNamespaces {
    fn new() -> LinkedNamespaces {
        let names = ["a", "b"].map(|n| format!("ferrosocks-veth-{n}-{}", std::process::id()));
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?} failed (this test needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let linked = LinkedNamespaces(names.clone());
        for n in &names {
            ip(&["netns", "add", n]);
        }
        let [a, b] = &names;
        ip(&[
            "link", "add", "va", "netns", a, "type", "veth", "peer", "name", "vb", "netns", b,
        ]);
        for (n, dev, addr) in [(a, "va", "10.203.0.1/24"), (b, "vb", "10.203.0.2/24")] {
            ip(&["-n", n, "addr", "add", addr, "dev", dev]);
            ip(&["-n", n, "link", "set", dev, "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        linked
    }

    fn command(&self, which: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0[which], program]);
        cmd
    }
}

impl Drop for LinkedNamespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Receives on 10.203.0.2:9999 with `UDP_GRO` on, so a segmented packet arrives in one
/// read (with its segment size); prints each read as `LENGTH SEGMENT` (0: not segmented)
/// and stops at a 3-byte datagram.
const GRO_RECEIVER: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.setsockopt(socket.IPPROTO_UDP, 104, 1)  # UDP_GRO
s.bind(("10.203.0.2", 9999))
s.settimeout(10)
print("ready", flush=True)
while True:
    data, anc, _, _ = s.recvmsg(65536, socket.CMSG_SPACE(4))
    seg = 0
    for level, kind, d in anc:
        if level == socket.IPPROTO_UDP and kind == 104:
            seg = struct.unpack("=H", d[:2])[0]
    sys.stdout.buffer.write(b"%d %d %s\n" % (len(data), seg, data.hex().encode()))
    sys.stdout.flush()
    if len(data) == 3:
        break
"#;

/// Through a UDP ASSOCIATE on 127.0.0.1:1080, sends 10 bursts of 64 datagrams of 100
/// bytes (burst b, datagram i: 100 bytes of (b * 64 + i) % 256) to 10.203.0.2:9999, then
/// a 3-byte end mark.
const BURST_SENDER: &str = r#"
import socket, struct, time
t = socket.create_connection(("127.0.0.1", 1080))
t.sendall(b"\x05\x01\x00"); assert t.recv(2) == b"\x05\x00"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
ip, port = u.getsockname()
t.sendall(b"\x05\x03\x00\x01" + socket.inet_aton(ip) + struct.pack("!H", port))
r = t.recv(10); assert r[1] == 0, r
relay = (socket.inet_ntoa(r[4:8]), struct.unpack("!H", r[8:10])[0])
hdr = b"\x00\x00\x00\x01" + socket.inet_aton("10.203.0.2") + struct.pack("!H", 9999)
for b in range(10):
    for i in range(64):
        u.sendto(hdr + bytes([(b * 64 + i) % 256]) * 100, relay)
    time.sleep(0.05)
u.sendto(hdr + b"end", relay)
time.sleep(0.5)
"#;

/// Runs of equal datagrams to a destination that is not loopback leave the relay as one
/// segmented send (UDP GSO): a receiver behind a veth pair with `UDP_GRO` on gets some of
/// them merged, with their segment size; every datagram arrives, in order, unchanged.
/// (Loopback destinations are never segmented; a unit test covers that side.)
#[test]
fn udp_runs_to_a_remote_destination_leave_segmented_and_arrive_whole() {
    let ns = LinkedNamespaces::new();
    // Stopped on the way out, also when an assertion fails.
    struct Stopped(Child);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Stopped(
        ns.command(0, BIN)
            .args(["serve", "--listen", "127.0.0.1:1080"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(server.0.stderr.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("listening on 127.0.0.1:1080"))),
        "the server in the namespace did not start"
    );
    let mut receiver = Stopped(
        ns.command(1, "python3")
            .args(["-c", GRO_RECEIVER])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut reads = BufReader::new(receiver.0.stdout.take().unwrap()).lines();
    assert_eq!(reads.next().unwrap().unwrap(), "ready");
    let sent = ns
        .command(0, "python3")
        .args(["-c", BURST_SENDER])
        .status()
        .unwrap();
    assert!(sent.success());
    let reads: Vec<(usize, usize, Vec<u8>)> = reads
        .map(|l| {
            let l = l.unwrap();
            let mut f = l.split(' ');
            let len = f.next().unwrap().parse().unwrap();
            let seg = f.next().unwrap().parse().unwrap();
            let hex = f.next().unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (len, seg, bytes)
        })
        .collect();
    drop((receiver, server));
    assert_eq!(reads.last().map(|r| r.2.as_slice()), Some(&b"end"[..]));
    let data: Vec<u8> = reads[..reads.len() - 1]
        .iter()
        .flat_map(|r| r.2.clone())
        .collect();
    let expected: Vec<u8> = (0..640u32).flat_map(|n| [(n % 256) as u8; 100]).collect();
    assert!(data == expected, "datagrams lost, reordered or changed");
    let merged = reads.iter().filter(|r| r.1 == 100 && r.0 > 100).count();
    assert!(merged > 0, "no read held a segmented run: {:?}", {
        reads.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>()
    });
}

/// `bench peers` on both cores at once, with short measurements, its JSON and chart in a
/// folder of the test's own: the process's output and the parsed JSON.
fn bench_peers(
    dir: &std::path::Path,
    args: &[String],
) -> (std::process::Output, serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let json = dir.join("peers.json");
    let reps: &[&str] = if args.iter().any(|a| a == "--reps") {
        &[]
    } else {
        &["--reps", "1"]
    };
    let out = Command::new(BIN)
        .args(["bench", "peers"])
        .args(reps)
        .args(args)
        .args(["--proxy-cpu", "0", "--generator-cpu", "0"])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(dir.join("peers.svg"))
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(&json)
        .ok()
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or(serde_json::Value::Null);
    (out, summary)
}

/// A `bench peers` run's standard output, once the run is known to have succeeded.
fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `bench peers --peer NAME=COMMAND`: a SOCKS server from outside the project (here this
/// binary again, under another name, behind a shell command line) is started with its port
/// filled in, measured in the same cases as the built-in contenders, compared in the table,
/// and stopped at the end with what its shell started. A peer that puts itself in the
/// background is reported and left out, once, and the run goes on.
#[test]
fn bench_peers_measures_a_peer_given_as_a_command() {
    let dir = std::env::temp_dir().join(format!("ferrosocks-cli-peer-{}", std::process::id()));
    // Unusual values mark each peer's command line, to find what is left running.
    let marker = "--udp-idle-timeout 4321s";
    let daemon_marker = "--udp-idle-timeout 4322s";
    let args = [
        "--duration".to_string(),
        "200ms".into(),
        "--scenarios".into(),
        "latency,udp".into(),
        "--contenders".into(),
        "direct,other,daemon,ferrosocks".into(),
        "--peer".into(),
        // Not a plain command: the shell stays as the server's parent.
        format!("other=cd / && {BIN} serve --listen 127.0.0.1:{{port}} {marker}"),
        "--peer".into(),
        format!("daemon=setsid {BIN} serve --listen 127.0.0.1:{{port}} {daemon_marker} &"),
    ];
    let (out, summary) = bench_peers(&dir, &args);
    let left_running = |marker: &str| {
        let out = Command::new("pgrep")
            .args(["-f", "--", marker])
            .output()
            .unwrap();
        // 1: no process matched (2 would be a usage error).
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let daemons = left_running(daemon_marker);
    let _ = Command::new("pkill")
        .args(["-f", "--", daemon_marker])
        .status();
    assert_eq!(daemons.len(), 1, "the daemon was started once: {daemons:?}");
    let stdout = succeeded(&out);
    assert!(stdout.contains("ferro/other"), "{stdout}");
    let raw = summary["raw"].as_array().unwrap();
    for case in ["latency", "udp", "udp rate"] {
        let run = raw
            .iter()
            .find(|r| r["contender"] == "other" && r["case"] == case)
            .unwrap_or_else(|| panic!("no {case} run of the peer: {raw:#?}"));
        assert!(run["error"].is_null(), "{run:#?}");
        assert!(run["report"]["records"][0]["value"].as_f64().unwrap() > 0.0);
        let busy = run["cpu_busy_percent"]["generator"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&busy), "{run:#?}");
    }
    assert!(summary["cpu_busy"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["contender"] == "other" && c["case"] == "udp"));
    assert!(stdout.contains("CPU busy"), "{stdout}");
    assert_eq!(
        left_running(marker),
        Vec::<String>::new(),
        "the peer was left running"
    );
    assert!(stdout.contains("went to the background"), "{stdout}");
    let daemon_runs: Vec<_> = raw.iter().filter(|r| r["contender"] == "daemon").collect();
    assert_eq!(daemon_runs.len(), 3, "{daemon_runs:#?}");
    for run in daemon_runs {
        assert!(
            run["error"].as_str().unwrap().starts_with("did not start"),
            "{run:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench peers` restarts a server after its idle case, so that a server the thousands of
/// idle tunnels left broken (or busy) does not slow the next repetition, in which every
/// contender shares its core: a peer that counts its starts is started once at the
/// beginning, before each idle case, and once more after the first repetition's.
#[test]
fn bench_peers_restarts_a_server_after_its_idle_case() {
    let dir = std::env::temp_dir().join(format!("ferrosocks-cli-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let starts = dir.join("starts");
    let args = [
        "--reps".to_string(),
        "2".into(),
        "--duration".into(),
        "200ms".into(),
        "--tunnels".into(),
        "20".into(),
        "--scenarios".into(),
        "latency,idle".into(),
        "--contenders".into(),
        "direct,counted,ferrosocks".into(),
        "--peer".into(),
        format!(
            "counted=echo started >> {} && exec {BIN} serve --listen 127.0.0.1:{{port}}",
            starts.display()
        ),
    ];
    let (out, summary) = bench_peers(&dir, &args);
    let stdout = succeeded(&out);
    let raw = summary["raw"].as_array().unwrap();
    let counted: Vec<_> = raw.iter().filter(|r| r["contender"] == "counted").collect();
    assert_eq!(counted.len(), 4, "{counted:#?}");
    for run in counted {
        assert!(run["error"].is_null(), "{run:#?}");
    }
    let started = std::fs::read_to_string(&starts).unwrap();
    assert_eq!(started.lines().count(), 4, "{started:?}\n{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench peers`' bare UDP forwarder: started on the proxies' core, it relays the UDP
/// rows' datagrams, takes no part in the other cases, and is gone when the run ends. The
/// fixed-rate row sends at the rate `--udp-rate` asks for.
#[test]
fn bench_peers_runs_the_bare_udp_forwarder_in_the_udp_rows_only() {
    let dir = std::env::temp_dir().join(format!("ferrosocks-cli-bare-{}", std::process::id()));
    let args = ["--duration", "300ms", "--scenarios", "latency,udp"]
        .into_iter()
        .chain(["--contenders", "direct,bare-udp,ferrosocks"])
        .chain(["--udp-rate", "20000"])
        .map(String::from)
        .collect::<Vec<_>>();
    let (out, summary) = bench_peers(&dir, &args);
    let stdout = succeeded(&out);
    // "  bare-udp: 127.0.0.1:PORT (pid N)"
    let pid: u32 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("bare-udp: ")?.split("(pid ").nth(1))
        .and_then(|p| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid for the bare forwarder: {stdout}"));
    let raw = summary["raw"].as_array().unwrap();
    let run_of = |contender: &str, case: &str| {
        raw.iter()
            .find(|r| r["contender"] == contender && r["case"] == case)
            .unwrap_or_else(|| panic!("no {case} run of {contender}: {raw:#?}"))
    };
    let run = |case: &str| run_of("bare-udp", case);
    for case in ["udp", "udp rate"] {
        // A measurement in which datagrams did not come back, or came back changed (the
        // generator checks each one's sequence number), has an error and no records.
        let records = run(case)["report"]["records"].as_array().unwrap();
        let rate = &records[0];
        assert_eq!(rate["metric"], "datagrams/s", "{records:#?}");
        assert!(rate["value"].as_f64().unwrap() > 0.0, "{records:#?}");
        assert_eq!(rate["detail"]["duplicates"], 0, "{records:#?}");
    }
    for contender in ["direct", "bare-udp", "ferrosocks"] {
        let run = run_of(contender, "udp rate");
        let record = &run["report"]["records"][0];
        assert_eq!(record["detail"]["rate"], 20000, "{run:#?}");
        assert_eq!(record["case"], "udp 512 B at 20000/s", "{run:#?}");
    }
    assert!(stdout.contains("udp 512 B at 20000/s"), "{stdout}");
    assert!(run("latency")["error"]
        .as_str()
        .unwrap()
        .contains("UDP only"));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the bare forwarder (pid {pid}) is still running"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The bare forwarder on its own: a datagram goes to the target and the reply back to the
/// client; a datagram from anyone but the target is not passed on; and once traffic stops
/// it blocks instead of spinning (it shares the proxies' core with the servers being
/// measured).
#[test]
fn the_bare_udp_forwarder_relays_and_blocks_when_idle() {
    let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&target, &stranger, &client] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    // Killed when the test ends, passed or failed.
    struct Forwarder(std::process::Child);
    impl Drop for Forwarder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut forwarder = Forwarder(
        Command::new(BIN)
            .args([
                "bench",
                "bare-udp-forwarder",
                "--listen",
                "127.0.0.1:0",
                "--to",
            ])
            .arg(target.local_addr().unwrap().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(forwarder.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let listen: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the forwarder did not start: {line:?}"));
    // Its TCP port answers too (what `bench peers` waits for).
    TcpStream::connect(listen).unwrap();
    let mut buf = [0u8; 64];
    for i in 0..100u8 {
        client.send_to(&[i; 9], listen).unwrap();
        let (n, from) = target.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[i; 9]);
        target.send_to(&[i; 3], from).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&[i; 3][..], listen));
    }
    // From the forwarder's outbound port, but not from the target: dropped.
    let outbound = {
        client.send_to(b"where from", listen).unwrap();
        target.recv_from(&mut buf).unwrap().1
    };
    stranger.send_to(b"not the target", outbound).unwrap();
    target.send_to(b"the target", outbound).unwrap();
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"the target");

    // Idle now: CPU time (user + system, in clock ticks) over one second.
    let ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", forwarder.0.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the name.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    std::thread::sleep(Duration::from_millis(100));
    let before = ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = ticks() - before;
    drop(forwarder);
    // A forwarder still spinning would use the whole second (about 100 ticks).
    assert!(used <= 10, "{used} ticks of CPU in an idle second");
}

/// `bench/udp_window.py`, the README's second UDP generator, runs direct and through the
/// server, reports a rate with nothing lost, and its proxied datagrams did cross the
/// server (the association's access-log line counts them both ways).
#[test]
fn the_python_udp_generator_measures_direct_and_through_the_server() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/udp_window.py");
    // Busy-polling forced on, so the association's sockets also leave the epoll and come
    // back (the default turns it off on a runtime with several workers).
    let mut served = serve(
        "",
        "--listen 127.0.0.1:0 --access-log-format json --busy-poll 50us",
    );
    let proxy = served.addr.to_string();
    for route in [vec!["--direct"], vec!["--proxy", proxy.as_str()]] {
        let mut generator = Command::new("python3")
            .arg(script)
            .args(&route)
            .args(["--seconds", "0.3", "--window", "8", "--size", "100"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // It ends by itself in about a second; a generator that hangs fails the test.
        let deadline = Instant::now() + Duration::from_secs(30);
        while generator.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = generator.kill();
                panic!("{route:?}: the generator did not finish within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = generator.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{route:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rate: f64 = text
            .split(": ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{route:?}: no rate in {text:?}"));
        assert!(rate > 0.0, "{text}");
        assert!(text.contains(", 0 lost"), "{text}");
    }
    send_signal(&served, "-TERM");
    assert_eq!(exit_code_within_10s(&mut served), Some(0));
    let stdout = served.stdout_to_end();
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["command"], "UDP_ASSOCIATE");
    // 100-byte payloads, at least the window's 8 each way.
    for direction in ["bytes_up", "bytes_down"] {
        assert!(line[direction].as_u64().unwrap() >= 800, "{line}");
    }
}

/// The shell scripts under `bench/` are not run by the suite (they install packages and
/// take minutes), so at least: every one parses, and the sslocal wrapper answers bad
/// arguments with its usage and exit code 2 before it looks for sslocal.
#[test]
fn bench_scripts_parse_and_the_sslocal_wrapper_checks_its_arguments() {
    let bench = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench"));
    let mut scripts = std::fs::read_dir(bench)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect::<Vec<_>>();
    scripts.sort();
    assert!(scripts.len() >= 3, "{scripts:?}");
    for script in &scripts {
        let out = Command::new("bash").arg("-n").arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wrapper = bench.join("shadowsocks-rust.sh");
    let run = |args: &[&str]| {
        Command::new("bash")
            .arg(&wrapper)
            .args(args)
            .output()
            .unwrap()
    };
    let no_args = run(&[]);
    assert_eq!(no_args.status.code(), Some(2), "{no_args:?}");
    assert!(String::from_utf8_lossy(&no_args.stderr).contains("bench/shadowsocks-rust.sh install"));
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    assert!(String::from_utf8_lossy(&help.stdout).contains("bench/shadowsocks-rust.sh PORT"));
    let not_a_port = run(&["80a"]);
    assert_eq!(not_a_port.status.code(), Some(2), "{not_a_port:?}");
    assert!(String::from_utf8_lossy(&not_a_port.stderr).contains("expected 'install' or a port"));
}
