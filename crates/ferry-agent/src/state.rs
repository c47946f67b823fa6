//! The cloud-init mode state file (`STATE_DIR/agent.json`, 0600) and `ferry agent teardown`
//! (stops a holding agent; removes what a detached one left: interface and guard).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::args::TeardownArgs;
use crate::error::AgentError;
use crate::seed::{create_private_dir, write_private_file};
use crate::tunnel::{remove_guard_table, remove_kernel_interface};
use ferry_wg::BackendKind;

/// The state file's name inside `--state-dir`.
pub const STATE_FILE: &str = "agent.json";

/// What a cloud-init mode agent left for `teardown` (and for boot scripts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub interface: String,
    pub backend: BackendKind,
    /// The agent's process id.
    pub pid: u32,
    /// True when that process keeps running and holds the tunnel (stop it with SIGTERM);
    /// false when it exited leaving a kernel interface (remove the interface).
    pub held: bool,
    pub node: String,
    /// The `ds=` line the agent printed.
    pub ds: String,
    pub datasource_url: String,
    pub phone_home_url: String,
    pub expires_at: String,
    /// The nftables table that keeps the tunnel to root (removed by `teardown` when a
    /// detached or killed agent left it). Absent in state files of older agents.
    #[serde(default)]
    pub guard: Option<String>,
}

pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// Writes the state file (directory 0700 if created, file 0600, atomically).
pub fn write(state_dir: &Path, state: &AgentState) -> Result<(), AgentError> {
    create_private_dir(state_dir)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| AgentError::Protocol(e.to_string()))?;
    write_private_file(&state_path(state_dir), &json)
}

/// Removes the state file; a missing one is fine.
pub fn remove(state_dir: &Path) -> Result<(), AgentError> {
    let path = state_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::io_path("remove", &path, e)),
    }
}

/// Whether a `/proc/PID/cmdline` belongs to a ferry program.
pub fn is_ferry_process(cmdline: &[u8]) -> bool {
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
    base.windows(5).any(|w| w == b"ferry")
}

fn is_live_ferry_process(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| is_ferry_process(&c))
}

/// Stops a holding agent, or removes the interface a detached one left; then the state file.
pub async fn teardown(args: TeardownArgs) -> Result<(), AgentError> {
    let path = state_path(&args.state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no agent state file: nothing to tear down");
            return Ok(());
        }
        Err(e) => return Err(AgentError::io_path("read the agent state file", &path, e)),
    };
    let state: AgentState = serde_json::from_str(&text).map_err(|e| {
        AgentError::Teardown(format!(
            "the state file {} is not valid ({e}): remove it, and remove the tunnel interface \
             (default ferry-node0) with `ip link del ferry-node0` if it is still there",
            path.display()
        ))
    })?;
    if state.held {
        stop_agent(state.pid, args.wait).await?;
    }
    if state.backend == BackendKind::Kernel && remove_kernel_interface(&state.interface).await? {
        tracing::info!(interface = %state.interface, "removed the tunnel interface");
    }
    // A holding agent removed its guard itself; a detached or killed one left it.
    if let Some(table) = &state.guard {
        remove_guard_table(table).await?;
    }
    remove(&args.state_dir)?;
    Ok(())
}

async fn stop_agent(pid: u32, wait: Duration) -> Result<(), AgentError> {
    let own = std::process::id();
    let raw = i32::try_from(pid).ok().filter(|p| *p > 1 && pid != own);
    let Some(raw) = raw.filter(|_| is_live_ferry_process(pid)) else {
        tracing::info!(pid, "the agent recorded in the state file is no longer running");
        return Ok(());
    };
    match kill(Pid::from_raw(raw), Signal::SIGTERM) {
        Ok(()) => {}
        Err(nix::errno::Errno::ESRCH) => return Ok(()),
        Err(e) => return Err(AgentError::Teardown(format!("cannot signal the agent (pid {pid}): {e} (run as root)"))),
    }
    tracing::info!(pid, "sent SIGTERM to the agent; waiting for it to remove the tunnel");
    let deadline = tokio::time::Instant::now() + wait;
    while is_live_ferry_process(pid) {
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::Teardown(format!(
                "the agent (pid {pid}) did not exit within {} s of SIGTERM: `kill -9 {pid}`, then run \
                 `ferry agent teardown` again",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample(pid: u32, held: bool) -> AgentState {
        AgentState {
            interface: "ferry-test0".into(),
            backend: BackendKind::Userspace,
            pid,
            held,
            node: "n1".into(),
            ds: "ds=nocloud;s=http://10.1.0.1:8081/".into(),
            datasource_url: "http://10.1.0.1:8081/".into(),
            phone_home_url: "http://10.1.0.1:8081/phone-home".into(),
            expires_at: "2030-01-01T00:00:00Z".into(),
            guard: None,
        }
    }

    #[test]
    fn ferry_processes() {
        assert!(is_ferry_process(b"/usr/bin/ferry\0agent\0--mode\0cloud-init\0"));
        assert!(is_ferry_process(b"ferry\0agent\0"));
        assert!(is_ferry_process(b"/target/debug/deps/ferry_agent-0123abcd\0"));
        assert!(!is_ferry_process(b"/usr/bin/sleep\0ferry\0"));
        assert!(!is_ferry_process(b"/opt/ferry/bin/sshd\0"));
        assert!(!is_ferry_process(b""));
    }

    #[test]
    fn state_file_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("run/ferry");
        write(&state_dir, &sample(42, true)).expect("write");
        let path = state_path(&state_dir);
        assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
        let back: AgentState = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(back, sample(42, true));
        remove(&state_dir).expect("remove");
        remove(&state_dir).expect("idempotent");
    }

    #[tokio::test]
    async fn teardown_is_idempotent_and_handles_stale_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = TeardownArgs { state_dir: dir.path().to_path_buf(), wait: Duration::from_secs(1) };
        teardown(args.clone()).await.expect("nothing to do");
        // A holding agent that already died (pid beyond pid_max): the state file just goes.
        write(dir.path(), &sample(u32::MAX - 1, true)).expect("write");
        teardown(args.clone()).await.expect("stale");
        assert!(!state_path(dir.path()).exists());
        std::fs::write(state_path(dir.path()), "{not json").expect("write");
        let err = teardown(args).await.expect_err("corrupt");
        assert!(err.to_string().contains("remove it"), "{err}");
    }

    #[tokio::test]
    async fn teardown_signals_a_live_ferry_process() {
        // A child whose argv[0] says ferry: `exec -a` gives sh's child that name.
        let mut child = tokio::process::Command::new("bash")
            .args(["-c", "exec -a ferry-agent-test sleep 30"])
            .spawn()
            .expect("spawn");
        let pid = child.id().expect("pid");
        for _ in 0..100 {
            if is_live_ferry_process(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &sample(pid, true)).expect("write");
        let args = TeardownArgs { state_dir: dir.path().to_path_buf(), wait: Duration::from_secs(5) };
        let reaper = tokio::spawn(async move { child.wait().await });
        teardown(args).await.expect("stopped");
        let status = reaper.await.expect("join").expect("wait");
        assert!(!status.success(), "killed by SIGTERM");
        assert!(!state_path(dir.path()).exists());
    }
}
