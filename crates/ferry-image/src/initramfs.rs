//! The node initramfs: a gzip-compressed `newc` archive that boots a diskless node to
//! the point where it has its cloud-init seed, then hands over to the image.
//!
//! It holds busybox (static: `sh`, `udhcpc`, `ip`, `insmod`, `switch_root`, ... as
//! symbolic links), the `ferry` binary with the shared libraries and dynamic loader
//! `ldd` names, the kernel modules for the network driver and WireGuard (with their
//! dependencies, in load order, decompressed), a udhcpc event script and `/init`
//! (`initramfs/init.sh`): mount, load modules, DHCP, `ferry agent --mode fetch
//! --wg-backend kernel` — which, with `root=tmpfs`, also unpacks the image's root into
//! the tmpfs `/init` mounted on `/newroot` — then power off (`ferry.test=poweroff`) or
//! switch to the image. The initramfs carries no image: the same one boots every image.

use crate::cpio::CpioWriter;
use modules::{kernel_and_modules, module_name, read_module, strip_compression, ModuleIndex};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

mod modules;

/// The `/init` script.
pub const INIT_SCRIPT: &str = include_str!("initramfs/init.sh");
/// udhcpc's event script (`/usr/share/udhcpc/default.script`).
pub const UDHCPC_SCRIPT: &str = include_str!("initramfs/udhcpc.script");

/// Modules loaded by default: virtio network (QEMU, most clouds) and WireGuard.
/// Dependencies (`virtio`, `failover`, `udp_tunnel`, the crypto libraries, ...) are
/// added from `modules.dep`; modules built into the kernel are left out.
pub const DEFAULT_MODULES: &[&str] = &["virtio_pci", "virtio_net", "wireguard"];

/// Where the parts go inside the initramfs.
pub const FERRY_PATH: &str = "usr/bin/ferry";
pub const BUSYBOX_PATH: &str = "bin/busybox";
pub const MODULE_LIST_PATH: &str = "lib/ferry/modules";
pub const KERNEL_VERSION_PATH: &str = "lib/ferry/kernel-version";
/// The server pins baked in (`InitramfsOptions::pins`); the agent's `--pins-file`
/// default (`ferry_agent::baked::BAKED_PINS_PATH`).
pub const PINS_PATH: &str = "etc/ferry/pins";

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// Something the build needs is not on this machine; `fix` says how to get it.
    #[error("{what} not found at {path}: {fix}")]
    Missing { what: String, path: String, fix: String },
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: String, source: io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InitramfsError + 'a {
    move |source| InitramfsError::Io { action, path: path.display().to_string(), source }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct InitramfsOptions {
    /// The archive to write (replaced atomically).
    pub output: PathBuf,
    /// The kernel the modules are for. Default: the version named by `modules_dir`,
    /// else the running kernel if its modules are installed, else the only kernel in
    /// `/lib/modules`.
    pub kernel_version: Option<String>,
    /// The kernel's module tree. Default: `/lib/modules/KERNEL_VERSION`.
    pub modules_dir: Option<PathBuf>,
    /// Modules to load at boot (names as `modprobe` takes them).
    pub modules: Vec<String>,
    /// A static busybox (Debian: `busybox-static`).
    pub busybox: PathBuf,
    /// The ferry binary to include. Default: the running one.
    pub ferry: Option<PathBuf>,
    /// Strip the ferry binary's symbols and debug information (`strip --strip-all`,
    /// when binutils is installed): a smaller initramfs boots faster.
    pub strip: bool,
    /// gzip level, 0–9.
    pub compression: u32,
    /// The server pins to bake in (`ferry.server=`, `ferry.pubkey=`, `ferry.tls=` in
    /// kernel command line syntax, as `ferry_agent::baked::render` writes them): the
    /// agent prefers them over the kernel command line, which the boot channel can
    /// rewrite. Written to [`PINS_PATH`].
    pub pins: Option<String>,
}

impl InitramfsOptions {
    pub fn new(output: impl Into<PathBuf>) -> InitramfsOptions {
        InitramfsOptions {
            output: output.into(),
            kernel_version: None,
            modules_dir: None,
            modules: DEFAULT_MODULES.iter().map(|s| s.to_string()).collect(),
            busybox: PathBuf::from("/bin/busybox"),
            ferry: None,
            strip: true,
            compression: 6,
            pins: None,
        }
    }
}

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitramfsSummary {
    pub output: PathBuf,
    pub kernel_version: String,
    /// Module files in load order, relative to the module tree (`kernel/net/...ko`).
    pub modules: Vec<String>,
    /// Requested modules that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// Shared libraries and the dynamic loader, at the paths `ldd` gave.
    pub libraries: Vec<PathBuf>,
    pub ferry: PathBuf,
    pub ferry_stripped: bool,
    /// Whether server pins were baked in.
    pub pinned: bool,
    pub entries: usize,
    pub uncompressed_bytes: u64,
    pub compressed_bytes: u64,
}

/// Builds the initramfs described by `opts`.
pub fn build_initramfs(opts: &InitramfsOptions) -> Result<InitramfsSummary, InitramfsError> {
    build_initramfs_with_progress(opts, &mut |_| {})
}

/// [`build_initramfs`], reporting each step (one line) to `progress`.
pub fn build_initramfs_with_progress(
    opts: &InitramfsOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<InitramfsSummary, InitramfsError> {
    if opts.compression > 9 {
        return Err(InitramfsError::Invalid(format!("gzip level {} is not 0-9", opts.compression)));
    }
    let (kver, modules_dir) = kernel_and_modules(opts.kernel_version.as_deref(), opts.modules_dir.as_deref())?;
    let modules = ModuleIndex::load(&modules_dir)?;
    let (order, builtin) = modules.resolve(&opts.modules)?;
    progress(&format!(
        "kernel {kver}: {} module(s) to load: {}",
        order.len(),
        order.iter().map(|m| module_name(m)).collect::<Vec<_>>().join(" ")
    ));

    check_executable(&opts.busybox, "busybox", "install it: apt-get install -y busybox-static")?;
    let applets = busybox_applets(&opts.busybox)?;
    if !busybox_libraries(&opts.busybox)?.is_empty() {
        return Err(InitramfsError::Invalid(format!(
            "{} is dynamically linked; the initramfs needs a static busybox (apt-get install -y busybox-static)",
            opts.busybox.display()
        )));
    }

    let ferry = match &opts.ferry {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(io_err("find the running program", Path::new("ferry")))?,
    };
    check_executable(&ferry, "the ferry binary", "build it (cargo build --release) or name it with --ferry")?;
    let libraries = with_loaded_plugins(shared_libraries(&ferry)?)?;
    progress(&format!(
        "ferry {}: {} shared librar{} ({})",
        ferry.display(),
        libraries.len(),
        if libraries.len() == 1 { "y" } else { "ies" },
        libraries.iter().map(|l| l.display().to_string()).collect::<Vec<_>>().join(", ")
    ));
    let scratch = tempfile::tempdir().map_err(io_err("create a temporary directory", Path::new("/tmp")))?;
    let (ferry_file, stripped) = if opts.strip { strip(&ferry, scratch.path())? } else { (ferry.clone(), false) };
    if opts.strip && !stripped {
        progress("strip (binutils) is not installed: including the ferry binary with its debug information");
    }

    let dir = opts.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".initramfs-")
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file next to", &opts.output))?;
    let out = CountingWriter { inner: BufWriter::with_capacity(1 << 20, tmp.as_file()), count: 0 };
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::new(opts.compression));
    let mut cpio = CpioWriter::new(gz);
    let w = |e: io::Error| InitramfsError::Io { action: "write", path: opts.output.display().to_string(), source: e };

    for (d, perm) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("newroot", 0o755),
    ] {
        cpio.dir(d, perm).map_err(w)?;
    }
    cpio.char_device("dev/console", 0o600, 5, 1).map_err(w)?;
    cpio.char_device("dev/null", 0o666, 1, 3).map_err(w)?;
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes()).map_err(w)?;
    cpio.file("usr/share/udhcpc/default.script", 0o755, UDHCPC_SCRIPT.as_bytes()).map_err(w)?;
    if let Some(pins) = &opts.pins {
        cpio.dir("etc/ferry", 0o755).map_err(w)?;
        cpio.file(PINS_PATH, 0o644, pins.as_bytes()).map_err(w)?;
        progress(&format!(
            "server pins baked into /{PINS_PATH}: {}",
            pins.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    cpio.file(
        "etc/ferry-initramfs",
        0o644,
        format!("ferry {} initramfs for kernel {kver}\n", env!("CARGO_PKG_VERSION")).as_bytes(),
    )
    .map_err(w)?;

    add_file(&mut cpio, BUSYBOX_PATH, 0o755, &opts.busybox)?;
    for applet in &applets {
        let path = applet.trim_start_matches('/');
        if path.is_empty() || path == "init" || path == "linuxrc" || cpio.contains(path) {
            continue;
        }
        cpio.symlink(path, "/bin/busybox").map_err(w)?;
    }
    progress(&format!("busybox {}: {} applets", opts.busybox.display(), applets.len()));

    add_file(&mut cpio, FERRY_PATH, 0o755, &ferry_file)?;
    for lib in &libraries {
        let real = std::fs::canonicalize(lib).map_err(io_err("resolve", lib))?;
        add_file(&mut cpio, &lib.to_string_lossy(), 0o755, &real)?;
    }

    let mut list = String::new();
    for rel in &order {
        let src = modules_dir.join(rel);
        let data = read_module(&src)?;
        let dest_rel = strip_compression(rel);
        cpio.file(&format!("lib/modules/{kver}/{dest_rel}"), 0o644, &data).map_err(w)?;
        list.push_str(dest_rel);
        list.push('\n');
    }
    cpio.file(MODULE_LIST_PATH, 0o644, list.as_bytes()).map_err(w)?;
    cpio.file(KERNEL_VERSION_PATH, 0o644, format!("{kver}\n").as_bytes()).map_err(w)?;

    let entries = cpio.entries();
    let uncompressed_bytes = cpio.bytes_written();
    let gz = cpio.finish().map_err(w)?;
    let mut out = gz.finish().map_err(w)?;
    out.flush().map_err(w)?;
    let compressed_bytes = out.count;
    drop(out);
    tmp.as_file().sync_all().map_err(w)?;
    set_mode(tmp.path(), 0o644).map_err(w)?;
    tmp.persist(&opts.output).map_err(|e| w(e.error))?;
    progress(&format!(
        "wrote {}: {} entries, {:.1} MiB ({:.1} MiB unpacked)",
        opts.output.display(),
        entries,
        compressed_bytes as f64 / 1048576.0,
        uncompressed_bytes as f64 / 1048576.0
    ));
    Ok(InitramfsSummary {
        output: opts.output.clone(),
        kernel_version: kver,
        modules: order.iter().map(|m| strip_compression(m).to_owned()).collect(),
        builtin,
        libraries,
        ferry,
        ferry_stripped: stripped,
        pinned: opts.pins.is_some(),
        entries,
        uncompressed_bytes,
        compressed_bytes,
    })
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

struct CountingWriter<W: Write> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn add_file<W: Write>(cpio: &mut CpioWriter<W>, dest: &str, perm: u32, src: &Path) -> Result<(), InitramfsError> {
    let mut f = File::open(src).map_err(io_err("read", src))?;
    let size = f.metadata().map_err(io_err("read", src))?.len();
    cpio.file_from(dest, perm, size, &mut f).map_err(io_err("archive", src))
}

fn check_executable(path: &Path, what: &str, fix: &str) -> Result<(), InitramfsError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        _ => Err(InitramfsError::Missing { what: what.into(), path: path.display().to_string(), fix: fix.into() }),
    }
}

/// The applets of a busybox binary (`busybox --list-full`: `bin/sh`, `sbin/ip`, ...).
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, InitramfsError> {
    let out = Command::new(busybox).arg("--list-full").output().map_err(io_err("run", busybox))?;
    if !out.status.success() {
        return Err(InitramfsError::Invalid(format!(
            "{} --list-full failed: {}",
            busybox.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let applets: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_owned()).collect();
    for needed in ["bin/sh", "sbin/udhcpc", "sbin/ip", "sbin/insmod", "sbin/switch_root", "sbin/poweroff"] {
        let name = needed.rsplit('/').next().unwrap_or(needed);
        if !applets.iter().any(|a| a.rsplit('/').next() == Some(name)) {
            return Err(InitramfsError::Invalid(format!(
                "{} has no `{name}` applet: use Debian's busybox-static",
                busybox.display()
            )));
        }
    }
    Ok(applets)
}

/// Libraries loaded with `dlopen`, which `ldd` cannot see: the TPM's TCTI loader opens
/// the device TCTI at run time (`ferry.tpm` on a node), so it and its own libraries go
/// in when the loader does.
fn with_loaded_plugins(mut libraries: Vec<PathBuf>) -> Result<Vec<PathBuf>, InitramfsError> {
    let loaders: Vec<PathBuf> = libraries
        .iter()
        .filter(|l| l.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libtss2-tctildr.so")))
        .cloned()
        .collect();
    for loader in loaders {
        let device = loader.with_file_name("libtss2-tcti-device.so.0");
        if device.exists() {
            libraries.extend(shared_libraries(&device)?);
            libraries.push(device);
        }
    }
    libraries.sort();
    libraries.dedup();
    Ok(libraries)
}

fn busybox_libraries(busybox: &Path) -> Result<Vec<PathBuf>, InitramfsError> {
    shared_libraries(busybox)
}

/// The shared libraries and the dynamic loader a binary needs, as `ldd` lists them
/// (none for a static binary).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, InitramfsError> {
    let out = match Command::new("ldd").arg(binary).output() {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(InitramfsError::Missing {
                what: "ldd".into(),
                path: "PATH".into(),
                fix: "install it: apt-get install -y libc-bin".into(),
            })
        }
        Err(e) => return Err(io_err("run ldd on", binary)(e)),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stdout.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(InitramfsError::Invalid(format!("ldd {} failed: {}", binary.display(), stderr.trim())));
    }
    parse_ldd(&stdout).map_err(|e| InitramfsError::Invalid(format!("ldd {}: {e}", binary.display())))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.contains("statically linked") || line.contains("not a dynamic executable") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("library {} not found", name.trim()));
                }
                rest.split_whitespace().next().unwrap_or("")
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        // linux-vdso.so.1 (0x...) has no file; everything else is an absolute path.
        if path.starts_with('/') {
            libs.insert(path.to_owned(), ());
        }
    }
    Ok(libs.into_keys().map(PathBuf::from).collect())
}

/// A copy of `binary` without symbols and debug information, or the binary itself
/// when `strip` is not installed.
fn strip(binary: &Path, scratch: &Path) -> Result<(PathBuf, bool), InitramfsError> {
    let dest = scratch.join("ferry");
    match Command::new("strip").arg("--strip-all").arg("-o").arg(&dest).arg(binary).output() {
        Ok(o) if o.status.success() => Ok((dest, true)),
        Ok(o) => Err(InitramfsError::Invalid(format!(
            "strip --strip-all {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((binary.to_owned(), false)),
        Err(e) => Err(io_err("run strip on", binary)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/net/wireguard/wireguard.ko.xz: kernel/arch/x86/crypto/curve25519-x86_64.ko.xz kernel/lib/crypto/libchacha20poly1305.ko.xz kernel/net/ipv4/udp_tunnel.ko.xz kernel/net/ipv6/ip6_udp_tunnel.ko.xz
kernel/lib/crypto/libchacha20poly1305.ko.xz: kernel/arch/x86/crypto/chacha-x86_64.ko.xz kernel/arch/x86/crypto/poly1305-x86_64.ko.xz kernel/lib/crypto/libchacha.ko.xz
kernel/arch/x86/crypto/chacha-x86_64.ko.xz: kernel/lib/crypto/libchacha.ko.xz
kernel/arch/x86/crypto/poly1305-x86_64.ko.xz:
kernel/lib/crypto/libchacha.ko.xz:
kernel/arch/x86/crypto/curve25519-x86_64.ko.xz: kernel/lib/crypto/libcurve25519-generic.ko.xz
kernel/lib/crypto/libcurve25519-generic.ko.xz:
kernel/net/ipv4/udp_tunnel.ko.xz:
kernel/net/ipv6/ip6_udp_tunnel.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
";

    fn names(order: &[String]) -> Vec<String> {
        order.iter().map(|p| module_name(p)).collect()
    }

    #[test]
    fn dependencies_load_first_each_once() {
        let idx = ModuleIndex::parse(DEP, "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/virtio/virtio.ko\n");
        let wanted: Vec<String> = ["virtio-pci", "virtio_net", "wireguard"].iter().map(|s| s.to_string()).collect();
        let (order, builtin) = idx.resolve(&wanted).unwrap();
        let order = names(&order);
        assert_eq!(builtin, ["virtio_pci"]);
        assert_eq!(order.len(), 12, "{order:?}");
        let pos = |m: &str| order.iter().position(|o| o == m).unwrap_or_else(|| panic!("{m} in {order:?}"));
        for (before, after) in [
            ("failover", "net_failover"),
            ("net_failover", "virtio_net"),
            ("libchacha", "chacha_x86_64"),
            ("libchacha", "libchacha20poly1305"),
            ("chacha_x86_64", "libchacha20poly1305"),
            ("poly1305_x86_64", "libchacha20poly1305"),
            ("libcurve25519_generic", "curve25519_x86_64"),
            ("udp_tunnel", "wireguard"),
            ("ip6_udp_tunnel", "wireguard"),
            ("libchacha20poly1305", "wireguard"),
            ("curve25519_x86_64", "wireguard"),
        ] {
            assert!(pos(before) < pos(after), "{before} before {after}: {order:?}");
        }
    }

    #[test]
    fn unknown_modules_and_cycles_are_errors() {
        let idx = ModuleIndex::parse(DEP, "");
        let err = idx.resolve(&["nosuch".into()]).unwrap_err().to_string();
        assert!(err.contains("no module \"nosuch\""), "{err}");
        let cyclic = ModuleIndex::parse("a.ko: b.ko\nb.ko: a.ko\n", "");
        assert!(cyclic.resolve(&["a".into()]).unwrap_err().to_string().contains("cycle"));
    }

    #[test]
    fn module_names_and_suffixes() {
        assert_eq!(module_name("kernel/arch/x86/crypto/curve25519-x86_64.ko.xz"), "curve25519_x86_64");
        assert_eq!(module_name("virtio_net.ko"), "virtio_net");
        assert_eq!(strip_compression("kernel/a/b.ko.zst"), "kernel/a/b.ko");
        assert_eq!(strip_compression("kernel/a/b.ko"), "kernel/a/b.ko");
    }

    #[test]
    fn compressed_modules_are_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let elf = b"\x7fELF fake module".to_vec();
        let xz = dir.path().join("m.ko.xz");
        let mut packed = Vec::new();
        lzma_rs::xz_compress(&mut &elf[..], &mut packed).unwrap();
        std::fs::write(&xz, packed).unwrap();
        assert_eq!(read_module(&xz).unwrap(), elf);
        let gz = dir.path().join("m.ko.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&elf).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(read_module(&gz).unwrap(), elf);
        let plain = dir.path().join("m.ko");
        std::fs::write(&plain, &elf).unwrap();
        assert_eq!(read_module(&plain).unwrap(), elf);
        std::fs::write(&plain, b"not elf").unwrap();
        assert!(read_module(&plain).unwrap_err().to_string().contains("not a kernel module"));
    }

    #[test]
    fn the_tpm_device_tcti_goes_in_with_its_loader() {
        let dir = tempfile::tempdir().unwrap();
        let loader = dir.path().join("libtss2-tctildr.so.0");
        let device = dir.path().join("libtss2-tcti-device.so.0");
        std::fs::write(&loader, b"not really a library").unwrap();
        assert_eq!(with_loaded_plugins(vec![loader.clone()]).unwrap(), vec![loader.clone()], "no device TCTI there");
        std::fs::write(&device, b"not really a library").unwrap();
        assert_eq!(with_loaded_plugins(vec![loader.clone()]).unwrap(), vec![device, loader]);
        let libc = PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(with_loaded_plugins(vec![libc.clone()]).unwrap(), vec![libc], "no loader, nothing added");
    }

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f2a)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2b)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f2c)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib64/ld-linux-x86-64.so.2"]
                .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err().contains("libfoo.so.1"));
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    #[test]
    fn the_init_script_marks_every_step() {
        for marker in [
            "modules loaded",
            "dhcp ok",
            "agent: enrolling",
            "agent ok",
            "FERRY-RESULT: ok 0",
            "FERRY-RESULT: fail",
            "ferry.test=poweroff",
            "switch_root /newroot",
            "--wg-backend kernel",
            "--image-root /newroot",
            "7 image refused",
            "mount -t \"$FSTYPE\"",
        ] {
            assert!(INIT_SCRIPT.contains(marker), "init lacks {marker:?}");
        }
        // busybox wget -T segfaults; the init never uses wget at all.
        assert!(!INIT_SCRIPT.contains("wget"));
    }
}
