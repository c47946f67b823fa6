//! The packages as an admin meets them (issue 21, items 1 and 2): `scripts/package.sh`
//! builds the .deb and the .rpm from this very build; the .deb is installed into a clean
//! Debian 12 root (`scripts/package-root.sh`, cached) booted with its own systemd
//! (systemd-nspawn, private network), where the installed `ferry serve` runs from
//! /usr/bin under the packaged unit and its sandbox, with the packaged
//! /etc/ferry/ferry.toml; a node is added, the package upgraded, removed and purged, and
//! the data directory survives each step. The .rpm is checked with `rpm -qlp` and
//! `rpm -qp --scripts`.

mod common;

use common::{eventually, require_root, unique};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    // At run time: a test binary reused from a shared target directory may have been
    // built in another checkout.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&dir).join("../..")
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The .deb and .rpm of the binary under test (`--profile dev --no-build`: the binary
/// cargo built for these tests, the same files and maintainer scripts as a release),
/// built once for both tests.
fn packages() -> (PathBuf, PathBuf) {
    static PACKAGES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PACKAGES.get_or_init(build_packages).clone()
}

fn build_packages() -> (PathBuf, PathBuf) {
    // One place, overwritten by each run (the packages are ~40 MB).
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packages");
    let _ = std::fs::remove_dir_all(&out);
    let stdout =
        ok(Command::new(repo().join("scripts/package.sh")).args(["--profile", "dev", "--no-build", "--out"]).arg(&out));
    let mut paths = stdout.lines().map(PathBuf::from);
    let deb = paths.next().expect("package.sh printed no .deb");
    let rpm = paths.next().expect("package.sh printed no .rpm");
    assert!(deb.extension().is_some_and(|e| e == "deb") && deb.is_file(), "{deb:?}");
    assert!(rpm.extension().is_some_and(|e| e == "rpm") && rpm.is_file(), "{rpm:?}");
    (deb, rpm)
}

fn package_root_tarball() -> PathBuf {
    let script = repo().join("scripts/package-root.sh");
    let path = PathBuf::from(ok(Command::new(&script).arg("--print-path")).trim());
    assert!(
        path.is_file(),
        "the clean Debian 12 root {} is missing: build it with `sudo scripts/package-root.sh` \
         (`sudo scripts/test.sh` does this before running the tests)",
        path.display()
    );
    path
}

/// A Debian 12 root booted by systemd-nspawn (its own systemd as PID 1, a private
/// network namespace, the host's TUN device for the userspace WireGuard backend).
/// Powered off and deleted on drop.
struct Booted {
    dir: PathBuf,
    root: PathBuf,
    nspawn: Child,
    init: u32,
}

impl Booted {
    fn boot(tarball: &Path) -> Booted {
        let dir = PathBuf::from(format!("/var/tmp/{}", unique("ferry-pkg")));
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        ok(Command::new("tar").arg("--zstd").arg("-xf").arg(tarball).arg("-C").arg(&root));
        let log = std::fs::File::create(dir.join("console.log")).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .arg("--quiet")
            .arg("-D")
            .arg(&root)
            .args(["--boot", "--register=no", "--keep-unit", "--private-network", "--bind=/dev/net/tun"])
            .arg(format!("--machine={}", unique("fpkg")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run systemd-nspawn ({e}): apt-get install -y systemd-container"));
        let mut booted = Booted { dir, root, nspawn, init: 0 };
        let nspawn_pid = booted.nspawn.id();
        eventually(30, "the container's init to start", || {
            let children = std::fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children"));
            match children.ok().and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok())) {
                Some(pid) => {
                    booted.init = pid;
                    true
                }
                None => false,
            }
        });
        // Seconds on an idle machine; far longer when other tests keep both cores busy.
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let state = booted.run(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
            if matches!(state.as_str(), "running" | "degraded") {
                break;
            }
            if Instant::now() > deadline {
                let jobs = booted.run(&["systemctl", "list-jobs", "--no-pager"]);
                let failed = booted.run(&["systemctl", "--failed", "--no-pager"]);
                panic!(
                    "systemd in the container did not finish booting in 240 s (state {state}); jobs:\n{}\nfailed:\n{}",
                    String::from_utf8_lossy(&jobs.stdout),
                    String::from_utf8_lossy(&failed.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        booted
    }

    /// A command inside the booted container (all its namespaces), as root.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.init.to_string(), "-m", "-u", "-i", "-n", "-p", "-C", "--"])
            .args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root"])
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&mut self.cmd(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} in the container failed ({}):\n{}\n{}\nferry's journal:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn journal(&self) -> String {
        String::from_utf8_lossy(&self.run(&["journalctl", "--no-pager", "-u", "ferry", "-n", "40"]).stdout).into_owned()
    }

    fn is_active(&self) -> String {
        String::from_utf8_lossy(&self.run(&["systemctl", "is-active", "ferry"]).stdout).trim().to_owned()
    }

    /// Waits for the service's admin socket to answer; returns `ferry node list`.
    fn wait_serving(&self) -> String {
        let mut listing = String::new();
        eventually(30, "the installed ferry service to answer on its admin socket", || {
            let out = self.run(&["ferry", "node", "list"]);
            listing = String::from_utf8_lossy(&out.stdout).into_owned();
            out.status.success()
        });
        listing
    }

    /// The data directory as the host sees it: file names.
    fn data_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join("var/lib/ferry"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        // SIGTERM: systemd-nspawn powers the container off; then by force.
        let pid = nix::unistd::Pid::from_raw(self.nspawn.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        if std::env::var_os("FERRY_TEST_KEEP_ROOTS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `/proc/PID/status` fields of the service's main process.
fn main_process_status(c: &Booted) -> String {
    let pid = c.ok(&["systemctl", "show", "ferry", "--property=MainPID", "--value"]);
    let pid = pid.trim();
    assert!(pid != "0" && !pid.is_empty(), "ferry.service has no main process:\n{}", c.journal());
    c.ok(&["cat", &format!("/proc/{pid}/status")])
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in /proc/PID/status:\n{status}"))
}

#[test]
fn deb_installs_runs_sandboxed_and_keeps_its_data_through_upgrade_and_removal() {
    require_root();
    let tarball = package_root_tarball();
    let (deb, _) = packages();

    let c = Booted::boot(&tarball);
    std::fs::copy(&deb, c.root.join("root/ferry.deb")).unwrap();
    c.ok(&["dpkg", "-i", "/root/ferry.deb"]);

    // Installed, not started: the admin reviews the configuration first.
    assert_eq!(c.is_active(), "inactive");
    let enabled = c.run(&["systemctl", "is-enabled", "ferry"]);
    assert_eq!(String::from_utf8_lossy(&enabled.stdout).trim(), "disabled");
    assert!(c.ok(&["getent", "passwd", "ferry"]).contains(":/var/lib/ferry:/usr/sbin/nologin"));
    assert_eq!(c.ok(&["stat", "-c", "%a %U:%G", "/etc/ferry/ferry.toml"]).trim(), "640 root:ferry");
    assert_eq!(c.ok(&["stat", "-c", "%a %U:%G", "/var/lib/ferry"]).trim(), "700 ferry:ferry");
    for page in
        ["usr/share/man/man1/ferry.1.gz", "usr/share/man/man5/ferry.toml.5.gz", "usr/share/doc/ferry/operations.md"]
    {
        assert!(c.root.join(page).is_file(), "{page} is not installed");
    }

    // The installed binary, the installed unit, the installed configuration.
    c.ok(&["systemctl", "start", "ferry"]);
    c.wait_serving();
    assert_eq!(c.is_active(), "active");
    let unit = c.ok(&["systemctl", "show", "ferry", "--property=ExecStart", "--property=User"]);
    assert!(unit.contains("path=/usr/bin/ferry") && unit.contains("/etc/ferry/ferry.toml"), "{unit}");

    // The sandbox is the unit's: the ferry user, exactly CAP_NET_ADMIN and
    // CAP_NET_BIND_SERVICE (bits 12 and 10), no new privileges. (Its seccomp filters are
    // not told apart here from those systemd-nspawn puts on the whole container; the
    // exposure score below covers them.)
    let status = main_process_status(&c);
    let ferry_uid = c.ok(&["id", "-u", "ferry"]);
    assert!(status_field(&status, "Uid").starts_with(ferry_uid.trim()), "{status}");
    for caps in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(status_field(&status, caps), "0000000000001400", "{caps}: {status}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    // Its file system: read-only but for its state directory (the last mount on a
    // point is the one it sees).
    let mounts = c.ok(&["cat", &format!("/proc/{}/mountinfo", status_field(&status, "Pid"))]);
    let options = |point: &str| {
        mounts
            .lines()
            .rev()
            .find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(4) == Some(&point)).then(|| f.get(5).copied().unwrap_or_default().to_owned())
            })
            .unwrap_or_default()
    };
    assert!(options("/").starts_with("ro"), "/ is writable for the service:\n{mounts}");
    assert!(options("/var/lib/ferry").starts_with("rw"), "its data directory is not writable:\n{mounts}");

    // And under it the server works: its WireGuard device, its ports, its data directory.
    let wg = c.ok(&["wg", "show", "ferry0"]);
    assert!(wg.contains("listening port: 51820"), "{wg}");
    let listening = c.ok(&["ss", "-Hltn"]);
    assert!(listening.contains("0.0.0.0:8470"), "provisioning listener missing:\n{listening}");
    assert!(listening.contains("100.64.0.1:8471"), "datasource listener missing:\n{listening}");
    let code = c.ok(&["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:8470/"]);
    assert!(code.trim().len() == 3 && code.trim() != "000", "provisioning did not answer: {code}");
    c.ok(&["ferry", "node", "add", "n1", "--mac", "52:54:00:00:00:01"]);
    assert!(c.wait_serving().contains("52:54:00:00:00:01"));
    for file in ["ferry.db", "secrets.key", "wireguard.key"] {
        assert!(c.data_files().contains(&file.to_owned()), "{file} missing: {:?}", c.data_files());
    }

    // A fresh install passes `ferry doctor` (warnings allowed: no dnsmasq set up, maybe
    // no kernel WireGuard module on this host).
    let doctor = c.ok(&["ferry", "doctor"]);
    assert!(doctor.lines().count() == 10 && !doctor.contains("FAIL"), "{doctor}");

    // The measured exposure of the unit, by the systemd that runs it.
    let security = c.ok(&["systemd-analyze", "security", "--no-pager", "ferry.service"]);
    let score: f64 = security
        .lines()
        .find_map(|l| l.split("Overall exposure level for ferry.service:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    eprintln!("systemd-analyze security ferry.service: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{security}");

    // Upgrade (dpkg runs a reinstall as one: prerm upgrade, postinst configure): the
    // running service is restarted, its data kept.
    let before = status_field(&main_process_status(&c), "Pid").to_owned();
    c.ok(&["dpkg", "-i", "/root/ferry.deb"]);
    assert!(c.wait_serving().contains("52:54:00:00:00:01"), "the node is gone after an upgrade");
    assert_ne!(status_field(&main_process_status(&c), "Pid"), before, "the upgrade did not restart the service");

    // Removal stops the service and keeps the data; so does purge (only the
    // configuration goes).
    c.ok(&["dpkg", "-r", "ferry"]);
    assert_eq!(c.is_active(), "inactive");
    assert!(!c.root.join("usr/bin/ferry").exists());
    for file in ["ferry.db", "secrets.key", "wireguard.key"] {
        assert!(c.data_files().contains(&file.to_owned()), "{file} removed with the package: {:?}", c.data_files());
    }
    c.ok(&["dpkg", "-P", "ferry"]);
    assert!(!c.root.join("etc/ferry/ferry.toml").exists(), "purge kept the configuration");
    assert!(c.data_files().contains(&"ferry.db".to_owned()), "purge removed the data: {:?}", c.data_files());

    // Installed again, the server finds its inventory and its keys.
    c.ok(&["dpkg", "-i", "/root/ferry.deb"]);
    c.ok(&["systemctl", "start", "ferry"]);
    assert!(c.wait_serving().contains("52:54:00:00:00:01"), "the inventory did not survive removal");
}

#[test]
fn rpm_carries_the_same_files_and_scripts_that_keep_the_data() {
    let (_, rpm) = packages();
    let rpm_cmd = |args: &[&str]| {
        let out = Command::new("rpm")
            .args(args)
            .arg(&rpm)
            .env("LANG", "C")
            .output()
            .unwrap_or_else(|e| panic!("cannot run rpm ({e}): apt-get install -y rpm"));
        assert!(out.status.success(), "rpm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let files = rpm_cmd(&["-qlp"]);
    for path in [
        "/usr/bin/ferry",
        "/usr/lib/systemd/system/ferry.service",
        "/etc/ferry/ferry.toml",
        "/usr/lib/ferry/setup.sh",
        "/usr/lib/modules-load.d/ferry.conf",
        "/usr/share/man/man1/ferry.1",
        "/usr/share/man/man1/ferry-import-warewulf.1",
        "/usr/share/man/man5/ferry.toml.5",
        "/usr/share/bash-completion/completions/ferry",
        "/usr/share/zsh/site-functions/_ferry",
        "/usr/share/fish/vendor_completions.d/ferry.fish",
        "/usr/share/doc/ferry/operations.md",
    ] {
        assert!(files.lines().any(|l| l == path), "{path} is not in the rpm:\n{files}");
    }
    assert!(rpm_cmd(&["-qcp"]).lines().any(|l| l == "/etc/ferry/ferry.toml"), "ferry.toml is not a config file");
    let scripts = rpm_cmd(&["-qp", "--scripts"]);
    assert!(scripts.contains("postinstall") && scripts.contains("/usr/lib/ferry/setup.sh"), "{scripts}");
    assert!(scripts.contains("preuninstall") && scripts.contains("systemctl disable --now ferry.service"), "{scripts}");
    assert!(!scripts.contains("rm "), "a package script removes something:\n{scripts}");
    // The setup script creates the user and the data directory and removes nothing.
    let setup = std::fs::read_to_string(repo().join("contrib/packaging/setup.sh")).unwrap();
    assert!(
        setup.contains("useradd --system") && setup.contains("install -d -m 0700 -o ferry -g ferry /var/lib/ferry")
    );
    assert!(!setup.contains("rm "), "setup.sh removes something");
}
