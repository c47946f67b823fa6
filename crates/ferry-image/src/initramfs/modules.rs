//! The kernel side of the initramfs: which kernel and module tree, the modules a set of
//! names needs (from `modules.dep`, in load order, built-ins left out), and their
//! contents decompressed. Moved from `initramfs.rs` unchanged.

use super::{io_err, InitramfsError};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Picks the kernel version and its module tree.
pub(super) fn kernel_and_modules(kver: Option<&str>, dir: Option<&Path>) -> Result<(String, PathBuf), InitramfsError> {
    let base = Path::new("/lib/modules");
    let (kver, dir) = match (kver, dir) {
        (Some(k), Some(d)) => (k.to_owned(), d.to_owned()),
        (Some(k), None) => (k.to_owned(), base.join(k)),
        (None, Some(d)) => {
            let name = d.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                InitramfsError::Invalid(format!(
                    "cannot tell the kernel version from {}: give --kernel-version",
                    d.display()
                ))
            })?;
            (name.to_owned(), d.to_owned())
        }
        (None, None) => {
            let running = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
            if !running.is_empty() && base.join(&running).join("modules.dep").is_file() {
                (running.clone(), base.join(running))
            } else {
                let mut installed: Vec<String> = std::fs::read_dir(base)
                    .map(|rd| {
                        rd.filter_map(|e| e.ok())
                            .filter(|e| e.path().join("modules.dep").is_file())
                            .filter_map(|e| e.file_name().into_string().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                installed.sort();
                match installed.as_slice() {
                    [one] => (one.clone(), base.join(one)),
                    [] => {
                        return Err(InitramfsError::Missing {
                            what: "a kernel's modules".into(),
                            path: base.display().to_string(),
                            fix: "install a kernel for the nodes (apt-get install -y linux-image-amd64) or give --modules-dir".into(),
                        })
                    }
                    many => {
                        return Err(InitramfsError::Invalid(format!(
                            "several kernels are installed ({}) and the running one ({running}) is not among them: choose one with --kernel-version",
                            many.join(", ")
                        )))
                    }
                }
            }
        }
    };
    if kver.is_empty() || kver.contains('/') {
        return Err(InitramfsError::Invalid(format!("{kver:?} is not a kernel version")));
    }
    if !dir.join("modules.dep").is_file() {
        return Err(InitramfsError::Missing {
            what: format!("the module index of kernel {kver}"),
            path: dir.join("modules.dep").display().to_string(),
            fix: format!("install that kernel (apt-get install -y linux-image-{kver}), or run `depmod {kver}`"),
        });
    }
    Ok((kver, dir))
}

/// `kernel/net/wireguard/wireguard.ko.xz` → `wireguard`; `-` and `_` are the same.
pub(super) fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = strip_compression(base);
    base.strip_suffix(".ko").unwrap_or(base).replace('-', "_")
}

pub(super) fn strip_compression(path: &str) -> &str {
    for ext in [".xz", ".gz", ".zst"] {
        if let Some(p) = path.strip_suffix(ext) {
            return p;
        }
    }
    path
}

/// `modules.dep` and `modules.builtin` of one kernel.
pub(super) struct ModuleIndex {
    /// Module name → (path relative to the tree, dependency paths).
    deps: HashMap<String, (String, Vec<String>)>,
    by_path: HashMap<String, String>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    pub(super) fn load(dir: &Path) -> Result<ModuleIndex, InitramfsError> {
        let dep_path = dir.join("modules.dep");
        let text = std::fs::read_to_string(&dep_path).map_err(io_err("read", &dep_path))?;
        Ok(Self::parse(&text, &std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default()))
    }

    pub(super) fn parse(dep: &str, builtin: &str) -> ModuleIndex {
        let mut deps = HashMap::new();
        let mut by_path = HashMap::new();
        for line in dep.lines() {
            let Some((module, rest)) = line.split_once(':') else { continue };
            let module = module.trim();
            if module.is_empty() {
                continue;
            }
            let name = module_name(module);
            by_path.insert(module.to_owned(), name.clone());
            deps.insert(name, (module.to_owned(), rest.split_whitespace().map(str::to_owned).collect()));
        }
        let builtin = builtin.lines().map(str::trim).filter(|l| !l.is_empty()).map(module_name).collect();
        ModuleIndex { deps, by_path, builtin }
    }

    /// Module files in load order (each module after its dependencies, each once), and
    /// the requested modules that are built in.
    pub(super) fn resolve(&self, wanted: &[String]) -> Result<(Vec<String>, Vec<String>), InitramfsError> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        let mut builtin = Vec::new();
        for w in wanted {
            let name = w.trim().replace('-', "_");
            if self.builtin.contains(&name) {
                if !builtin.contains(&name) {
                    builtin.push(name);
                }
                continue;
            }
            if !self.deps.contains_key(&name) {
                return Err(InitramfsError::Invalid(format!(
                    "the kernel has no module {w:?} (not in modules.dep, not built in)"
                )));
            }
            self.visit(&name, &mut order, &mut done, &mut Vec::new())?;
        }
        Ok((order, builtin))
    }

    fn visit(
        &self,
        name: &str,
        order: &mut Vec<String>,
        done: &mut HashSet<String>,
        stack: &mut Vec<String>,
    ) -> Result<(), InitramfsError> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            return Err(InitramfsError::Invalid(format!("modules.dep has a cycle: {} -> {name}", stack.join(" -> "))));
        }
        let (path, deps) = self.deps.get(name).ok_or_else(|| {
            InitramfsError::Invalid(format!("modules.dep names a dependency {name} it does not list"))
        })?;
        stack.push(name.to_owned());
        for dep in deps {
            let dep_name = self.by_path.get(dep).cloned().unwrap_or_else(|| module_name(dep));
            self.visit(&dep_name, order, done, stack)?;
        }
        stack.pop();
        done.insert(name.to_owned());
        order.push(path.clone());
        Ok(())
    }
}

/// A module file's contents, decompressed (`.ko`, `.ko.xz`, `.ko.gz`).
pub(super) fn read_module(path: &Path) -> Result<Vec<u8>, InitramfsError> {
    let raw = std::fs::read(path).map_err(io_err("read", path))?;
    let name = path.to_string_lossy();
    let bad = |e: String| InitramfsError::Invalid(format!("cannot decompress {name}: {e}"));
    let data = if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut &raw[..], &mut out).map_err(|e| bad(e.to_string()))?;
        out
    } else if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| bad(e.to_string()))?;
        out
    } else if name.ends_with(".zst") {
        zstd::decode_all(&raw[..]).map_err(|e| bad(e.to_string()))?
    } else {
        raw
    };
    if !data.starts_with(b"\x7fELF") {
        return Err(InitramfsError::Invalid(format!("{name} is not a kernel module (no ELF header)")));
    }
    Ok(data)
}
