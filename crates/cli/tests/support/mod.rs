//! Running the built `ferrosocks` binary as a client command, bounded in time.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_ferrosocks");

/// No command in these tests may run longer than this.
pub(crate) const LIMIT: Duration = Duration::from_secs(30);

/// A finished command.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

impl Finished {
    pub(crate) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    #[track_caller]
    pub(crate) fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "exit code; stdout {:?}, stderr {:?}",
            self.stdout_text(),
            self.stderr
        );
        self
    }
}

/// Runs `ferrosocks ARGS` with `stdin` as its whole input (then EOF) and waits for it.
pub(crate) async fn run(args: &[&str], stdin: &[u8]) -> Finished {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ferrosocks");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // Written from a task so a command that answers before reading everything cannot
    // deadlock the test on a full pipe.
    tokio::spawn(async move {
        let _ = input.write_all(&data).await;
        let _ = input.shutdown().await;
    });
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("ferrosocks {args:?} did not finish within {LIMIT:?}"))
        .expect("wait for ferrosocks");
    Finished {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// A running command whose stdin and stdout the test drives.
pub(crate) struct Interactive {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: Lines<BufReader<ChildStdout>>,
}

impl Interactive {
    pub(crate) fn spawn(args: &[&str]) -> Interactive {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ferrosocks");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Interactive {
            child,
            stdin,
            stdout,
        }
    }

    /// The next stdout line; fails the test on EOF or after [`LIMIT`].
    pub(crate) async fn line(&mut self) -> String {
        match tokio::time::timeout(LIMIT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!("ferrosocks closed stdout: {}", self.stderr_now().await),
            Ok(Err(e)) => panic!("reading ferrosocks' stdout: {e}"),
            Err(_) => panic!("no line from ferrosocks within {LIMIT:?}"),
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.stdin
            .as_mut()
            .expect("stdin still open")
            .write_all(bytes)
            .await
            .unwrap();
    }

    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the exit; returns the code and the rest of stdout and stderr.
    pub(crate) async fn finish(mut self) -> (Option<i32>, String, String) {
        self.stdin = None;
        let mut rest = String::new();
        let status = tokio::time::timeout(LIMIT, async {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                rest.push_str(&line);
                rest.push('\n');
            }
            self.child.wait().await
        })
        .await
        .expect("ferrosocks did not exit in time")
        .unwrap();
        let stderr = self.stderr_now().await;
        (status.code(), rest, stderr)
    }

    async fn stderr_now(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), err.read_to_string(&mut text)).await;
        }
        text
    }
}
