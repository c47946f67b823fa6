//! The command line, as clap parses it. Values are validated into domain types in
//! `settings.rs`, not here.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "ferry", version, about = "Secure bootstrap of stateless HPC nodes over ephemeral WireGuard tunnels")]
pub struct Cli {
    /// The admin socket [default: /run/ferry/admin.sock]; for `serve`, where to listen.
    #[arg(long, global = true, env = "FERRY_ADMIN_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (no config file needed; state under --data-dir).
    Serve(ServeArgs),
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage profiles (settings shared by nodes, Warewulf-style).
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// The node side (runs on the booting node): enroll, open the tunnel, fetch the
    /// cloud-init seed, phone home. `ferry agent teardown` removes a held tunnel.
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        command: Option<AgentCommand>,
        #[command(flatten)]
        args: Box<ferry_agent::AgentArgs>,
    },
    /// Boot images: import, list, show, delete, and build the node initramfs.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print configuration for the tools around ferry.
    #[command(subcommand)]
    Configure(ConfigureCommand),
    /// Active tunnels: list them, or revoke one.
    #[command(subcommand)]
    Tunnel(TunnelCommand),
    /// Bearer tokens for the remote admin listener ([remote_admin] listen): viewer,
    /// operator (also revokes tunnels) or admin (everything, approving TPMs included).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Secrets for cloud-init templates (`{{ secret("munge.key") }}`), delivered only
    /// through a node's tunnel; values are write-only.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// The servers sharing this server's store (several on one PostgreSQL).
    #[command(subcommand)]
    Server(ServerCommand),
    /// Print the server's WireGuard public key (for `ferry.pubkey=` on the kernel command line).
    ServerKey,
    /// Print the provisioning TLS certificate's pin (for `ferry.tls=` on the kernel
    /// command line, with an https:// ferry.server).
    ServerCert,
    /// Print an ssh known_hosts file of the host keys nodes reported at phone-home.
    KnownHosts,
    /// Show the audit log.
    Audit {
        /// Only entries about this node.
        #[arg(long)]
        node: Option<String>,
        /// How many entries, newest last.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only entries since a time (RFC 3339, e.g. 2026-11-23T10:00:00Z) or for a
        /// duration back from now (e.g. 10m, 2h).
        #[arg(long, value_name = "TIME|DURATION")]
        since: Option<String>,
        /// Keep printing new entries as they are written (Ctrl-C to stop).
        #[arg(long)]
        follow: bool,
        /// JSON (with --follow: one object per line).
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks (as root): `ferry bench storm --nodes 10000 --concurrency 200`.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// A boot storm: N simulated nodes through enrollment, the four documents and
    /// phone-home against a real server in its own network namespace.
    Storm(crate::bench::StormArgs),
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import a kernel, an initrd and optionally a root file system (a directory or a
    /// tar archive, packed as zstd and gzip cpio) into the data directory.
    Import {
        name: String,
        #[arg(long, value_name = "FILE")]
        kernel: PathBuf,
        #[arg(long, value_name = "FILE")]
        initrd: PathBuf,
        #[arg(long, value_name = "DIR|TAR")]
        rootfs: Option<PathBuf>,
    },
    /// List images.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one image.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete an image (refused while a node or profile uses it).
    Delete { name: String },
    /// Build a node initramfs: busybox, this ferry binary and its libraries, the kernel's
    /// network and WireGuard modules, and an /init that runs `ferry agent` (DHCP, enroll,
    /// fetch through the tunnel, phone home) and then switches to the image (root=tmpfs).
    Initramfs(InitramfsArgs),
}

#[derive(Args, Debug)]
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

#[derive(Subcommand, Debug)]
pub enum ConfigureCommand {
    /// dnsmasq: a complete configuration file for the provisioning network (DHCP with
    /// static leases for every node interface, iPXE over TFTP, the chain to ferry).
    Dnsmasq(DnsmasqArgs),
}

#[derive(Args, Debug)]
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
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Remove the tunnel a `--mode cloud-init` agent holds (after cloud-init finished).
    Teardown(ferry_agent::TeardownArgs),
}

#[derive(Subcommand, Debug)]
pub enum TunnelCommand {
    /// List active tunnels (node, address, age, last handshake, expiry).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Close a node's tunnel now and remove its peer.
    Revoke { node: String },
}

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// List the servers: liveness (heartbeat), active tunnels, endpoint and key.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file (see docs/ferry.example.toml).
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// State directory [default: /var/lib/ferry].
    #[arg(long, env = "FERRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log line format.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// The sealing key file (32 bytes, mode 0600) [default: DATA_DIR/secrets.key], e.g.
    /// on a separate, encrypted or removable volume.
    #[arg(long, env = "FERRY_SECRETS_KEY")]
    pub secrets_key: Option<PathBuf>,
    /// The store: an SQLite file [default: DATA_DIR/ferry.db] or postgres://USER@HOST/DB
    /// (several servers may share one PostgreSQL database; see [cluster]).
    #[arg(long, env = "FERRY_STORE", value_name = "URL|PATH")]
    pub store: Option<String>,
    /// This server's id among those sharing the store [default: the host name].
    #[arg(long, env = "FERRY_SERVER_ID")]
    pub server_id: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl ServeArgs {
    /// What these flags (or, for each flag not given, its `FERRY_*` variable: clap reads
    /// both) set over the configuration file; `socket` is the global `--socket`.
    pub fn overrides(self, socket: Option<PathBuf>) -> ferry_server::Overrides {
        ferry_server::Overrides {
            config_file: self.config,
            data_dir: self.data_dir,
            admin_socket: socket,
            log_format: self.log_format.map(|f| match f {
                LogFormatArg::Text => ferry_server::LogFormat::Text,
                LogFormatArg::Json => ferry_server::LogFormat::Json,
            }),
            secrets_key: self.secrets_key,
            store: self.store,
            server_id: self.server_id,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; it is printed once (only its SHA-256 is stored).
    Create {
        name: String,
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Lifetime, e.g. 30d, 12h; default: until revoked.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List tokens: name, role, state, expiry — never the token.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token now.
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Set a secret (global, or for one node or profile); the value never goes on the
    /// command line.
    Set {
        name: String,
        /// Read the value from this file (any bytes, up to 64 KiB).
        #[arg(long, value_name = "FILE", required_unless_present = "value_stdin", conflicts_with = "value_stdin")]
        from_file: Option<PathBuf>,
        /// Read the value from standard input.
        #[arg(long)]
        value_stdin: bool,
        #[command(flatten)]
        scope: SecretScopeArgs,
    },
    /// List secrets: names, scopes, sizes, times — never values.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret.
    Rm {
        name: String,
        #[command(flatten)]
        scope: SecretScopeArgs,
    },
}

/// Where a secret applies: one node, one profile, or (neither) every node.
#[derive(Args, Debug, Default)]
#[group(multiple = false)]
pub struct SecretScopeArgs {
    #[arg(long)]
    pub node: Option<String>,
    #[arg(long)]
    pub profile: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Add nodes: `ferry node add n[001-128] --profile compute --ip 10.0.1.1` (IPs count up).
    Add {
        hostlist: String,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        node: NodeOnlyArgs,
    },
    /// Change nodes' own settings (maps merge by key, lists are replaced).
    Set {
        hostlist: String,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        node: NodeOnlyArgs,
        #[command(flatten)]
        tpm: TpmArgs,
    },
    /// Approve a TPM that trust-on-first-use discovery holds as pending, by the EK
    /// fingerprint you read from the node's own TPM (compare with `ferry node tpm`).
    Approve {
        hostlist: String,
        /// The EK fingerprint to approve (`sha256:HEX`); for a hostlist of several
        /// nodes, `NODE=sha256:HEX` once per node. A pending TPM with another
        /// fingerprint is not approved.
        #[arg(long = "ek-fingerprint", value_name = "[NODE=]FINGERPRINT", required = true)]
        ek_fingerprint: Vec<String>,
    },
    /// List nodes' TPM identities (state, EK fingerprint, whether a certificate vouched).
    Tpm {
        hostlist: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove fields from nodes: `ferry node unset n001 comment tag.rack netdev.ib0`.
    Unset {
        hostlist: String,
        /// Fields to remove; see FIELDS below.
        #[arg(required = true, help = format!("Fields: {}", ferry_core::patch::FIELD_HELP))]
        fields: Vec<String>,
    },
    /// List nodes (all, or those of a hostlist).
    List {
        hostlist: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Each node's boot phase as ferry sees it (script fetched, enrolled, tunnel open,
    /// phoned home, refused with the reason, last boot), from the audit log.
    Status {
        hostlist: Option<String>,
        /// Keep the view open and update it as nodes boot (Ctrl-C to stop); with --json,
        /// one line per node change.
        #[arg(long)]
        watch: bool,
        /// Read the audit log back to a time (RFC 3339) or for a duration (e.g. 2h).
        #[arg(long, value_name = "TIME|DURATION", default_value = "1d")]
        since: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one node; --merged shows effective values and where each came from.
    Show {
        name: String,
        #[arg(long)]
        merged: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete nodes.
    Delete { hostlist: String },
}

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// Add profiles.
    Add {
        /// Profile names (a hostlist-style list also works: `rack[1-4]`).
        names: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Change profiles.
    Set {
        names: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Remove fields from profiles.
    Unset {
        names: String,
        #[arg(required = true, help = format!("Fields: {}", ferry_core::patch::FIELD_HELP))]
        fields: Vec<String>,
    },
    /// List profiles.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one profile.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete profiles (refused while a node or profile uses them).
    Delete { names: String },
}

/// Settings shared by nodes and profiles.
#[derive(Args, Debug, Default)]
pub struct SettingsArgs {
    /// Profiles to apply, in order (for a profile: its parents). Replaces the list.
    #[arg(short = 'P', long = "profile", value_delimiter = ',')]
    pub profiles: Option<Vec<String>>,
    #[arg(long)]
    pub comment: Option<String>,
    /// Image name.
    #[arg(long)]
    pub image: Option<String>,
    /// Kernel version or absolute path.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Kernel arguments, space-separated as on a kernel command line (commas stay inside
    /// an argument: `console=ttyS0,115200`); `~arg` removes an inherited one. Replaces the list.
    #[arg(long, allow_hyphen_values = true, value_name = "\"ARG ARG ...\"")]
    pub kernel_args: Option<Vec<String>>,
    /// Root file system: initramfs, ramfs or tmpfs (tmpfs for SELinux).
    #[arg(long)]
    pub root: Option<String>,
    /// Identity factors required at enrollment: network, asset-tag, tpm (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub identity: Option<Vec<String>>,
    /// A tag KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// The tpm factor's PCR policy: INDEX=SHA256HEX of the SHA-256 bank (repeatable;
    /// `~INDEX` removes an inherited one), e.g. 7=$(tpm2_pcrread … ) for Secure Boot state.
    #[arg(long = "tpm-pcr", value_name = "INDEX=HEX")]
    pub tpm_pcrs: Vec<String>,
    /// A cloud-init meta-data entry KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// cloud-init user-data template file.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// cloud-init vendor-data template file.
    #[arg(long, value_name = "FILE")]
    pub vendor_data: Option<PathBuf>,
    /// cloud-init network-config file.
    #[arg(long, value_name = "FILE")]
    pub network_config: Option<PathBuf>,
    /// Tunnel time to live, e.g. 10m, 1h.
    #[arg(long, value_name = "DURATION")]
    pub tunnel_ttl: Option<String>,
    /// Serve boot artifacts only with the node's asset tag (iPXE `${asset}`; Warewulf
    /// compatibility, weak: the tag travels in clear).
    #[arg(long, value_name = "true|false")]
    pub boot_asset_gate: Option<bool>,
    #[command(flatten)]
    pub netdev: NetdevArgs,
}

/// One interface's settings; `--netdev` names it (default eth0).
#[derive(Args, Debug, Default)]
pub struct NetdevArgs {
    #[arg(long, value_name = "NAME")]
    pub netdev: Option<String>,
    #[arg(long)]
    pub mac: Option<String>,
    /// IPv4 address; with a hostlist, the first node's, counting up.
    #[arg(long = "ip")]
    pub ipv4: Option<String>,
    #[arg(long)]
    pub netmask: Option<String>,
    #[arg(long)]
    pub gateway: Option<String>,
    /// IPv6 address; with a hostlist, the first node's, counting up.
    #[arg(long = "ip6")]
    pub ipv6: Option<String>,
    #[arg(long = "ip6-prefix")]
    pub ipv6_prefix: Option<u8>,
    #[arg(long)]
    pub vlan: Option<u16>,
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Mark this interface as the node's primary one.
    #[arg(long)]
    pub primary: bool,
}

/// A node's TPM registration (one node at a time; not combined with other changes).
#[derive(Args, Debug, Default)]
#[group(multiple = false)]
pub struct TpmArgs {
    /// Register the node's TPM by its EK public key, PEM (`tpm2_createek -G rsa -f pem -u ek.pem`).
    #[arg(long, value_name = "FILE")]
    pub tpm_ek: Option<PathBuf>,
    /// Register the node's TPM by its EK certificate, DER (`tpm2_nvread 0x01c00002 -C o`);
    /// it must verify against the server's [tpm] ek_ca_bundle.
    #[arg(long, value_name = "FILE")]
    pub tpm_ek_cert: Option<PathBuf>,
    /// Forget the node's TPM (registered or pending).
    #[arg(long)]
    pub tpm_clear: bool,
}

/// Node-only settings.
#[derive(Args, Debug, Default)]
pub struct NodeOnlyArgs {
    /// Read the node's asset tag from a file (kept off the command line, where `ps` shows it).
    #[arg(long, value_name = "FILE", conflicts_with = "asset_tag_stdin")]
    pub asset_tag_file: Option<PathBuf>,
    /// Read the node's asset tag from standard input.
    #[arg(long)]
    pub asset_tag_stdin: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `ferry serve`: the defaults, then the file, then `FERRY_*` variables, then flags.
    /// (The only test of this binary that sets these variables; no other reads them.)
    #[test]
    fn serve_flags_win_over_ferry_variables_which_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.toml");
        std::fs::write(&file, "data_dir = \"/file/data\"\nstore = \"/file/ferry.db\"\nlog_format = \"json\"\n")
            .unwrap();
        let vars =
            [("FERRY_CONFIG", file.to_str().unwrap()), ("FERRY_DATA_DIR", "/env/data"), ("FERRY_STORE", "/env/db")];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let load = |argv: &[&str]| {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Serve(args) = cli.command else { panic!("serve") };
            ferry_server::Config::load(args.overrides(cli.socket)).unwrap()
        };
        let env_only = load(&["ferry", "serve"]);
        let flags = load(&["ferry", "--socket", "/flag/admin.sock", "serve", "--data-dir", "/flag/data"]);
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        assert_eq!(env_only.data_dir, PathBuf::from("/env/data"), "the variable over the file");
        assert_eq!(env_only.store.as_deref(), Some("/env/db"));
        assert_eq!(env_only.log_format, ferry_server::LogFormat::Json, "the file over the defaults");
        assert_eq!(flags.data_dir, PathBuf::from("/flag/data"), "the flag over the variable");
        assert_eq!(flags.store.as_deref(), Some("/env/db"));
        assert_eq!(flags.admin_socket, PathBuf::from("/flag/admin.sock"));
    }
}
