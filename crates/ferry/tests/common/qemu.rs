//! A real QEMU (software emulation, `timeout`-bounded) inside a network namespace, with
//! its serial console read line by line as it grows, each line stamped with the time
//! since QEMU was started (for boot time splits).

use super::Netns;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The Debian packages the QEMU tests need, as one command.
pub const INSTALL: &str =
    "apt-get install -y --no-install-recommends qemu-system-x86 ipxe-qemu busybox-static linux-image-amd64 binutils";

#[derive(Debug, Clone)]
pub struct SerialLine {
    /// Since QEMU was started.
    pub at: Duration,
    /// The line without ANSI escape sequences and control characters.
    pub text: String,
}

pub struct Qemu {
    child: Option<Child>,
    pidfile: PathBuf,
    pub log: PathBuf,
    pub stderr: PathBuf,
    lines: Arc<Mutex<Vec<SerialLine>>>,
    reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

/// Fails (never skips) with the command that installs what is missing.
pub fn require(what: &str, ok: bool) {
    assert!(ok, "{what} is missing: install the QEMU test prerequisites with `{INSTALL}` (scripts/test.sh does)");
}

/// The version of the kernel Debian's `linux-image-amd64` depends on (its
/// `/boot/vmlinuz-KVER` and `/lib/modules/KVER` with `wireguard.ko`).
pub fn debian_kernel() -> String {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Status}|${Depends}", "linux-image-amd64"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    require("linux-image-amd64", text.contains("install ok installed"));
    let kver = text
        .split(|c: char| c == '|' || c == ',' || c.is_whitespace())
        .find_map(|w| w.strip_prefix("linux-image-"))
        .filter(|k| !k.is_empty() && *k != "amd64")
        .unwrap_or_else(|| panic!("cannot tell the kernel version from linux-image-amd64's dependencies: {text}"))
        .to_owned();
    require(&format!("/boot/vmlinuz-{kver}"), Path::new(&format!("/boot/vmlinuz-{kver}")).is_file());
    let wg = format!("/lib/modules/{kver}/kernel/drivers/net/wireguard/wireguard.ko");
    let has_wg = ["", ".xz", ".zst", ".gz"].iter().any(|ext| Path::new(&format!("{wg}{ext}")).is_file());
    require(&format!("{wg}[.xz]"), has_wg);
    kver
}

/// Checks QEMU, the iPXE ROM QEMU loads for virtio-net, and busybox-static.
pub fn require_qemu() {
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    require("qemu-system-x86_64 (qemu-system-x86)", qemu.is_ok_and(|o| o.status.success()));
    let rom = ["/usr/share/qemu/efi-virtio.rom", "/usr/lib/ipxe/qemu/efi-virtio.rom"];
    require("iPXE's virtio ROM (ipxe-qemu)", rom.iter().any(|r| Path::new(r).is_file()));
    let static_bb = Command::new("ldd").arg("/bin/busybox").output().is_ok_and(|o| !o.status.success());
    require("a static /bin/busybox (busybox-static)", Path::new("/bin/busybox").is_file() && static_bb);
}

/// Drops ANSI escape sequences and control characters (iPXE and SGABIOS draw with them).
pub fn clean(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out.trim_end().to_owned()
}

impl Qemu {
    /// Starts `qemu-system-x86_64 ARGS -serial stdio -pidfile ...` in `netns`, bounded
    /// by `timeout LIMIT`. Files go into `dir`.
    pub fn spawn(netns: &Netns, dir: &Path, limit: Duration, args: &[String]) -> Qemu {
        let log = dir.join("serial.log");
        let stderr = dir.join("qemu.stderr");
        let pidfile = dir.join("qemu.pid");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut child = Command::new("timeout")
            .args(["-k", "5", &format!("{}", limit.as_secs())])
            .args(["ip", "netns", "exec", &netns.name, "qemu-system-x86_64"])
            .args(args)
            .args(["-serial", "stdio", "-pidfile"])
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("qemu stderr file"))
            .spawn()
            .expect("spawn timeout qemu-system-x86_64");
        let stdout = child.stdout.take().expect("qemu stdout");
        let (sink, path) = (lines.clone(), log.clone());
        let reader = std::thread::spawn(move || {
            let mut raw_log = std::fs::File::create(path).expect("serial log");
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let at = started.elapsed();
                        let _ = raw_log.write_all(&buf);
                        // Lines that only move the cursor are dropped.
                        let text = clean(&buf);
                        if !text.is_empty() {
                            sink.lock().unwrap().push(SerialLine { at, text });
                        }
                    }
                }
            }
        });
        Qemu { child: Some(child), pidfile, log, stderr, lines, reader: Some(reader), status: None }
    }

    /// Waits until QEMU exits (`Some(status)`) or `limit` passes (`None`, QEMU still runs).
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.status = Some(status);
                self.child = None;
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn lines(&self) -> Vec<SerialLine> {
        self.lines.lock().unwrap().clone()
    }

    /// The last `n` serial lines with their times, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        let from = lines.len().saturating_sub(n);
        let mut s: String = lines[from..].iter().map(|l| format!("{:7.2} {}\n", l.at.as_secs_f64(), l.text)).collect();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        if !err.trim().is_empty() {
            s.push_str(&format!("qemu stderr: {err}"));
        }
        s
    }

    /// Stops QEMU (SIGTERM, then SIGKILL) by the PIDs we own: the `timeout` process and
    /// QEMU's own (from its pidfile).
    pub fn kill(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let Some(mut child) = self.child.take() else { return };
        let qemu_pid = std::fs::read_to_string(&self.pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok());
        for sig in [Signal::SIGTERM, Signal::SIGKILL] {
            if let Some(pid) = qemu_pid {
                let _ = kill(Pid::from_raw(pid), sig);
            }
            let _ = kill(Pid::from_raw(child.id() as i32), sig);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
        }
        let _ = child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}
