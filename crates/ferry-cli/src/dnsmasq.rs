//! `ferry configure dnsmasq`: a complete dnsmasq configuration for a provisioning
//! network (DHCP with static leases from the inventory, iPXE over TFTP for firmware
//! without it, the chain to ferry's `/boot/ipxe`), and optionally the iPXE binaries in
//! the TFTP root and the leases in a directory dnsmasq re-reads without a restart.
//! With `--secure-boot`, UEFI x86-64 firmware gets Debian's signed shim and GRUB
//! instead of iPXE, and the TFTP tree they read is exported (`tftp_export`).

use crate::client::AdminClient;
use crate::tftp_export;
use anyhow::{bail, Context};
use ferry_api::admin::NodeView;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The iPXE binaries dnsmasq hands out over TFTP: BIOS (UNDI) and UEFI.
pub const IPXE_BINARIES: [&str; 2] = ["undionly.kpxe", "ipxe.efi"];
/// The file the leases go to in `--hosts-dir` mode.
pub const HOSTS_FILE: &str = "ferry-nodes";

/// An IPv4 network in CIDR notation (`10.0.0.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Range {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Range {
    pub fn parse(text: &str) -> anyhow::Result<Ipv4Range> {
        let usage = || format!("--range {text:?}: give the provisioning network as ADDRESS/PREFIX, e.g. 10.0.0.0/24");
        let (addr, prefix) = text.split_once('/').with_context(usage)?;
        let addr: Ipv4Addr = addr.parse().ok().with_context(usage)?;
        let prefix: u8 = prefix.parse().ok().filter(|p| (8..=30).contains(p)).with_context(usage)?;
        let network = Ipv4Addr::from(u32::from(addr) & Self::mask_bits(prefix));
        if network != addr {
            bail!(
                "--range {text}: {addr} is not the network address of a /{prefix} (did you mean {network}/{prefix}?)"
            );
        }
        Ok(Ipv4Range { network, prefix })
    }

    /// 0.0.0.0/0: every address (what `ferry doctor` compares leases under).
    pub fn everything() -> Ipv4Range {
        Ipv4Range { network: Ipv4Addr::UNSPECIFIED, prefix: 0 }
    }

    fn mask_bits(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(Self::mask_bits(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_bits(self.prefix) == u32::from(self.network)
    }
}

#[derive(clap::Args, Debug)]
pub struct DnsmasqArgs {
    /// The URL nodes reach ferry's provisioning listener at [default: the server's
    /// `public_url`].
    #[arg(long)]
    pub url: Option<String>,
    /// The interface on the provisioning network dnsmasq answers on (e.g. br-prov).
    #[arg(long, value_name = "IF")]
    pub interface: String,
    /// The provisioning network (ADDRESS/PREFIX, e.g. 10.0.0.0/24): only the nodes'
    /// static leases are handed out, no address to unknown MACs.
    #[arg(long, value_name = "NET/PREFIX")]
    pub range: String,
    /// DHCP lease time (dnsmasq syntax: 1h, 30m, infinite).
    #[arg(long, default_value = "1h")]
    pub lease_time: String,
    /// Where dnsmasq's TFTP server finds undionly.kpxe / ipxe.efi (it must exist, or
    /// dnsmasq does not start: --install-ipxe creates it).
    #[arg(long, default_value = "/srv/tftp")]
    pub tftp_root: String,
    /// Copy undionly.kpxe and ipxe.efi from --ipxe-dir into --tftp-root (on this machine).
    #[arg(long)]
    pub install_ipxe: bool,
    /// Where --install-ipxe takes the iPXE binaries from (Debian's ipxe package).
    #[arg(long, default_value = "/usr/lib/ipxe", value_name = "DIR")]
    pub ipxe_dir: String,
    /// Write the leases to DIR/ferry-nodes and point dnsmasq at DIR (dhcp-hostsdir):
    /// dnsmasq re-reads it when it changes, so re-running this command after an
    /// inventory change needs no dnsmasq restart.
    #[arg(long, value_name = "DIR")]
    pub hosts_dir: Option<String>,
    /// Send IPv6 router advertisements on --interface (needs an IPv6 address on it):
    /// iPXE otherwise waits about 13 s for them on an IPv4-only network.
    #[arg(long)]
    pub ipv6_ra: bool,
    /// UEFI Secure Boot: UEFI x86-64 firmware gets the signed shim (shimx64.efi) and
    /// GRUB (grubx64.efi) instead of iPXE, which Secure Boot refuses; BIOS keeps iPXE.
    /// Exports into --tftp-root what GRUB reads over TFTP: grub/grub.cfg, each node's
    /// grub.cfg and its image's kernel and initramfs (fetched from --url). Re-run after
    /// changing nodes, profiles or images.
    #[arg(long)]
    pub secure_boot: bool,
    /// The signed shim --secure-boot copies (Debian's shim-signed).
    #[arg(long, value_name = "FILE", default_value = "/usr/lib/shim/shimx64.efi.signed")]
    pub shim: PathBuf,
    /// The signed network GRUB --secure-boot copies as grubx64.efi (Debian's
    /// grub-efi-amd64-signed).
    #[arg(long, value_name = "FILE", default_value = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")]
    pub signed_grub: PathBuf,
}

/// What the configuration is made of, besides the inventory.
#[derive(Debug, Clone)]
pub struct DnsmasqOptions {
    pub url: String,
    pub interface: String,
    pub range: Ipv4Range,
    pub lease_time: String,
    pub tftp_root: String,
    /// Leases go to `DIR/ferry-nodes` (`dhcp-hostsdir=DIR`) instead of the file itself.
    pub hosts_dir: Option<String>,
    /// Answer IPv6 router solicitations on the interface (iPXE otherwise waits ~13 s).
    pub router_advertisements: bool,
    /// UEFI x86-64 firmware gets shim + GRUB (Secure Boot) instead of iPXE.
    pub secure_boot: bool,
}

pub async fn configure(client: &AdminClient, args: DnsmasqArgs) -> anyhow::Result<()> {
    let url = match args.url {
        Some(u) => u,
        None => client
            .server_info()
            .await?
            .public_url
            .context("the server has no provisioning.public_url: pass --url http://ADDRESS:8470")?,
    };
    let opts = DnsmasqOptions {
        url,
        interface: args.interface,
        range: Ipv4Range::parse(&args.range)?,
        lease_time: args.lease_time,
        tftp_root: args.tftp_root,
        hosts_dir: args.hosts_dir.clone(),
        router_advertisements: args.ipv6_ra,
        secure_boot: args.secure_boot,
    };
    if args.install_ipxe {
        for name in install_ipxe(Path::new(&args.ipxe_dir), Path::new(&opts.tftp_root))? {
            eprintln!("installed {name} into {}", opts.tftp_root);
        }
    }
    let nodes = client.list_nodes().await?;
    if args.secure_boot {
        let source = tftp_export::HttpSource::new(opts.url.trim_end_matches('/'))?;
        let loaders = tftp_export::SignedLoaders { shim: args.shim, grub: args.signed_grub };
        let root = Path::new(&opts.tftp_root);
        let done = tftp_export::export(&source, &loaders, root, &leased_macs(&opts.range, &nodes)).await?;
        eprintln!(
            "exported shim, GRUB, {} node grub.cfg file(s) and {} image file(s) ({} already current) into {} \
             (re-run after changing nodes, profiles or images)",
            done.node_files,
            done.artifacts.len(),
            done.unchanged.len(),
            root.display()
        );
        for gone in done.removed {
            eprintln!("removed {gone} (no longer in the inventory)");
        }
    }
    if let Some(dir) = &args.hosts_dir {
        let path = write_hosts_file(Path::new(dir), &host_lines(&opts.range, &nodes))?;
        eprintln!("wrote the leases to {} (dnsmasq re-reads it on change)", path.display());
    }
    out!("{}", dnsmasq_config(&opts, &nodes))?;
    Ok(())
}

/// Copies the iPXE binaries from `from` (Debian's `ipxe` package: /usr/lib/ipxe) into
/// the TFTP root (created if missing).
pub fn install_ipxe(from: &Path, tftp_root: &Path) -> anyhow::Result<Vec<&'static str>> {
    for name in IPXE_BINARIES {
        if !from.join(name).is_file() {
            bail!(
                "{} is missing: install Debian's ipxe package (apt-get install ipxe) or pass --ipxe-dir DIR holding {}",
                from.join(name).display(),
                IPXE_BINARIES.join(" and ")
            );
        }
    }
    std::fs::create_dir_all(tftp_root)
        .with_context(|| format!("cannot create the TFTP root {}", tftp_root.display()))?;
    for name in IPXE_BINARIES {
        let target = tftp_root.join(name);
        let staging = tftp_root.join(format!(".{name}.ferry-new"));
        std::fs::copy(from.join(name), &staging)
            .and_then(|_| std::fs::rename(&staging, &target))
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(IPXE_BINARIES.to_vec())
}

/// Every node interface's lease as `dhcp-host=` lines, whatever the range: what
/// `ferry doctor` expects to find in a configuration.
pub fn lease_lines(nodes: &[NodeView]) -> String {
    host_lines(&Ipv4Range::everything(), nodes).iter().map(|l| format!("dhcp-host={l}\n")).collect()
}

/// A configuration with the leases of the hosts dir it names (`dhcp-hostsdir=DIR`,
/// file `DIR/ferry-nodes`) added as `dhcp-host=` lines.
pub fn with_hosts_dir_leases(conf: &str) -> String {
    let mut all = conf.to_owned();
    for dir in conf.lines().filter_map(|l| l.trim().strip_prefix("dhcp-hostsdir=")) {
        if let Ok(leases) = std::fs::read_to_string(Path::new(dir.trim()).join(HOSTS_FILE)) {
            for l in leases.lines().filter(|l| !l.trim_start().starts_with('#')) {
                all += &format!("\ndhcp-host={l}");
            }
        }
    }
    all
}

/// One lease per node interface with a MAC, in dnsmasq's `dhcp-host` syntax (without
/// the key), with a comment; an address outside the range is a comment only (dnsmasq
/// would not hand it out).
pub fn host_lines(range: &Ipv4Range, nodes: &[NodeView]) -> Vec<String> {
    let mut lines = Vec::new();
    for n in nodes {
        for (ifname, iface) in &n.settings.interfaces {
            let Some(mac) = iface.mac else { continue };
            match iface.ipv4 {
                Some(ip) if !range.contains(ip) => lines.push(format!(
                    "# {} {ifname}: {ip} is outside {}/{}: no lease",
                    n.name, range.network, range.prefix
                )),
                Some(ip) => lines.push(format!("{mac},{ip},{} # {ifname}", n.name)),
                None => lines.push(format!("{mac},{} # {ifname}", n.name)),
            }
        }
    }
    lines
}

/// The MACs dnsmasq gives a lease to (the `dhcp-host` lines of [`host_lines`]).
pub fn leased_macs(range: &Ipv4Range, nodes: &[NodeView]) -> Vec<String> {
    let mut macs = Vec::new();
    for n in nodes {
        for iface in n.settings.interfaces.values() {
            if let Some(mac) = iface.mac.filter(|_| iface.ipv4.is_none_or(|ip| range.contains(ip))) {
                macs.push(mac.to_string());
            }
        }
    }
    macs
}

/// The TFTP root of a configuration written with `--secure-boot` (it hands out shim).
pub fn secure_boot_tftp_root(conf: &str) -> Option<String> {
    let shim = format!("dhcp-boot=tag:!ipxe,tag:efi64,{}", tftp_export::SHIM_NAME);
    conf.lines().any(|l| l.trim() == shim).then_some(())?;
    conf.lines().find_map(|l| l.trim().strip_prefix("tftp-root=")).map(|r| r.trim().to_owned())
}

/// Replaces `DIR/ferry-nodes` atomically (dnsmasq must never read half a file).
pub fn write_hosts_file(dir: &Path, lines: &[String]) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(HOSTS_FILE);
    // The staging name starts with a dot: dnsmasq skips dot files in a hosts dir.
    let staging = dir.join(format!(".{HOSTS_FILE}.new"));
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&staging, body)
        .and_then(|()| std::fs::rename(&staging, &path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The whole dnsmasq configuration file.
pub fn dnsmasq_config(opts: &DnsmasqOptions, nodes: &[NodeView]) -> String {
    let url = opts.url.trim_end_matches('/');
    let DnsmasqOptions { interface, range, lease_time, tftp_root, secure_boot, .. } = opts;
    let (uefi_comment, uefi_boot) = if *secure_boot {
        (
            "# UEFI x86-64 firmware gets the signed shim (Secure Boot: iPXE is not signed), which\n\
             # loads the signed GRUB beside it (grubx64.efi); GRUB reads grub/grub.cfg, the node's\n\
             # file and its kernel and initramfs over TFTP, exported by --secure-boot: re-run the\n\
             # command after changes to nodes, profiles or images (`ferry doctor` tells).\n",
            tftp_export::SHIM_NAME,
        )
    } else {
        ("", "ipxe.efi")
    };
    let (ipxe_for, ipxe_files) = if *secure_boot {
        ("BIOS firmware", "undionly.kpxe")
    } else {
        ("Firmware", "BIOS: undionly.kpxe, UEFI: ipxe.efi")
    };
    let mut s = format!(
        "# dnsmasq configuration generated by `ferry configure dnsmasq`: regenerate it when the\n\
         # inventory changes, then restart dnsmasq (or use --hosts-dir: no restart needed).\n\
         # Only the nodes below get an address (static leases); iPXE chain-loads ferry.\n\
         interface={interface}\n\
         bind-dynamic\n\
         dhcp-range={net},static,{mask},{lease_time}\n\
         dhcp-authoritative\n\
         # {ipxe_for} without iPXE gets it over TFTP ({ipxe_files});\n\
         # iPXE (DHCP option 175) gets ferry's per-node boot script.\n\
         enable-tftp\n\
         tftp-root={tftp_root}\n\
         dhcp-match=set:ipxe,175\n\
         dhcp-match=set:efi64,option:client-arch,7\n\
         dhcp-match=set:efi64,option:client-arch,9\n\
         dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe\n\
         {uefi_comment}\
         dhcp-boot=tag:!ipxe,tag:efi64,{uefi_boot}\n\
         dhcp-boot=tag:ipxe,{url}/boot/ipxe\n",
        net = range.network,
        mask = range.netmask(),
    );
    if opts.router_advertisements {
        s += &format!(
            "# IPv6 router advertisements: iPXE stops waiting ~13 s for them. Needs an IPv6\n\
             # address on {interface} (e.g. a ULA: ip addr add fd00:f::1/64 dev {interface}).\n\
             enable-ra\n\
             dhcp-range=::,constructor:{interface},ra-only\n"
        );
    } else {
        s += "# iPXE waits ~13 s for IPv6 router advertisements on an IPv4-only network:\n\
              # --ipv6-ra makes dnsmasq send them (see docs/operations.md).\n";
    }
    match &opts.hosts_dir {
        Some(dir) => s += &format!("# The leases: {dir}/{HOSTS_FILE}, re-read on change.\ndhcp-hostsdir={dir}\n"),
        None => {
            for line in host_lines(range, nodes) {
                if line.starts_with('#') {
                    s += &format!("{line}\n");
                } else {
                    s += &format!("dhcp-host={line}\n");
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeView {
        serde_json::from_value(serde_json::json!({
            "name": "n001", "profiles": [], "asset_tag": "unset", "revision": 1, "updated_at": "",
            "identity": {"factors": ["network"], "explicit": true, "weak": true, "refused": false},
            "settings": {"interfaces": {
                "eth0": {"mac": "52:54:00:00:00:01", "ipv4": "10.0.1.1"},
                "eth1": {"mac": "52:54:00:00:00:02", "ipv4": "192.168.9.9"},
                "ib0": {"ipv4": "10.1.1.1"}}}
        }))
        .unwrap()
    }

    fn opts() -> DnsmasqOptions {
        DnsmasqOptions {
            url: "http://10.0.0.1:8470/".into(),
            interface: "br-prov".into(),
            range: Ipv4Range::parse("10.0.0.0/16").unwrap(),
            lease_time: "1h".into(),
            tftp_root: "/srv/tftp".into(),
            hosts_dir: None,
            router_advertisements: false,
            secure_boot: false,
        }
    }

    #[test]
    fn dnsmasq_file_is_complete() {
        let cfg = dnsmasq_config(&opts(), &[node()]);
        // What dnsmasq needs to answer at all: an interface and a range (static leases).
        assert!(cfg.contains("\ninterface=br-prov\n"), "{cfg}");
        assert!(cfg.contains("\ndhcp-range=10.0.0.0,static,255.255.0.0,1h\n"), "{cfg}");
        assert!(cfg.contains("\ntftp-root=/srv/tftp\n") && cfg.contains("\nenable-tftp\n"), "{cfg}");
        assert!(cfg.contains("dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe\n"), "{cfg}");
        assert!(cfg.contains("dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi\n"), "{cfg}");
        assert!(cfg.contains("dhcp-boot=tag:ipxe,http://10.0.0.1:8470/boot/ipxe\n"), "{cfg}");
        assert!(cfg.contains("dhcp-host=52:54:00:00:00:01,10.0.1.1,n001 # eth0\n"), "{cfg}");
        assert!(cfg.contains("# n001 eth1: 192.168.9.9 is outside 10.0.0.0/16: no lease\n"), "{cfg}");
        assert!(!cfg.contains("dhcp-host=52:54:00:00:00:02"), "{cfg}");
        assert!(!cfg.contains("ib0"), "interfaces without a MAC get no lease");
        assert!(!cfg.contains("enable-ra"), "router advertisements are opt-in: {cfg}");
        // Every line is a comment or `key[=value]` (no stray text dnsmasq would reject).
        for line in cfg.lines() {
            assert!(
                line.starts_with('#') || line.chars().all(|c| !c.is_whitespace()) || line.contains(" # "),
                "{line}"
            );
        }
    }

    #[test]
    fn router_advertisements_and_hosts_dir() {
        let mut o = opts();
        o.router_advertisements = true;
        o.hosts_dir = Some("/var/lib/ferry/dnsmasq-hosts".into());
        let cfg = dnsmasq_config(&o, &[node()]);
        assert!(cfg.contains("\nenable-ra\ndhcp-range=::,constructor:br-prov,ra-only\n"), "{cfg}");
        assert!(cfg.contains("\ndhcp-hostsdir=/var/lib/ferry/dnsmasq-hosts\n"), "{cfg}");
        assert!(!cfg.contains("dhcp-host="), "the leases are in the hosts dir: {cfg}");
        let dir = tempfile::tempdir().unwrap();
        let path = write_hosts_file(dir.path(), &host_lines(&o.range, &[node()])).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.starts_with("52:54:00:00:00:01,10.0.1.1,n001 # eth0\n"), "{text}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [HOSTS_FILE], "no staging file left behind");
    }

    #[test]
    fn secure_boot_gives_uefi_shim_and_bios_ipxe() {
        let mut o = opts();
        o.secure_boot = true;
        let cfg = dnsmasq_config(&o, &[node()]);
        assert!(cfg.contains("dhcp-boot=tag:!ipxe,tag:efi64,shimx64.efi\n"), "{cfg}");
        assert!(!cfg.contains("ipxe.efi"), "Secure Boot firmware refuses iPXE: {cfg}");
        assert!(cfg.contains("dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe\n"), "BIOS keeps iPXE: {cfg}");
        assert!(cfg.contains("dhcp-boot=tag:ipxe,http://10.0.0.1:8470/boot/ipxe\n"), "{cfg}");
        assert!(cfg.contains("\nenable-tftp\ntftp-root=/srv/tftp\n"), "{cfg}");
        // The same file as without --secure-boot but for the UEFI boot file and its comment.
        let plain = dnsmasq_config(&opts(), &[node()]);
        let differing: Vec<_> = cfg.lines().filter(|l| !plain.lines().any(|p| p == *l)).collect();
        assert!(differing.iter().all(|l| l.starts_with('#') || *l == "dhcp-boot=tag:!ipxe,tag:efi64,shimx64.efi"));
        // Only the MACs dnsmasq leases get a grub.cfg.
        assert_eq!(leased_macs(&o.range, &[node()]), ["52:54:00:00:00:01"]);
        // What `ferry doctor` recognizes the mode and the tree by.
        assert_eq!(secure_boot_tftp_root(&cfg).as_deref(), Some("/srv/tftp"));
        assert_eq!(secure_boot_tftp_root(&plain), None);
    }

    #[test]
    fn ranges() {
        let r = Ipv4Range::parse("192.168.10.0/24").unwrap();
        assert_eq!(r.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(r.contains(Ipv4Addr::new(192, 168, 10, 77)) && !r.contains(Ipv4Addr::new(192, 168, 11, 1)));
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0.0/4", "10.0.0.1/24", "x/24", "10.0.0.0/"] {
            assert!(Ipv4Range::parse(bad).is_err(), "{bad}");
        }
        let e = Ipv4Range::parse("10.0.0.1/24").unwrap_err().to_string();
        assert!(e.contains("did you mean 10.0.0.0/24"), "{e}");
    }

    #[test]
    fn ipxe_binaries_are_installed_or_named() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("ipxe");
        let tftp = dir.path().join("tftp/root");
        let e = install_ipxe(&from, &tftp).unwrap_err().to_string();
        assert!(e.contains("apt-get install ipxe"), "{e}");
        assert!(!tftp.exists(), "nothing changed on error");
        std::fs::create_dir_all(&from).unwrap();
        for name in IPXE_BINARIES {
            std::fs::write(from.join(name), name).unwrap();
        }
        install_ipxe(&from, &tftp).unwrap();
        assert_eq!(std::fs::read_to_string(tftp.join("ipxe.efi")).unwrap(), "ipxe.efi");
        assert_eq!(std::fs::read_to_string(tftp.join("undionly.kpxe")).unwrap(), "undionly.kpxe");
    }
}
