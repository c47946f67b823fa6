//! `ferry image ...` (import, list, show, delete, initramfs).

use crate::args::{ImageCommand, InitramfsArgs};
use crate::client::AdminClient;
use crate::output;
use anyhow::Context;
use ferry_api::image::{Artifact, ImageRecord};
use ferry_image::initramfs::{build_initramfs_with_progress, InitramfsOptions};
use ferry_image::store::{ObjectStore, Stored};
use std::path::Path;

fn artifact(s: Stored) -> Artifact {
    Artifact { sha256: s.sha256, size: s.size }
}

fn bar(what: &str, total: Option<u64>) -> indicatif::ProgressBar {
    let pb = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template("{msg:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(if total.is_some() { style } else { indicatif::ProgressStyle::default_spinner() });
    pb.set_message(what.to_owned());
    pb
}

fn put(store: &ObjectStore, what: &str, file: &Path) -> anyhow::Result<Artifact> {
    let size = std::fs::metadata(file).with_context(|| format!("cannot read {what} {}", file.display()))?.len();
    let pb = bar(what, Some(size));
    let stored = store.put_file(file, &mut |n| pb.set_position(n))?;
    pb.finish();
    Ok(artifact(stored))
}

pub async fn image(client: &AdminClient, cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Import { name, kernel, initrd, rootfs } => {
            ferry_core::model::check_image_name(&name)?;
            let server = client.server_info().await?;
            let store = ObjectStore::new(Path::new(&server.data_dir));
            let kernel = put(&store, "kernel", &kernel)?;
            let initrd = put(&store, "initrd", &initrd)?;
            let (rootfs_zst, rootfs_gz) = match rootfs {
                Some(src) => {
                    let pb = bar("rootfs", None);
                    let (zst, gz) = store.put_rootfs(&src, &mut |n| {
                        pb.set_message(format!("rootfs {} MiB packed", n >> 20));
                        pb.tick();
                    })?;
                    pb.finish_with_message(format!("rootfs: {} bytes (zstd), {} bytes (gzip)", zst.size, gz.size));
                    (Some(artifact(zst)), Some(artifact(gz)))
                }
                None => (None, None),
            };
            let record =
                ImageRecord { name: name.clone(), kernel, initrd, rootfs_zst, rootfs_gz, created_at: String::new() };
            client.add_image(&record).await?;
            println!("imported image {name}");
        }
        ImageCommand::List { json } => println!("{}", crate::listing::listing(&client.list_images().await?, json)),
        ImageCommand::Show { name, json } => {
            let i = client.image(&name).await?;
            if json {
                println!("{}", output::json(&i));
            } else {
                let mut rows = vec![vec!["name".into(), i.name.clone()], vec!["created".into(), i.created_at.clone()]];
                for (what, a) in [
                    ("kernel", Some(&i.kernel)),
                    ("initrd", Some(&i.initrd)),
                    ("rootfs.zst", i.rootfs_zst.as_ref()),
                    ("rootfs.gz", i.rootfs_gz.as_ref()),
                ] {
                    if let Some(a) = a {
                        rows.push(vec![what.into(), format!("sha256:{} ({} bytes)", a.sha256, a.size)]);
                    }
                }
                println!("{}", output::table(&["field", "value"], rows));
            }
        }
        ImageCommand::Initramfs(args) => initramfs(args)?,
        ImageCommand::Delete { name } => {
            client.delete_image(&name).await?;
            println!("deleted image {name}");
        }
    }
    Ok(())
}

/// `ferry image initramfs`: builds a node initramfs (no server needed).
pub fn initramfs(args: InitramfsArgs) -> anyhow::Result<()> {
    let mut opts = InitramfsOptions::new(args.output);
    opts.kernel_version = args.kernel_version;
    opts.modules_dir = args.modules_dir;
    opts.modules.extend(args.modules);
    opts.busybox = args.busybox;
    opts.ferry = args.ferry;
    opts.strip = !args.no_strip;
    opts.compression = args.gzip_level;
    opts.pins = ferry_agent::baked::render(
        args.pin_server_url.as_deref(),
        args.pin_server_key.as_deref(),
        args.pin_tls_cert.as_deref(),
    )?;
    let summary = build_initramfs_with_progress(&opts, &mut |step| eprintln!("{step}"))?;
    if args.json {
        let v = serde_json::json!({
            "output": summary.output,
            "kernel_version": summary.kernel_version,
            "modules": summary.modules,
            "builtin_modules": summary.builtin,
            "libraries": summary.libraries,
            "ferry": summary.ferry,
            "ferry_stripped": summary.ferry_stripped,
            "server_pins": summary.pinned,
            "entries": summary.entries,
            "uncompressed_bytes": summary.uncompressed_bytes,
            "compressed_bytes": summary.compressed_bytes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "wrote {} for kernel {} ({:.1} MiB): busybox, ferry{}, {} libraries, {} modules{}",
            summary.output.display(),
            summary.kernel_version,
            summary.compressed_bytes as f64 / 1048576.0,
            if summary.ferry_stripped { " (stripped)" } else { "" },
            summary.libraries.len(),
            summary.modules.len(),
            if summary.pinned { ", server pins" } else { "" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The builder writes the pins where the agent reads them by default.
    #[test]
    fn pins_go_where_the_agent_reads_them() {
        assert_eq!(format!("/{}", ferry_image::initramfs::PINS_PATH), ferry_agent::baked::BAKED_PINS_PATH);
    }
}
