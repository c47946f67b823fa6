//! `--failover`: a throwaway PostgreSQL primary and a streaming-replication standby
//! (Debian's binaries in /usr/lib/postgresql/*/bin: initdb, pg_basebackup -R, pg_ctl),
//! reachable on unix sockets only (the servers run in the lab's network namespace), and
//! the two steps of a failover: kill the primary, promote the standby.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgPair {
    dir: PathBuf,
    bin: PathBuf,
    /// The servers' URL: both hosts, the writable one wanted.
    pub url: String,
}

fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args)
        .output()
        .with_context(|| format!("cannot run {tool}"))?;
    if !out.status.success() {
        bail!("{tool} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn postgres_bin() -> anyhow::Result<PathBuf> {
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("pg_basebackup").exists())
        .collect();
    bins.sort_by_key(|b| b.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0));
    bins.pop().context("PostgreSQL is not installed (--failover runs its own): apt-get install postgresql")
}

impl PgPair {
    pub fn start() -> anyhow::Result<PgPair> {
        let bin = postgres_bin()?;
        Command::new("id")
            .arg("postgres")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .context("no postgres user (PostgreSQL refuses to run as root): apt-get install postgresql")?;
        let dir = std::env::temp_dir().join(format!("ferry-storm-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let pair = PgPair {
            url: format!(
                "postgres://postgres@localhost/postgres?host={d}/primary.sock,{d}/standby.sock&target_session_attrs=read-write",
                d = dir.display()
            ),
            dir,
            bin,
        };
        for sub in ["primary.sock", "standby.sock"] {
            std::fs::create_dir_all(pair.dir.join(sub))?;
        }
        sh(&["chown", "-R", "postgres:postgres", &pair.dir.display().to_string()])?;
        let data = |n: &str| pair.dir.join(n).display().to_string();
        as_postgres(&pair.bin, "initdb", &["-D", &data("primary"), "-A", "trust", "-U", "postgres", "-E", "UTF8"])?;
        pair.pg_ctl_start("primary")?;
        as_postgres(
            &pair.bin,
            "pg_basebackup",
            &["-D", &data("standby"), "-R", "-X", "stream", "-h", &data("primary.sock"), "-U", "postgres"],
        )?;
        pair.pg_ctl_start("standby")?;
        Ok(pair)
    }

    fn pg_ctl_start(&self, name: &str) -> anyhow::Result<()> {
        let data = self.dir.join(name).display().to_string();
        let sock = self.dir.join(format!("{name}.sock")).display().to_string();
        let log = self.dir.join(format!("{name}.log")).display().to_string();
        // Unix socket only; no fsync (a benchmark, thrown away); room for 8 servers' pools.
        let opts = format!(
            "-c listen_addresses= -k {sock} -c fsync=off -c full_page_writes=off -c max_connections=300 \
             -c wal_level=replica -c max_wal_senders=4 -c hot_standby=on"
        );
        as_postgres(&self.bin, "pg_ctl", &["-D", &data, "-l", &log, "-w", "-t", "60", "-o", &opts, "start"])
    }

    /// The postmaster's pid of `name`, from its postmaster.pid, if that process still
    /// runs on this data directory (a pid file outlives a killed server, and its pid
    /// may be reused by then).
    fn postmaster(&self, name: &str) -> Option<i32> {
        let data = self.dir.join(name);
        let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(&*data.to_string_lossy());
        ours.then_some(pid)
    }

    /// The primary dies as a machine does: SIGKILL to its postmaster and every process
    /// it started (by pid), so no backend lingers to answer.
    pub fn kill_primary(&self) -> anyhow::Result<()> {
        let pid = self.postmaster("primary").context("the primary is not running")?;
        let children = children_of(pid);
        kill9(pid);
        for child in children {
            kill9(child);
        }
        Ok(())
    }

    pub fn promote_standby(&self) -> anyhow::Result<()> {
        as_postgres(&self.bin, "pg_ctl", &["-D", &self.dir.join("standby").display().to_string(), "-w", "promote"])
    }

    pub fn stop(&self) {
        for name in ["standby", "primary"] {
            if let Some(pid) = self.postmaster(name) {
                let children = children_of(pid);
                kill9(pid);
                for child in children {
                    kill9(child);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(args[0]).args(&args[1..]).status().with_context(|| format!("cannot run {}", args[0]))?;
    anyhow::ensure!(status.success(), "{} failed", args.join(" "));
    Ok(())
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

/// The pids whose parent is `parent` (from /proc/*/stat).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            rest.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent)
        })
        .collect()
}
