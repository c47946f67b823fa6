//! `--server-cpu`: a CPU budget per server process, so that one machine can stand in
//! for several smaller ones. Each server gets a cgroup of its own with a CFS quota
//! (v1: `cpu.cfs_quota_us` / `cpu.cfs_period_us` under the `cpu` controller's mount;
//! v2: `cpu.max`), and everything else — the simulated nodes, PostgreSQL — stays
//! outside the budgets.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// The CFS period; the quota is this times the share of a core. Short, so that a server
/// on a fraction of a core runs slowly but steadily, as on a slower machine, instead of
/// in bursts: with the kernel's default 100 ms, a quarter core ran 25 ms and then stood
/// still for 75 ms — and a server stopped while it held PostgreSQL's write lock stopped
/// every other server with it. 10 ms keeps such stalls under 10 ms; the kernel's least
/// quota (1 ms) makes a tenth of a core the smallest budget.
const PERIOD_US: u64 = 10_000;

/// A cgroup made for one server; removed on drop (once its process has exited).
pub struct CpuBudget {
    dir: PathBuf,
}

/// The cgroup hierarchy that has the `cpu` controller, and its version.
fn cpu_hierarchy(root: &Path) -> anyhow::Result<(PathBuf, u8)> {
    let v1 = root.join("cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Ok((v1, 1));
    }
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "cpu") {
        return Ok((root.to_path_buf(), 2));
    }
    bail!(
        "no cgroup cpu controller under {} (neither v1 cpu/cpu.cfs_quota_us nor v2 cgroup.controllers with cpu): \
         --server-cpu needs one (mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu, or a v2 hierarchy with \
         +cpu in cgroup.subtree_control)",
        root.display()
    )
}

/// The files and values that set a quota of `share` cores, by cgroup version.
fn quota_files(version: u8, share: f64) -> Vec<(&'static str, String)> {
    let quota = ((share * PERIOD_US as f64).round() as u64).max(1000);
    match version {
        1 => vec![("cpu.cfs_period_us", PERIOD_US.to_string()), ("cpu.cfs_quota_us", quota.to_string())],
        _ => vec![("cpu.max", format!("{quota} {PERIOD_US}"))],
    }
}

impl CpuBudget {
    /// Makes cgroup `name` with `share` of one core, under /sys/fs/cgroup.
    pub fn create(name: &str, share: f64) -> anyhow::Result<CpuBudget> {
        let (hierarchy, version) = cpu_hierarchy(Path::new("/sys/fs/cgroup"))?;
        let dir = hierarchy.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create the cgroup {}", dir.display()))?;
        let budget = CpuBudget { dir };
        for (file, value) in quota_files(version, share) {
            let path = budget.dir.join(file);
            std::fs::write(&path, &value).with_context(|| format!("cannot write {value} to {}", path.display()))?;
        }
        Ok(budget)
    }

    /// Moves a process (all its threads) into the budget.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        let path = self.dir.join("cgroup.procs");
        std::fs::write(&path, pid.to_string()).with_context(|| format!("cannot move {pid} into {}", path.display()))
    }

    /// Seconds the processes in the budget were throttled (quota used up), so far.
    pub fn throttled_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        stat.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                let v: f64 = v.trim().parse().ok()?;
                match k {
                    "throttled_time" => Some(v / 1e9), // v1: nanoseconds
                    "throttled_usec" => Some(v / 1e6), // v2: microseconds
                    _ => None,
                }
            })
            .unwrap_or(0.0)
    }
}

impl Drop for CpuBudget {
    fn drop(&mut self) {
        // Empty once the server has exited; a cgroup directory is removed with rmdir.
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("storm: cannot remove the cgroup {}: {e} (rmdir it once empty)", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_core_in_both_versions() {
        assert_eq!(
            quota_files(1, 0.25),
            [("cpu.cfs_period_us", "10000".to_string()), ("cpu.cfs_quota_us", "2500".to_string())]
        );
        assert_eq!(quota_files(2, 0.25), [("cpu.max", "2500 10000".to_string())]);
        assert_eq!(quota_files(2, 2.0), [("cpu.max", "20000 10000".to_string())]);
        assert_eq!(quota_files(1, 0.0001)[1].1, "1000", "the kernel's least quota is 1 ms");
    }

    #[test]
    fn the_hierarchy_is_found_for_either_version() {
        let v1 = tempfile::tempdir().unwrap();
        std::fs::create_dir(v1.path().join("cpu")).unwrap();
        std::fs::write(v1.path().join("cpu/cpu.cfs_quota_us"), "-1").unwrap();
        assert_eq!(cpu_hierarchy(v1.path()).unwrap(), (v1.path().join("cpu"), 1));
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        assert_eq!(cpu_hierarchy(v2.path()).unwrap(), (v2.path().to_path_buf(), 2));
        let none = tempfile::tempdir().unwrap();
        let e = cpu_hierarchy(none.path()).unwrap_err().to_string();
        assert!(e.contains("--server-cpu needs one"), "{e}");
    }
}
