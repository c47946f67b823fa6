//! A real `ferry serve` process in a temporary directory, and a way to run the CLI
//! against it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    /// Starts `ferry serve` with extra arguments and waits until its socket answers.
    pub fn start_with(extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/admin.sock");
        let log = dir.path().join("server.log");
        let child = Command::new(FERRY)
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env("FERRY_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn ferry serve");
        let mut server = TestServer { dir, socket, log, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&server.socket).is_err() {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("ferry serve exited with {status}: {}", server.log_text());
            }
            assert!(Instant::now() < deadline, "ferry serve did not start: {}", server.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(FERRY);
        c.env("FERRY_ADMIN_SOCKET", &self.socket).stdin(Stdio::null());
        c
    }

    /// Runs the CLI and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run ferry")
    }

    /// Runs the CLI, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "ferry {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI, asserts failure with exit code 1, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(1), "ferry {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("JSON output")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Fails (never skips) when a test needs root.
pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root: run it through `sudo scripts/test.sh`");
}
