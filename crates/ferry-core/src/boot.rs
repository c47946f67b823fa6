//! Network boot: the kernel command line and the iPXE / GRUB scripts, as pure functions
//! of a node's merged settings (golden-tested below).

use crate::model::{RootMode, Settings};
use crate::NodeName;

/// What the scripts point at.
pub struct BootTarget<'a> {
    pub node: &'a NodeName,
    pub image: &'a str,
    /// Base URL of the provisioning listener, e.g. `http://10.0.0.1:8470`.
    pub base_url: &'a str,
    pub server_public_key: &'a str,
    /// cloud-init seed URL inside the tunnel.
    pub datasource_url: &'a str,
    pub has_rootfs: bool,
    /// Ask iPXE to present the SMBIOS asset tag with each artifact request.
    pub asset_gate: bool,
}

/// The kernel command line: the node's arguments, its root mode, then what the agent
/// and cloud-init need. Every part is validated on write (no spaces, quotes or `;`
/// inside an argument), so joining with spaces cannot inject anything.
pub fn kernel_command_line(settings: &Settings, t: &BootTarget<'_>) -> String {
    let mut args: Vec<String> = settings.kernel_args.clone();
    if let Some(root) = settings.root {
        args.push(format!(
            "root={}",
            match root {
                RootMode::Initramfs => "initramfs",
                RootMode::Ramfs => "ramfs",
                RootMode::Tmpfs => "tmpfs",
            }
        ));
    }
    args.push(format!("ferry.server={}", t.base_url));
    args.push(format!("ferry.pubkey={}", t.server_public_key));
    args.push(format!("ferry.node={}", t.node));
    if settings.root.is_some() {
        // ferry's initramfs fetches the seed through the tunnel, removes the tunnel and
        // leaves the seed in cloud-init's local seed directory (/var/lib/cloud/seed/
        // nocloud, network-config included: 22.4 reads it there, never from an `s=`
        // URL). A URL here would point the image's cloud-init at a tunnel long gone.
        args.push("ds=nocloud".into());
    } else {
        // An agent in `cloud-init` mode holds the tunnel for cloud-init's own fetches.
        // `nocloud-net`: cloud-init 22.4 applies an HTTP seed only in net mode.
        args.push(format!("ds=nocloud-net;s={}", t.datasource_url));
    }
    args.join(" ")
}

fn artifact(t: &BootTarget<'_>, what: &str) -> String {
    let query = match (t.asset_gate, what) {
        (true, _) => "?mac=${net0/mac}&asset=${asset:uristring}",
        // The kernel request names the node, so the server can tell it is loading its
        // image (`ferry node status`: artifacts).
        (false, "kernel") => "?mac=${net0/mac}",
        (false, _) => "",
    };
    format!("{}/boot/images/{}/{what}{query}", t.base_url, t.image)
}

/// The node's iPXE script.
pub fn ipxe_script(settings: &Settings, t: &BootTarget<'_>) -> String {
    let mut s = format!("#!ipxe\necho ferry: booting {} (image {})\n", t.node, t.image);
    // `initrd=NAME` tells an EFI-stub kernel which of iPXE's images to load.
    let initrds = if t.has_rootfs { "initrd=initrd initrd=rootfs" } else { "initrd=initrd" };
    s += &format!("kernel {} {initrds} {}\n", artifact(t, "kernel"), kernel_command_line(settings, t));
    s += &format!("initrd --name initrd {}\n", artifact(t, "initrd"));
    if t.has_rootfs {
        s += &format!("initrd --name rootfs {}\n", artifact(t, "rootfs"));
    }
    s += "boot\n";
    s
}

/// The chain script for `GET /boot/ipxe` without a MAC: asks again with it.
pub fn ipxe_chain(base_url: &str) -> String {
    format!("#!ipxe\nchain {base_url}/boot/ipxe?mac=${{net0/mac}}\n")
}

/// What an unknown or unbootable node gets: a message and a retry. It names nothing
/// from the inventory.
pub fn ipxe_retry(base_url: &str, why: &str) -> String {
    format!("#!ipxe\necho ferry: {why}; retrying in 30 s\nsleep 30\nchain {base_url}/boot/ipxe?mac=${{net0/mac}}\n")
}

/// grub.cfg for the shim + GRUB (Secure Boot) path. The paths name no device, so GRUB
/// reads them from `$root`, the server it loaded this file from: Debian 12's signed
/// `grubnetx64.efi` has `tftp` and `efinet` built in but no `http` module (and loads no
/// module under Secure Boot), so a `(http,...)` path would fail there.
pub fn grub_config(settings: &Settings, t: &BootTarget<'_>) -> String {
    let url = |what: &str| format!("/boot/images/{}/{what}", t.image);
    // GRUB's shell treats `;` as a separator: single-quote every argument.
    let args: Vec<String> = kernel_command_line(settings, t).split(' ').map(|a| format!("'{a}'")).collect();
    let mut s = format!(
        "set timeout=0\nmenuentry 'ferry {} ({})' {{\n  echo 'ferry: loading {}'\n  linux {} {}\n  initrd {}",
        t.node,
        t.image,
        t.node,
        url("kernel"),
        args.join(" "),
        url("initrd")
    );
    if t.has_rootfs {
        s += &format!(" {}", url("rootfs"));
    }
    s += "\n}\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(node: &'a NodeName, gate: bool) -> BootTarget<'a> {
        BootTarget {
            node,
            image: "rocky9",
            base_url: "http://10.0.0.1:8470",
            server_public_key: "FTUzpTMAyOC3fJsW8+5L7OUOV6fcC25GE5sfk1+jWRk=",
            datasource_url: "http://100.64.0.1:8471/",
            has_rootfs: true,
            asset_gate: gate,
        }
    }

    fn settings() -> Settings {
        serde_json::from_value(serde_json::json!({"kernel_args": ["console=ttyS0", "quiet"], "root": "tmpfs"})).unwrap()
    }

    #[test]
    fn golden_ipxe_script() {
        let n = NodeName::parse("n001").unwrap();
        assert_eq!(
            ipxe_script(&settings(), &target(&n, false)),
            "#!ipxe\n\
             echo ferry: booting n001 (image rocky9)\n\
             kernel http://10.0.0.1:8470/boot/images/rocky9/kernel?mac=${net0/mac} initrd=initrd initrd=rootfs console=ttyS0 quiet root=tmpfs \
             ferry.server=http://10.0.0.1:8470 ferry.pubkey=FTUzpTMAyOC3fJsW8+5L7OUOV6fcC25GE5sfk1+jWRk= \
             ferry.node=n001 ds=nocloud\n\
             initrd --name initrd http://10.0.0.1:8470/boot/images/rocky9/initrd\n\
             initrd --name rootfs http://10.0.0.1:8470/boot/images/rocky9/rootfs\n\
             boot\n"
        );
    }

    #[test]
    fn golden_gated_ipxe_and_grub() {
        let n = NodeName::parse("n002").unwrap();
        let s = ipxe_script(&Settings::default(), &target(&n, true));
        assert!(s.contains("initrd --name initrd http://10.0.0.1:8470/boot/images/rocky9/initrd?mac=${net0/mac}&asset=${asset:uristring}\n"), "{s}");
        // Without a root mode ferry's initramfs switches into, cloud-init fetches through
        // the tunnel an agent in cloud-init mode holds.
        assert!(s.contains(" ferry.node=n002 ds=nocloud-net;s=http://100.64.0.1:8471/\n"), "{s}");
        assert_eq!(
            grub_config(&settings(), &target(&n, false)),
            "set timeout=0\n\
             menuentry 'ferry n002 (rocky9)' {\n  \
             echo 'ferry: loading n002'\n  \
             linux /boot/images/rocky9/kernel 'console=ttyS0' 'quiet' 'root=tmpfs' \
             'ferry.server=http://10.0.0.1:8470' 'ferry.pubkey=FTUzpTMAyOC3fJsW8+5L7OUOV6fcC25GE5sfk1+jWRk=' \
             'ferry.node=n002' 'ds=nocloud'\n  \
             initrd /boot/images/rocky9/initrd /boot/images/rocky9/rootfs\n\
             }\n"
        );
    }

    #[test]
    fn retry_script_leaks_nothing() {
        let s = ipxe_retry("http://10.0.0.1:8470", "no node has this MAC");
        assert!(
            s.starts_with("#!ipxe\n")
                && s.contains("sleep 30")
                && s.contains("chain http://10.0.0.1:8470/boot/ipxe?mac=${net0/mac}")
        );
        assert_eq!(ipxe_chain("http://h:1"), "#!ipxe\nchain http://h:1/boot/ipxe?mac=${net0/mac}\n");
    }
}
