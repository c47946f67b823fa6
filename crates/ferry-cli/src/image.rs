//! `ferry image initramfs`: builds a node initramfs (no server needed).

use crate::args::InitramfsArgs;
use ferry_image::initramfs::{build_initramfs_with_progress, InitramfsOptions};

pub fn initramfs(args: InitramfsArgs) -> anyhow::Result<()> {
    let mut opts = InitramfsOptions::new(args.output);
    opts.kernel_version = args.kernel_version;
    opts.modules_dir = args.modules_dir;
    opts.modules.extend(args.modules);
    opts.busybox = args.busybox;
    opts.ferry = args.ferry;
    opts.strip = !args.no_strip;
    opts.compression = args.gzip_level;
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
            "entries": summary.entries,
            "uncompressed_bytes": summary.uncompressed_bytes,
            "compressed_bytes": summary.compressed_bytes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "wrote {} for kernel {} ({:.1} MiB): busybox, ferry{}, {} libraries, {} modules",
            summary.output.display(),
            summary.kernel_version,
            summary.compressed_bytes as f64 / 1048576.0,
            if summary.ferry_stripped { " (stripped)" } else { "" },
            summary.libraries.len(),
            summary.modules.len()
        );
    }
    Ok(())
}
