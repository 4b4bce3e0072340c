//! The client commands against servers nobody here wrote, and `connect` as OpenSSH's
//! ProxyCommand:
//!
//! - `connect`, `bind` and `udp` through Dante (`danted`), IPv4, IPv6 and name targets;
//! - `connect` through microsocks, with and without username/password;
//! - `ssh -o ProxyCommand='ferrosocks connect …'` to an `sshd` started here on a loopback
//!   port with throwaway keys, through ferrosocks, Dante and microsocks, running a remote
//!   command and checking that ssh and the ProxyCommand both exit 0 promptly.
//!
//! Needs root (sshd), `dante-server`, `microsocks`, `openssh-server` and `openssh-client`;
//! scripts/test-all installs them. Anything missing fails the test; nothing is skipped.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferrosocks_testkit::daemons::{self, find_exe, temp_dir};
use ferrosocks_testkit::{spawn_server, tcp_echo, test_config, udp_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{run, Interactive, BIN, LIMIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_through_dante_to_ipv4_ipv6_and_names() {
    let dante = daemons::dante();
    let echo4 = tcp_echo("127.0.0.1:0").await;
    let echo6 = tcp_echo("[::1]:0").await;
    for scheme in ["socks5", "socks5h"] {
        let proxy = format!("{scheme}://{}", dante.addr);
        for target in [
            echo4.to_string(),
            echo6.to_string(),
            format!("localhost:{}", echo4.port()),
        ] {
            let out = run(&["connect", "--proxy", &proxy, &target], b"through dante\n").await;
            assert_eq!(
                out.code,
                Some(0),
                "{target}: {}\n{}",
                out.stderr,
                dante.log()
            );
            assert_eq!(out.stdout_text(), "through dante\n");
        }
    }
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = run(
        &[
            "connect",
            "--proxy",
            &format!("socks5://{}", dante.addr),
            &closed.to_string(),
        ],
        b"",
    )
    .await;
    out.assert_code(1);
    assert!(out.stderr.contains("REP 0x"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_through_dante() {
    let dante = daemons::dante();
    for expected_peer in ["127.0.0.1:0", "[::1]:0"] {
        let mut cmd = Interactive::spawn(&[
            "bind",
            "--proxy",
            &format!("socks5://{}", dante.addr),
            "--json",
            "--accept-timeout",
            "20s",
            expected_peer,
        ]);
        let first: serde_json::Value = serde_json::from_str(&cmd.line().await).unwrap();
        let announced: SocketAddr = first["announced"]
            .as_str()
            .unwrap_or_else(|| panic!("{first}\n{}", dante.log()))
            .parse()
            .unwrap();
        assert!(announced.ip().is_loopback(), "{announced}");
        let mut peer = TcpStream::connect(announced).await.unwrap();
        let second: serde_json::Value = serde_json::from_str(&cmd.line().await).unwrap();
        assert_eq!(second["peer"], peer.local_addr().unwrap().to_string());
        peer.write_all(b"peer says hi\n").await.unwrap();
        assert_eq!(cmd.line().await, "peer says hi");
        cmd.send(b"client says hi\n").await;
        cmd.close_stdin();
        let mut got = String::new();
        tokio::time::timeout(LIMIT, peer.read_to_string(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, "client says hi\n");
        drop(peer);
        let (code, _, stderr) = cmd.finish().await;
        assert_eq!(code, Some(0), "{stderr}\n{}", dante.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_through_dante_to_ipv4_ipv6_and_names() {
    let dante = daemons::dante();
    let echo4 = udp_echo("127.0.0.1:0").await;
    let echo6 = udp_echo("[::1]:0").await;
    for (scheme, target, port) in [
        ("socks5", echo4.to_string(), echo4.port()),
        ("socks5", echo6.to_string(), echo6.port()),
        (
            "socks5h",
            format!("localhost:{}", echo4.port()),
            echo4.port(),
        ),
    ] {
        let proxy = format!("{scheme}://{}", dante.addr);
        let out = run(
            &["udp", "--proxy", &proxy, "--json", "--wait", "1s", &target],
            b"one\n",
        )
        .await;
        assert_eq!(
            out.code,
            Some(0),
            "{target}: {}\n{}",
            out.stderr,
            dante.log()
        );
        let v: serde_json::Value = serde_json::from_str(out.stdout_text().trim())
            .unwrap_or_else(|e| panic!("{target}: {e}: {:?}\n{}", out.stdout_text(), dante.log()));
        assert_eq!(v["payload"], "one");
        let source: SocketAddr = v["source"].as_str().unwrap().parse().unwrap();
        assert_eq!(source.port(), port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_through_microsocks_with_and_without_auth() {
    let open = daemons::microsocks(None);
    let echo4 = tcp_echo("127.0.0.1:0").await;
    let echo6 = tcp_echo("[::1]:0").await;
    for target in [
        echo4.to_string(),
        echo6.to_string(),
        format!("localhost:{}", echo4.port()),
    ] {
        // microsocks ends the whole tunnel when the client half-closes, so the echo
        // would be lost at stdin's EOF: keep stdin open until the answer is in.
        let proxy = format!("socks5h://{}", open.addr);
        let mut cmd = Interactive::spawn(&["connect", "--proxy", &proxy, &target]);
        cmd.send(b"through microsocks\n").await;
        assert_eq!(cmd.line().await, "through microsocks", "{}", open.log());
        cmd.close_stdin();
        let (code, _, stderr) = cmd.finish().await;
        assert_eq!(code, Some(0), "{target}: {stderr}\n{}", open.log());
    }

    // --no-half-close: stdin's EOF does not end the tunnel, the target's close does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let greeter = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut line = [0u8; 6];
        s.read_exact(&mut line).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(b"late answer\n").await.unwrap();
    });
    let proxy = format!("socks5://{}", open.addr);
    let out = run(
        &[
            "connect",
            "--no-half-close",
            "--proxy",
            &proxy,
            &greeter.to_string(),
        ],
        b"hello\n",
    )
    .await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, open.log());
    assert_eq!(out.stdout_text(), "late answer\n");

    let locked = daemons::microsocks(Some(("mia", "pa55")));
    let good = format!("socks5://mia:pa55@{}", locked.addr);
    let mut cmd = Interactive::spawn(&["connect", "--proxy", &good, &echo4.to_string()]);
    cmd.send(b"auth ok\n").await;
    assert_eq!(cmd.line().await, "auth ok", "{}", locked.log());
    let (code, _, stderr) = cmd.finish().await;
    assert_eq!(code, Some(0), "{stderr}\n{}", locked.log());
    let bad = format!("socks5://mia:nope@{}", locked.addr);
    let out = run(&["connect", "--proxy", &bad, &echo4.to_string()], b"x").await;
    out.assert_code(1);
    assert!(
        out.stderr.contains("rejected the username/password"),
        "{}",
        out.stderr
    );
    let none = format!("socks5://{}", locked.addr);
    let out = run(&["connect", "--proxy", &none, &echo4.to_string()], b"x").await;
    out.assert_code(1);
}

// --- OpenSSH ------------------------------------------------------------------------------

/// An `sshd` on a loopback port that lets root in with a throwaway key.
struct Sshd {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(exe: &Path, file: &Path) {
    let status = std::process::Command::new(exe)
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ferrosocks-test",
            "-f",
        ])
        .arg(file)
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen failed for {}", file.display());
}

fn start_sshd() -> Sshd {
    let sshd = find_exe("sshd", "openssh-server");
    let keygen_exe = find_exe("ssh-keygen", "openssh-client");
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the ssh ProxyCommand test runs sshd, which needs root (scripts/test-all runs as root)"
    );
    // sshd refuses to start without its privilege-separation directory.
    std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
    let dir = temp_dir("sshd");
    keygen(&keygen_exe, &dir.join("host_key"));
    keygen(&keygen_exe, &dir.join("id_user"));
    std::fs::copy(dir.join("id_user.pub"), dir.join("authorized_keys")).unwrap();

    for attempt in 0..3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("sshd_config");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {dir}/host_key\n\
                 PidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {dir}/authorized_keys\n\
                 PermitRootLogin yes\n\
                 StrictModes no\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 LogLevel VERBOSE\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let log = dir.join(format!("sshd.{attempt}.log"));
        let mut child = std::process::Command::new(&sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sshd");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "sshd exited at start ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Sshd { child, port, dir };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("sshd did not come up on a free loopback port in 3 tries");
}

impl Sshd {
    fn log(&self) -> String {
        let mut text = String::new();
        for i in 0..3 {
            text += &std::fs::read_to_string(self.dir.join(format!("sshd.{i}.log")))
                .unwrap_or_default();
        }
        text
    }

    /// Runs `ssh … root@HOST echo hello-through-socks` with `ferrosocks connect` as
    /// ProxyCommand, and checks the output, ssh's exit and the ProxyCommand's own exit.
    async fn run_through(&self, proxy_url: &str, host: &str, tag: &str) {
        let ssh = find_exe("ssh", "openssh-client");
        let rc_file = self.dir.join(format!("proxycommand-{tag}.rc"));
        let _ = std::fs::remove_file(&rc_file);
        // SIGHUP, which ssh sends its ProxyCommand when it exits, is ignored here, so the
        // exit code written is the one `connect` chose on its own.
        let proxy_command = format!(
            "sh -c 'trap \"\" HUP; {BIN} connect --proxy {proxy_url} %h:%p; echo $? > {rc}'",
            rc = rc_file.display()
        );
        let started = Instant::now();
        let mut command = tokio::process::Command::new(&ssh);
        command
            .args(["-F", "/dev/null", "-T"])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ))
            .args(["-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"])
            .arg("-i")
            .arg(self.dir.join("id_user"))
            .arg("-o")
            .arg(format!("ProxyCommand={proxy_command}"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("root@{host}"))
            .arg("echo hello-through-socks")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(LIMIT, command.output())
            .await
            .unwrap_or_else(|_| {
                panic!("{tag}: ssh did not finish within {LIMIT:?}\n{}", self.log())
            })
            .expect("run ssh");
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{tag}: ssh {}: {stderr}\n--- sshd log:\n{}",
            out.status,
            self.log()
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello-through-socks\n",
            "{tag}"
        );
        assert!(
            elapsed < Duration::from_secs(10),
            "{tag}: ssh took {elapsed:?}"
        );

        let deadline = Instant::now() + Duration::from_secs(10);
        let rc = loop {
            if let Ok(text) = std::fs::read_to_string(&rc_file) {
                if text.ends_with('\n') {
                    break text;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{tag}: the ProxyCommand did not exit within 10 s of ssh"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(rc.trim(), "0", "{tag}: ferrosocks connect exit code");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_proxycommand_through_ferrosocks_dante_and_microsocks() {
    let sshd = start_sshd();
    let ours = spawn_server(test_config()).await;
    // socks5h: the proxy resolves "localhost" (ours tries ::1, then 127.0.0.1).
    sshd.run_through(
        &format!("socks5h://{}", ours.addr),
        "localhost",
        "ferrosocks",
    )
    .await;
    sshd.run_through(
        &format!("socks5://{}", ours.addr),
        "127.0.0.1",
        "ferrosocks-ip",
    )
    .await;
    let dante = daemons::dante();
    sshd.run_through(&format!("socks5h://{}", dante.addr), "127.0.0.1", "dante")
        .await;
    let ms = daemons::microsocks(Some(("sshuser", "sshpass")));
    sshd.run_through(
        &format!("socks5h://sshuser:sshpass@{}", ms.addr),
        "127.0.0.1",
        "microsocks",
    )
    .await;
}
