//! `ferry bench unpack`: how fast a node's agent unpacks an image root into a tmpfs
//! (decrypt, decompress, unpack with every extended attribute: `ferry_image::root`,
//! the very code the agent runs), side by side with GNU `tar --xattrs -x` of the same
//! content from a zstd tar on the same machine. Not a test: numbers for
//! docs/performance.md.

use anyhow::Context;
use ferry_image::seal::ImageKey;
use ferry_image::store::ObjectStore;
use ferry_image::unpack::UnpackOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct UnpackArgs {
    /// The root file system to measure with (a directory; ~1 GiB of files gives stable
    /// figures).
    #[arg(long, value_name = "DIR")]
    pub rootfs: PathBuf,
    /// A directory on the tmpfs to unpack into (both archives are copied there first,
    /// as the agent downloads into the tmpfs).
    #[arg(long, value_name = "DIR", default_value = "/dev/shm")]
    pub scratch: PathBuf,
    /// Measure an unsealed root (zstd only) instead of a sealed one.
    #[arg(long)]
    pub no_seal: bool,
    /// zstd level of both archives.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
    /// Rounds of each; the best of each is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    anyhow::ensure!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// GNU tar's options that keep what an image root needs.
const TAR_KEEP: [&str; 5] = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--selinux"];

fn fresh_dir(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    std::fs::create_dir(path).with_context(|| format!("cannot create {}", path.display()))
}

pub fn unpack(args: UnpackArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "ferry bench unpack needs root (owners, device nodes, security.* attributes): sudo ferry bench unpack"
    );
    anyhow::ensure!(args.rootfs.is_dir(), "--rootfs {} is not a directory", args.rootfs.display());
    let work = tempfile::Builder::new()
        .prefix("ferry-bench-unpack-")
        .tempdir_in(&args.scratch)
        .with_context(|| format!("cannot make a directory in {}", args.scratch.display()))?;
    let w = work.path();

    eprintln!("packing {} as ferry does (`ferry image import`) ...", args.rootfs.display());
    let key = (!args.no_seal).then(ImageKey::generate);
    let store = ObjectStore::new(&w.join("store"));
    let (stored, stats) = store.put_root(&args.rootfs, key.as_ref(), args.zstd_level, &mut |_| {})?;
    let archive = store.path(&stored.sha256);
    eprintln!("packing the same tree with GNU tar --zstd ...");
    let tarball = w.join("root.tar.zst");
    let level = format!("zstd -{} -T0", args.zstd_level);
    run(Command::new("tar")
        .args(TAR_KEEP)
        .args(["--one-file-system", "--use-compress-program", &level, "-cf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&args.rootfs)
        .arg("."))?;
    let tar_size = std::fs::metadata(&tarball)?.len();

    let (mut best_ferry, mut best_tar) = (f64::MAX, f64::MAX);
    for round in 1..=args.rounds {
        // ferry: the agent's path, from a downloaded copy on the tmpfs.
        let cache = w.join("image.part");
        std::fs::copy(&archive, &cache)?;
        let root = w.join("root-ferry");
        fresh_dir(&root)?;
        let started = Instant::now();
        let report = ferry_image::root::unpack_file(&cache, &root, key.as_ref(), &mut UnpackOptions::default())?;
        let ferry_secs = started.elapsed().as_secs_f64();
        std::fs::remove_file(&cache)?;
        std::fs::remove_dir_all(&root)?;
        // GNU tar, zstd decompressing in its own process (a pipeline, as in a shell).
        let root = w.join("root-tar");
        fresh_dir(&root)?;
        let started = Instant::now();
        run(Command::new("tar")
            .args(TAR_KEEP)
            .args(["--use-compress-program", "zstd -d", "-xpf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&root))?;
        let tar_secs = started.elapsed().as_secs_f64();
        std::fs::remove_dir_all(&root)?;
        eprintln!(
            "round {round}: ferry {ferry_secs:.2} s ({} entries, {} xattrs), tar {tar_secs:.2} s",
            report.entries, report.xattrs
        );
        best_ferry = best_ferry.min(ferry_secs);
        best_tar = best_tar.min(tar_secs);
    }
    let mibs = |secs: f64| stats.file_bytes as f64 / 1048576.0 / secs;
    outln!(
        "content: {} of files, {} entries, {} extended attributes",
        crate::image_import::mib(stats.file_bytes),
        stats.entries,
        stats.xattrs
    )?;
    outln!(
        "ferry agent ({}, zstd -{}): archive {}, best {best_ferry:.2} s, {:.0} MiB/s",
        if key.is_some() { "sealed" } else { "unsealed" },
        args.zstd_level,
        crate::image_import::mib(stored.size),
        mibs(best_ferry)
    )?;
    outln!(
        "tar --xattrs -x (zstd -{}):   archive {}, best {best_tar:.2} s, {:.0} MiB/s",
        args.zstd_level,
        crate::image_import::mib(tar_size),
        mibs(best_tar)
    )?;
    outln!("ferry / tar throughput: {:.2}x", best_tar / best_ferry)?;
    Ok(())
}
