//! `ferry image import` and `ferry image verify`: they work on the server's object
//! store (`data_dir/objects/sha256`) directly, so they run on the server host, as root
//! or the server's user. An image is gigabytes that the import packs, compresses and
//! seals in one pass straight into the store; it then registers the image — and the
//! sealed root's key, write-only — through the admin API.

use crate::client::AdminClient;
use anyhow::Context;
use base64::Engine;
use ferry_api::image::{AddImage, Artifact, ImageRecord, RootArchive};
use ferry_api::Secret;
use ferry_image::seal::ImageKey;
use ferry_image::store::{ObjectStore, Stored};
use std::io::Read;
use std::path::{Path, PathBuf};

/// `ferry image import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The image's name.
    pub name: String,
    /// The kernel nodes boot (e.g. /boot/vmlinuz-6.1.0-28-amd64).
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// The node initramfs (`ferry image initramfs`).
    #[arg(long, value_name = "FILE")]
    pub initrd: PathBuf,
    /// The root file system: a directory, or a tar archive (plain, .zst or .gz; make it
    /// with `tar --xattrs --xattrs-include='*' --acls --numeric-owner` to keep labels,
    /// capabilities and ACLs). Nodes unpack it into their tmpfs root after enrolling.
    #[arg(long, value_name = "DIR|TAR")]
    pub rootfs: Option<PathBuf>,
    /// Seal the root (the default): encrypted with a key of its own, which the server
    /// keeps sealed and hands only to nodes booting the image, inside their tunnels.
    #[arg(long, conflicts_with = "no_seal")]
    pub seal: bool,
    /// Store and serve the root unencrypted (WEAK: anyone on the provisioning network can
    /// download it; nodes still check its digest).
    #[arg(long)]
    pub no_seal: bool,
    /// zstd compression level of the root, 1-19: higher is smaller and slower to import
    /// (nodes decompress every level about as fast).
    #[arg(long, value_name = "LEVEL", default_value_t = 9, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
}

/// The object store of the server `client` talks to, checked to be writable here.
async fn local_store(client: &AdminClient, writing: bool) -> anyhow::Result<ObjectStore> {
    let server = client.server_info().await?;
    let data_dir = PathBuf::from(&server.data_dir);
    let store = ObjectStore::new(&data_dir);
    let objects = data_dir.join("objects").join("sha256");
    let reachable = if writing {
        std::fs::create_dir_all(&objects)
            .and_then(|()| tempfile::Builder::new().prefix(".probe-").tempfile_in(&objects).map(drop))
    } else {
        std::fs::read_dir(&objects).map(drop)
    };
    reachable.with_context(|| {
        format!(
            "`ferry image {}` works on the server's object store, {}, so it runs on the server host as root \
             or the server's user; it cannot {} it here",
            if writing { "import" } else { "verify" },
            objects.display(),
            if writing { "write into" } else { "read" },
        )
    })?;
    Ok(store)
}

fn bar(what: &str, total: Option<u64>) -> indicatif::ProgressBar {
    let pb = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let template = match total {
        Some(_) => "{msg:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        None => "{msg:>8} {spinner} {bytes} {bytes_per_sec}",
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_owned());
    pb
}

fn artifact(s: &Stored) -> Artifact {
    Artifact { sha256: s.sha256.clone(), size: s.size }
}

fn put(store: &ObjectStore, what: &str, file: &Path) -> anyhow::Result<Artifact> {
    let size = std::fs::metadata(file).with_context(|| format!("cannot read {what} {}", file.display()))?.len();
    let pb = bar(what, Some(size));
    let stored = store.put_file(file, &mut |n| pb.set_position(n))?;
    pb.finish_and_clear();
    Ok(artifact(&stored))
}

/// Bytes of regular file content under `dir` (each inode once): the progress bar's end.
fn tree_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                // The archive holds a sparse file's data, not its holes.
                total += m.len().min(m.blocks() * 512);
            }
        }
    }
    total
}

pub fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / 1048576.0)
    }
}

pub async fn import(client: &AdminClient, args: ImportArgs) -> anyhow::Result<()> {
    ferry_core::model::check_image_name(&args.name)?;
    let store = local_store(client, true).await?;
    let kernel = put(&store, "kernel", &args.kernel)?;
    let initrd = put(&store, "initrd", &args.initrd)?;
    let (root, key) = match &args.rootfs {
        Some(src) => {
            let key = if args.no_seal {
                eprintln!(
                    "warning: --no-seal: the root of image {} is stored and served unencrypted; anyone on the \
                     provisioning network can download it (nodes still check its digest)",
                    args.name
                );
                None
            } else {
                Some(ImageKey::generate())
            };
            let total = src.is_dir().then(|| tree_bytes(src));
            let pb = bar("root", total);
            let (stored, stats) = store.put_root(src, key.as_ref(), args.zstd_level, &mut |n| pb.set_position(n))?;
            pb.finish_and_clear();
            let root = RootArchive {
                sha256: stored.sha256.clone(),
                size: stored.size,
                sealed: key.is_some(),
                entries: stats.entries,
                xattrs: stats.xattrs,
                unpacked_bytes: stats.file_bytes,
            };
            if stats.skipped > 0 {
                eprintln!(
                    "note: {} socket(s) and mounted file system(s) inside {} were not packed",
                    stats.skipped,
                    src.display()
                );
            }
            (Some(root), key)
        }
        None => (None, None),
    };
    let root_key = key.map(|k| Secret::new(base64::engine::general_purpose::STANDARD.encode(k.as_bytes())));
    let add = AddImage {
        name: args.name.clone(),
        kernel: kernel.clone(),
        initrd: initrd.clone(),
        root: root.clone(),
        root_key,
    };
    client.add_image(&add).await?;
    outln!("imported image {}", args.name)?;
    outln!("  kernel  sha256:{} ({})", kernel.sha256, mib(kernel.size))?;
    outln!("  initrd  sha256:{} ({})", initrd.sha256, mib(initrd.size))?;
    if let Some(r) = root {
        outln!("  root    sha256:{}", r.sha256)?;
        outln!(
            "          {} zstd from {} of files (ratio {:.2}), {} entries, {} extended attributes, {}",
            mib(r.size),
            mib(r.unpacked_bytes),
            r.unpacked_bytes as f64 / r.size.max(1) as f64,
            r.entries,
            r.xattrs,
            if r.sealed { "sealed (XChaCha20-Poly1305, a key of its own)" } else { "NOT sealed" }
        )?;
    }
    Ok(())
}

/// The artifacts of an image, named.
pub fn artifacts(i: &ImageRecord) -> Vec<(&'static str, Artifact)> {
    let mut out = vec![("kernel", i.kernel.clone()), ("initrd", i.initrd.clone())];
    if let Some(r) = &i.root {
        out.push(("root", r.artifact()));
    }
    for (what, a) in [("rootfs.zst", &i.rootfs_zst), ("rootfs.gz", &i.rootfs_gz)] {
        if let Some(a) = a {
            out.push((what, a.clone()));
        }
    }
    out
}

/// The SHA-256 (hex) and size of a stored object.
fn hash(path: &Path, pb: &indicatif::ProgressBar) -> std::io::Result<(String, u64)> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((format!("{:x}", h.finalize()), size));
        }
        h.update(&buf[..n]);
        size += n as u64;
        pb.set_position(size);
    }
}

pub async fn verify(client: &AdminClient, name: &str) -> anyhow::Result<()> {
    let image = client.image(name).await?;
    let store = local_store(client, false).await?;
    let mut failed = Vec::new();
    for (what, a) in artifacts(&image) {
        let pb = bar(what, Some(a.size));
        let result = match hash(&store.path(&a.sha256), &pb) {
            Err(e) => format!("MISSING ({e})"),
            Ok((_, size)) if size != a.size => format!("SIZE {size}, expected {}", a.size),
            Ok((sha, _)) if sha != a.sha256 => format!("DIGEST sha256:{sha}, expected sha256:{}", a.sha256),
            Ok(_) => "ok".into(),
        };
        pb.finish_and_clear();
        outln!("{what:<10} sha256:{}  {result}", a.sha256)?;
        if result != "ok" {
            failed.push(what);
        }
    }
    if let Some(opens) = client.image_verify(name).await?.key_opens_root {
        outln!(
            "{:<10} {}",
            "root key",
            if opens { "opens the root (checked by the server)" } else { "DOES NOT open the root" }
        )?;
        if !opens {
            failed.push("root key");
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "image {name} failed verification ({}): re-import it (`ferry image delete {name}` once no node uses it, \
             then `ferry image import`), or restore data_dir/objects from backup",
            failed.join(", ")
        );
    }
    outln!("image {name}: every artifact matches its digest")?;
    Ok(())
}
