//! Third-party SOCKS5 servers started by tests on loopback: Dante (`danted`) and
//! microsocks, from Debian's `dante-server` and `microsocks` packages.
//!
//! A missing program fails the test with the package to install (`scripts/test-all`
//! installs them); nothing is skipped. Each daemon listens on a free port of 127.0.0.1 and
//! is stopped by its own pid (SIGTERM, then SIGKILL) when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running third-party server.
pub struct Daemon {
    /// Where it accepts SOCKS connections.
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Daemon {
    /// Everything the daemon printed so far (for failure messages).
    pub fn log(&self) -> String {
        format!(
            "--- {} log:\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Starts `argv(port)` on a free loopback port and waits until it accepts
    /// connections (3 tries of 15 s each, for the rare port taken in between).
    fn start(name: &'static str, dir: &Path, argv: impl Fn(u16) -> Vec<String>) -> Daemon {
        for attempt in 0..3 {
            let port = free_port();
            let argv = argv(port);
            let log = dir.join(format!("{name}.{attempt}.log"));
            let out = std::fs::File::create(&log).expect("daemon log file");
            let mut child = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("log file handle"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", argv[0]));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{name} exited at start ({status}):\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Daemon {
                        addr,
                        child,
                        log,
                        name,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            stop(&mut child);
        }
        panic!("{name} did not come up on a free loopback port in 3 tries");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// SIGTERM (Dante's main process then stops its helper processes), SIGKILL after 10 s.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The path of an installed program, or a test failure naming the Debian package.
pub fn find_exe(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: this test needs it (apt-get install -y {package}; \
                 scripts/test-all does that)"
            )
        })
}

/// A fresh directory for one daemon's config and logs.
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ferrosocks-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Dante on 127.0.0.1 with no authentication, allowing CONNECT, BIND and UDP ASSOCIATE
/// from loopback to IPv4, IPv6 and named loopback targets.
///
/// As root Dante needs `user.privileged`/`user.unprivileged`. `external:` names the
/// addresses it uses toward targets, and so what it announces in BIND and UDP replies:
/// 127.0.0.1 and ::1 keep everything on loopback. BIND and UDP need the `bindreply` and
/// `udpreply` commands in a pass rule besides `bind` and `udpassociate`.
pub fn dante() -> Daemon {
    let exe = find_exe("danted", "dante-server");
    let dir = temp_dir("danted");
    let conf_dir = dir.clone();
    Daemon::start("danted", &dir, move |port| {
        let conf = conf_dir.join(format!("danted-{port}.conf"));
        let rule = "command: connect bind udpassociate bindreply udpreply";
        std::fs::write(
            &conf,
            format!(
                "logoutput: stderr\n\
                 internal: 127.0.0.1 port = {port}\n\
                 external: 127.0.0.1\n\
                 external: ::1\n\
                 user.privileged: root\n\
                 user.unprivileged: nobody\n\
                 clientmethod: none\n\
                 socksmethod: none\n\
                 client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n\
                 client pass {{ from: ::1/128 to: ::/0 }}\n\
                 socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 {rule} }}\n\
                 socks pass {{ from: 127.0.0.0/8 to: ::/0 {rule} }}\n\
                 socks pass {{ from: 127.0.0.0/8 to: . {rule} }}\n\
                 socks pass {{ from: ::1/128 to: 0.0.0.0/0 {rule} }}\n\
                 socks pass {{ from: ::1/128 to: ::/0 {rule} }}\n\
                 socks pass {{ from: ::1/128 to: . {rule} }}\n"
            ),
        )
        .expect("write danted.conf");
        vec![
            exe.display().to_string(),
            "-f".into(),
            conf.display().to_string(),
            "-p".into(),
            conf_dir
                .join(format!("danted-{port}.pid"))
                .display()
                .to_string(),
            "-N".into(),
            "1".into(),
        ]
    })
}

/// microsocks on 127.0.0.1, with one user when `auth` is given (`-u USER -P PASS`).
pub fn microsocks(auth: Option<(&str, &str)>) -> Daemon {
    let exe = find_exe("microsocks", "microsocks");
    let dir = temp_dir("microsocks");
    let auth = auth.map(|(u, p)| (u.to_owned(), p.to_owned()));
    Daemon::start("microsocks", &dir, move |port| {
        let mut argv = vec![
            exe.display().to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        if let Some((u, p)) = &auth {
            argv.extend(["-u".into(), u.clone(), "-P".into(), p.clone()]);
        }
        argv
    })
}
