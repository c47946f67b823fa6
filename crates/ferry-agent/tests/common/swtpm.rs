//! A software TPM for tests: a local certificate authority (`swtpm_localca`) in a
//! test-owned directory, TPMs manufactured with an EK certificate it signs
//! (`swtpm_setup`), and `swtpm socket` processes on free 127.0.0.1 ports, killed by PID
//! when dropped.
//!
//! ```ignore
//! let ca = LocalCa::new(&dir.path().join("ca"));
//! let mut tpm = Swtpm::manufacture(&dir.path().join("tpm-a"), &ca);
//! let tcti = tpm.start();          // "swtpm:host=127.0.0.1,port=P"
//! // ... ferry_agent::tpm::Tpm::open(&tcti), or tpm2-tools with tpm.tool(...)
//! tpm.stop();                      // and start() again: a reboot (PCRs reset)
//! ```
//!
//! Drop a `Swtpm` before the directory it lives in (declare it after the `TempDir`).
//!
//! Needs swtpm, swtpm_setup, swtpm_localca (swtpm, swtpm-tools) and, for `tool`,
//! tpm2-tools; a missing program panics naming the packages. Shared by
//! crates/ferry-agent/tests and crates/ferry/tests (`#[path]`-included), so it uses only
//! the standard library.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What to install when a program is missing.
pub const INSTALL_HINT: &str = "apt-get install swtpm swtpm-tools tpm2-tools";

/// Panics unless `program` is on PATH (or in /usr/bin), naming the packages to install.
pub fn require(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed; these tests need a software TPM: {INSTALL_HINT}"))
}

/// How long a tool may run (a raw swtpm serves one connection at a time: a tool waits
/// while another client holds the TPM).
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a command (at most [`TOOL_TIMEOUT`]), panicking with its output when it fails.
fn run(cmd: &mut Command, what: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} ({cmd:?}): {e} ({INSTALL_HINT})"));
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = done.send(());
        out
    });
    if finished.recv_timeout(TOOL_TIMEOUT).is_err() {
        // Still running: kill it by PID (the waiter then reaps it).
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        let _ = waiter.join();
        panic!(
            "{what} did not finish within {} s: {cmd:?} (is another client holding the TPM?)",
            TOOL_TIMEOUT.as_secs()
        );
    }
    let out = waiter.join().expect("waiter thread").unwrap_or_else(|e| panic!("cannot wait for {what} ({cmd:?}): {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {cmd:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A local certificate authority, as `swtpm_localca` makes it: a root CA and an
/// intermediate ("issuer") that signs EK certificates. Every `LocalCa` has its own keys.
pub struct LocalCa {
    dir: PathBuf,
}

impl LocalCa {
    /// Creates the CA in `dir` (created if missing): `swtpm_localca` makes the root and
    /// the issuer on its first certificate, so it is asked for one throwaway EK certificate.
    pub fn new(dir: &Path) -> Self {
        let localca = require("swtpm_localca");
        require("certtool");
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap_or_else(|e| panic!("cannot create {}: {e}", state.display()));
        let ca = LocalCa { dir: dir.to_path_buf() };
        write(
            &ca.config(),
            &format!(
                "statedir = {s}\nsigningkey = {s}/signkey.pem\nissuercert = {s}/issuercert.pem\n\
                 certserial = {s}/certserial\n",
                s = state.display()
            ),
        );
        write(&ca.options(), "--platform-manufacturer ferry-test\n--platform-version 2.1\n--platform-model swtpm\n");
        let scratch = dir.join("bootstrap");
        std::fs::create_dir_all(&scratch).unwrap_or_else(|e| panic!("cannot create {}: {e}", scratch.display()));
        let dummy_modulus = "c5".repeat(256);
        run(
            Command::new(localca)
                .args(["--type", "ek", "--ek", &dummy_modulus, "--dir"])
                .arg(&scratch)
                .args(["--tpm2", "--tpm-manufacturer", "id:00001014", "--tpm-model", "swtpm"])
                .args(["--tpm-version", "id:20191023", "--tpm-spec-family", "2.0", "--tpm-spec-level", "0"])
                .args(["--tpm-spec-revision", "164", "--configfile"])
                .arg(ca.config())
                .arg("--optsfile")
                .arg(ca.options()),
            "swtpm_localca (creating the test CA)",
        );
        let _ = std::fs::remove_dir_all(&scratch);
        for cert in [ca.root_cert(), ca.issuer_cert()] {
            assert!(cert.is_file(), "swtpm_localca made no {}", cert.display());
        }
        let bundle = [ca.root_cert(), ca.issuer_cert()]
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display())))
            .collect::<String>();
        write(&ca.bundle(), &bundle);
        ca
    }

    /// The directory the CA lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The self-signed root certificate (PEM).
    pub fn root_cert(&self) -> PathBuf {
        self.dir.join("state/swtpm-localca-rootca-cert.pem")
    }

    /// The intermediate that signs the EK certificates (PEM; issued by the root).
    pub fn issuer_cert(&self) -> PathBuf {
        self.dir.join("state/issuercert.pem")
    }

    /// Root and issuer certificates concatenated (PEM): a CA bundle for the server.
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("ca-bundle.pem")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("swtpm-localca.conf")
    }

    fn options(&self) -> PathBuf {
        self.dir.join("swtpm-localca.options")
    }
}

/// A manufactured software TPM (state directory), running or not.
pub struct Swtpm {
    dir: PathBuf,
    child: Option<Child>,
    port: u16,
}

impl Swtpm {
    /// Manufactures a TPM 2.0 in `dir/state` (about 1 s): RSA and ECC EKs with
    /// certificates signed by `ca`, a platform certificate, SHA-256 PCR bank, NV locked.
    pub fn manufacture(dir: &Path, ca: &LocalCa) -> Self {
        let setup = require("swtpm_setup");
        require("swtpm");
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap_or_else(|e| panic!("cannot create {}: {e}", state.display()));
        let config = dir.join("swtpm_setup.conf");
        write(
            &config,
            &format!(
                "create_certs_tool = {}\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\n\
                 active_pcr_banks = sha256\n",
                require("swtpm_localca").display(),
                ca.config().display(),
                ca.options().display()
            ),
        );
        run(
            Command::new(setup)
                .args(["--tpm2", "--tpmstate"])
                .arg(&state)
                .arg("--config")
                .arg(&config)
                .args(["--create-ek-cert", "--create-platform-cert", "--lock-nvram", "--overwrite"])
                .arg("--logfile")
                .arg(dir.join("swtpm_setup.log")),
            "swtpm_setup (manufacturing a test TPM)",
        );
        Swtpm { dir: dir.to_path_buf(), child: None, port: 0 }
    }

    /// Starts `swtpm socket` on free 127.0.0.1 ports (server P, control P+1), waits until
    /// it accepts connections, and returns the TCTI. Starting again after [`Swtpm::stop`]
    /// is a reboot: PCRs and transient objects are reset.
    pub fn start(&mut self) -> String {
        assert!(self.child.is_none(), "swtpm is already running");
        let swtpm = require("swtpm");
        for _ in 0..5 {
            // The swtpm TCTI expects the control channel on the next port.
            let port = free_port_pair();
            let ctrl = port + 1;
            let mut child = Command::new(&swtpm)
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", self.dir.join("state").display()))
                .args(["--server", &format!("type=tcp,port={port},bindaddr=127.0.0.1")])
                .args(["--ctrl", &format!("type=tcp,port={ctrl},bindaddr=127.0.0.1")])
                .args(["--flags", "not-need-init,startup-clear"])
                .arg("--log")
                .arg(format!("file={},level=1", self.dir.join("swtpm.log").display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start swtpm: {e} ({INSTALL_HINT})"));
            let began = Instant::now();
            while began.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost a race for the port: try others
                }
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    self.child = Some(child);
                    self.port = port;
                    return self.tcti();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("swtpm did not start; see {}", self.dir.join("swtpm.log").display());
    }

    /// Kills the running swtpm (by PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The TCTI of the running swtpm, for tss-esapi and `TPM2TOOLS_TCTI`.
    pub fn tcti(&self) -> String {
        assert!(self.child.is_some(), "swtpm is not running: call start()");
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The PID of the running swtpm.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The TPM's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A tpm2-tools command (`tpm2_` + `name`) aimed at this TPM.
    pub fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(require(&format!("tpm2_{name}")));
        cmd.env("TPM2TOOLS_TCTI", self.tcti());
        cmd
    }

    /// Runs a tpm2-tools command against this TPM; panics when it fails.
    pub fn run_tool(&self, name: &str, args: &[&str]) -> Output {
        run(self.tool(name).args(args), &format!("tpm2_{name}"))
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port P such that nothing listens on P and P+1 right now.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
        let port = first.local_addr().expect("local address").port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("found no two free consecutive ports on 127.0.0.1");
}
