//! A test node's root file system with the real cloud-init of Debian 12 (22.4), unpacked
//! from the tarball `scripts/cloud-init-chroot.sh` builds and caches, and booted (cloud-init's
//! four stages) inside the node's network namespace and private mount, UTS and PID
//! namespaces: every mount dies with the namespace, the hostname cloud-init sets is the
//! namespace's, and the host is never changed.

use super::{sh, Netns};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The environment variable `scripts/test.sh` exports with the tarball's path.
pub const ROOTFS_ENV: &str = "FERRY_CLOUD_INIT_ROOTFS";

/// Set to keep the unpacked roots (and each session's results) after the test, to look into.
pub const KEEP_ENV: &str = "FERRY_TEST_KEEP_ROOTS";

/// How long one session inside a node may take before it is killed (with everything in it).
const SESSION_LIMIT_SECS: u32 = 240;

fn script() -> PathBuf {
    // At run time: a test binary reused from a shared target directory may have been
    // built in another checkout.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&dir).join("../../scripts/cloud-init-chroot.sh")
}

/// The cached root file system: `$FERRY_CLOUD_INIT_ROOTFS`, else where the build script
/// keeps it. A missing tarball fails the test with the command that builds it.
pub fn rootfs_tarball() -> PathBuf {
    let path = match std::env::var_os(ROOTFS_ENV) {
        Some(p) => PathBuf::from(p),
        None => {
            let out = Command::new(script())
                .arg("--print-path")
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
            assert!(
                out.status.success(),
                "scripts/cloud-init-chroot.sh --print-path failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    assert!(
        path.is_file(),
        "the cloud-init test node root {} is missing: build it with `sudo scripts/cloud-init-chroot.sh` \
         (`sudo scripts/test.sh` does this before running the tests)",
        path.display()
    );
    path
}

/// Mounts a booting node sees, inside the private mount namespace: /proc (of the new PID
/// namespace), /sys (of the node's network namespace), an empty /run, a minimal /dev (no
/// host disks to probe, no host console to write to) and the kernel command line.
/// Arguments: $1 root, $2 the directory for results (outside the root), $3 the command line file.
const PREAMBLE: &str = r#"set -eu
ROOT=$1 OUT=$2
mount -t proc -o nosuid,nodev,noexec proc "$ROOT/proc"
mount -t sysfs -o nosuid,nodev,noexec sysfs "$ROOT/sys"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$ROOT/run"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$ROOT/dev"
for d in null zero full random urandom; do : >"$ROOT/dev/$d"; mount --bind "/dev/$d" "$ROOT/dev/$d"; done
ln -s /proc/self/fd "$ROOT/dev/fd"
ln -s /proc/self/fd/0 "$ROOT/dev/stdin"; ln -s /proc/self/fd/1 "$ROOT/dev/stdout"; ln -s /proc/self/fd/2 "$ROOT/dev/stderr"
mkdir "$ROOT/dev/pts" "$ROOT/dev/shm"
mount --bind "$3" "$ROOT/proc/cmdline"
hostname localhost
"#;

/// cloud-init's four stages in boot order, then its status, then `cloud-init schema` on
/// the user-data and vendor-data it was given (of a multipart vendor-data, its
/// cloud-config). $4: a seed directory to place at
/// /run/ferry/seed first (fetch mode: the agent's seed, carried into the root's /run).
const BOOT: &str = r#"
if [ -n "${4:-}" ]; then
  mkdir -p -m 0700 "$ROOT/run/ferry"
  cp -a "$4" "$ROOT/run/ferry/seed"
fi
for stage in "init --local" "init" "modules --mode=config" "modules --mode=final"; do
  rc=0
  chroot "$ROOT" cloud-init $stage || rc=$?
  echo "cloud-init $stage: exit $rc" >>"$OUT/stages"
done
rc=0
chroot "$ROOT" cloud-init status --long >"$OUT/status" 2>&1 || rc=$?
echo "$rc" >"$OUT/status.rc"
for doc in user-data vendor-data; do
  f=/var/lib/cloud/instance/$doc.txt
  chroot "$ROOT" test -s "$f" || continue
  # A MIME multipart vendor-data (ferry's default in cloud-init mode: cloud-config and a
  # script): the schema applies to its cloud-config, which cloud-init keeps apart.
  if [ "$doc" = vendor-data ] && chroot "$ROOT" grep -q '^Content-Type: multipart/' "$f"; then
    f=/var/lib/cloud/instance/vendor-cloud-config.txt
  fi
  rc=0
  chroot "$ROOT" cloud-init schema --config-file "$f" >"$OUT/schema-$doc" 2>&1 || rc=$?
  echo "$rc" >"$OUT/schema-$doc.rc"
done
"#;

/// One node's root file system, unpacked into a temporary directory (removed on drop).
pub struct NodeRoot {
    dir: tempfile::TempDir,
    /// The root of the node's file system.
    pub root: PathBuf,
    runs: AtomicUsize,
}

/// What one boot left behind.
pub struct Boot {
    /// Each stage's `cloud-init ...: exit N` line, in order.
    pub stages: Vec<String>,
    /// `cloud-init status --long` and its exit code.
    pub status: String,
    pub status_code: i32,
    /// `cloud-init schema --config-file` on the user-data and vendor-data cloud-init was
    /// given: (document, exit code, output); absent documents are not listed.
    pub schema: Vec<(String, i32, String)>,
    /// Everything the boot printed (cloud-init writes its console messages to stdout).
    pub console: String,
    pub elapsed: Duration,
}

impl NodeRoot {
    /// Unpacks the tarball into a fresh directory under /var/tmp.
    pub fn unpack(tarball: &Path) -> NodeRoot {
        let mut dir = tempfile::Builder::new().prefix("ferry-node-root.").tempdir_in("/var/tmp").expect("tempdir");
        if std::env::var_os(KEEP_ENV).is_some() {
            dir.disable_cleanup(true);
            eprintln!("{KEEP_ENV}: keeping {}", dir.path().display());
        }
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("root dir");
        let (t, r) = (tarball.to_str().expect("utf-8 path"), root.to_str().expect("utf-8 path"));
        sh(&[
            "tar",
            "--extract",
            "--zstd",
            "--numeric-owner",
            "--xattrs",
            "--acls",
            "--preserve-permissions",
            "-f",
            t,
            "-C",
            r,
        ]);
        NodeRoot { dir, root, runs: AtomicUsize::new(0) }
    }

    /// A path inside the node's root.
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    pub fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_else(|e| panic!("{p} in {}: {e}", self.root.display()))
    }

    pub fn try_read(&self, p: &str) -> Option<String> {
        std::fs::read_to_string(self.path(p)).ok()
    }

    /// A fresh directory outside the root for one session's results.
    fn session_dir(&self) -> PathBuf {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let out = self.dir.path().join(format!("session-{n}"));
        std::fs::create_dir(&out).expect("session dir");
        out
    }

    /// Runs `body` (sh, after [`PREAMBLE`]; `$ROOT`, `$OUT`, `$4`...) in `ns` and private
    /// mount/UTS/PID namespaces, with `cmdline` as the node's /proc/cmdline and a clean
    /// environment. Returns the session's directory and the output.
    pub fn session(&self, ns: &Netns, cmdline: &str, body: &str, args: &[&Path]) -> (PathBuf, Output) {
        let out = self.session_dir();
        let cmdline_file = out.join("cmdline");
        std::fs::write(&cmdline_file, format!("{cmdline}\n")).expect("cmdline");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name, "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"])
            .args(["timeout", "-s", "KILL", &SESSION_LIMIT_SECS.to_string()])
            .args(["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--propagation", "private"])
            .args(["sh", "-c", &format!("{PREAMBLE}{body}"), "sh"])
            .arg(&self.root)
            .arg(&out)
            .arg(&cmdline_file)
            .args(args)
            .stdin(Stdio::null());
        let output = c.output().expect("run a node session");
        (out, output)
    }

    /// Like [`NodeRoot::session`], asserting success; returns stdout.
    pub fn run(&self, ns: &Netns, body: &str) -> String {
        let (_, out) = self.session(ns, "", body, &[]);
        assert!(
            out.status.success(),
            "node session failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Boots the node: cloud-init's four stages with `cmdline` (`ds=nocloud;s=...`) as the
    /// kernel command line; `seed` is placed at /run/ferry/seed first.
    pub fn boot(&self, ns: &Netns, cmdline: &str, seed: Option<&Path>) -> Boot {
        let started = Instant::now();
        let args: Vec<&Path> = seed.into_iter().collect();
        let (dir, out) = self.session(ns, cmdline, BOOT, &args);
        let elapsed = started.elapsed();
        let console = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the boot session failed ({}): {console}", out.status);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let code = |f: &str| read(f).trim().parse::<i32>().unwrap_or(-1);
        let schema = ["user-data", "vendor-data"]
            .into_iter()
            .filter(|d| dir.join(format!("schema-{d}.rc")).exists())
            .map(|d| (d.to_owned(), code(&format!("schema-{d}.rc")), read(&format!("schema-{d}"))))
            .collect();
        Boot {
            stages: read("stages").lines().map(str::to_owned).collect(),
            status: read("status"),
            status_code: code("status.rc"),
            schema,
            console,
            elapsed,
        }
    }

    /// A file of the cloud-init instance `id` (what /var/lib/cloud/instance, an absolute
    /// symbolic link that resolves only inside the root, points to).
    pub fn instance_file(&self, id: &str, file: &str) -> String {
        self.read(&format!("/var/lib/cloud/instances/{id}/{file}"))
    }

    /// cloud-init's result.json (kept under /var/lib/cloud/data).
    pub fn result_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.read("/var/lib/cloud/data/result.json")).expect("result.json is JSON")
    }
}
