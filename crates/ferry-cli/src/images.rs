//! `ferry image ...` (import, list, show, delete, initramfs).

use crate::args::ImageCommand;
use crate::client::AdminClient;
use crate::output;
use ferry_api::image::ImageRecord;
use ferry_image::initramfs::{build_initramfs_with_progress, InitramfsOptions};
use std::path::PathBuf;

pub async fn image(client: &AdminClient, cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Import(args) => crate::image_import::import(client, args).await?,
        ImageCommand::Verify { name } => crate::image_import::verify(client, &name).await?,
        ImageCommand::List { json } => outln!("{}", crate::listing::listing(&client.list_images().await?, json))?,
        ImageCommand::Show { name, json } => {
            let i = client.image(&name).await?;
            if json {
                outln!("{}", output::json(&i))?;
            } else {
                outln!("{}", output::table(&["field", "value"], show_rows(&i)))?;
            }
        }
        ImageCommand::Initramfs(args) => initramfs(args)?,
        ImageCommand::Delete { name } => {
            client.delete_image(&name).await?;
            outln!("deleted image {name}")?;
        }
    }
    Ok(())
}

/// `ferry image show`'s rows: each artifact, and what the root holds.
fn show_rows(i: &ImageRecord) -> Vec<Vec<String>> {
    use crate::image_import::mib;
    let mut rows = vec![vec!["name".into(), i.name.clone()], vec!["created".into(), i.created_at.clone()]];
    for (what, a) in crate::image_import::artifacts(i) {
        rows.push(vec![what.into(), format!("sha256:{} ({})", a.sha256, mib(a.size))]);
    }
    if let Some(r) = &i.root {
        let sealed = match r.sealed {
            true => "sealed (XChaCha20-Poly1305 with a key of its own, delivered only in node tunnels)",
            false => "NOT sealed (served in clear; its digest is checked)",
        };
        rows.push(vec!["root sealing".into(), sealed.into()]);
        rows.push(vec!["root entries".into(), r.entries.to_string()]);
        rows.push(vec!["root xattrs".into(), r.xattrs.to_string()]);
        rows.push(vec![
            "root unpacked".into(),
            format!("{} (ratio {:.2})", mib(r.unpacked_bytes), r.unpacked_bytes as f64 / r.size.max(1) as f64),
        ]);
    } else if i.rootfs_gz.is_some() {
        rows.push(vec!["root".into(), "cpio second initrd (no extended attributes): re-import it".into()]);
    }
    rows
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
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        outln!(
            "wrote {} for kernel {} ({:.1} MiB): busybox, ferry{}, {} libraries, {} modules{}",
            summary.output.display(),
            summary.kernel_version,
            summary.compressed_bytes as f64 / 1048576.0,
            if summary.ferry_stripped { " (stripped)" } else { "" },
            summary.libraries.len(),
            summary.modules.len(),
            if summary.pinned { ", server pins" } else { "" }
        )?;
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

/// `ferry image initramfs`'s arguments.
#[derive(clap::Args, Debug)]
pub struct InitramfsArgs {
    /// The archive to write (gzip-compressed cpio).
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// The nodes' kernel [default: the running kernel if its modules are installed,
    /// else the only one in /lib/modules].
    #[arg(long, value_name = "KVER")]
    pub kernel_version: Option<String>,
    /// The kernel's module tree [default: /lib/modules/KVER].
    #[arg(long, value_name = "DIR")]
    pub modules_dir: Option<PathBuf>,
    /// More kernel modules to load at boot (the nodes' network drivers, e.g. mlx5_core),
    /// with their dependencies; comma-separated or repeated. Always loaded: virtio_pci,
    /// virtio_net, wireguard.
    #[arg(long = "module", value_name = "NAME", value_delimiter = ',')]
    pub modules: Vec<String>,
    /// A static busybox.
    #[arg(long, value_name = "FILE", default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// The ferry binary to include [default: this one].
    #[arg(long, value_name = "FILE")]
    pub ferry: Option<PathBuf>,
    /// Keep the ferry binary's symbols and debug information (by default they are
    /// stripped).
    #[arg(long)]
    pub no_strip: bool,
    /// gzip compression level: 1 fastest, 9 smallest.
    #[arg(long, value_name = "0-9", default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub gzip_level: u32,
    /// Bake the servers' WireGuard public keys (`ferry server-key` on each) into the
    /// initramfs: the agent pins these instead of ferry.pubkey= on the kernel command
    /// line, which anyone on the path of the (plain HTTP) boot script can rewrite.
    #[arg(long, value_name = "KEY[,KEY...]")]
    pub pin_server_key: Option<String>,
    /// Bake the enrollment server URL(s) into the initramfs (used instead of
    /// ferry.server= on the kernel command line).
    #[arg(long, value_name = "URL[,URL...]")]
    pub pin_server_url: Option<String>,
    /// Bake the https servers' certificate pins (`ferry server-cert`) into the
    /// initramfs (used instead of ferry.tls= on the kernel command line).
    #[arg(long, value_name = "sha256:HEX[,...]")]
    pub pin_tls_cert: Option<String>,
    /// Print what was built as JSON.
    #[arg(long)]
    pub json: bool,
}
