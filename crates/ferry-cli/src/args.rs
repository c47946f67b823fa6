//! The command line, as clap parses it. Values are validated into domain types in
//! `settings.rs`, not here.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

pub use crate::serve_args::{LogFormatArg, ServeArgs};

#[derive(Parser, Debug)]
#[command(name = "ferry", version, about = "Secure bootstrap of stateless HPC nodes over ephemeral WireGuard tunnels")]
pub struct Cli {
    /// The admin API's unix socket (config key `admin_socket`): where `ferry serve`
    /// listens and the admin commands connect [default: /run/ferry/admin.sock].
    #[arg(long = "admin-socket", alias = "socket", global = true, env = "FERRY_ADMIN_SOCKET", value_name = "PATH")]
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
    /// Import an inventory kept by another tool (profiles and nodes, in one transaction).
    #[command(subcommand)]
    Import(crate::import::ImportCommand),
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
    /// Print an ssh known_hosts file of the host keys nodes reported at phone-home (the
    /// same as `ferry ssh known-hosts --plain`; they change at every boot: prefer the
    /// CA lines of `ferry ssh known-hosts`).
    KnownHosts,
    /// ferry as the cluster's SSH host certificate authority: known_hosts lines for the
    /// CA, revocation, the CAs and their rotation.
    #[command(subcommand)]
    Ssh(crate::ssh::SshCommand),
    /// Check this installation (run on the server's host): one line per check, with the fix.
    Doctor(crate::doctor::DoctorArgs),
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
    /// Benchmarks (as root): `ferry bench storm --nodes 10000 --concurrency 200`,
    /// `ferry bench unpack --rootfs DIR`.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write the man pages (ferry(1), one per subcommand, ferry.toml(5)) into a directory;
    /// the packages ship them.
    #[command(hide = true)]
    Man {
        /// Where to write them (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// A boot storm: N simulated nodes through enrollment, the four documents and
    /// phone-home against a real server in its own network namespace.
    Storm(crate::bench::StormArgs),
    /// How fast a node's agent unpacks an image root into a tmpfs (sealed, zstd, every
    /// extended attribute), side by side with `tar --xattrs -x` of the same content.
    Unpack(crate::bench_unpack::UnpackArgs),
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import a kernel, an initrd and optionally a root file system into the server's
    /// object store (run it on the server host). The root keeps its extended attributes
    /// (SELinux labels, file capabilities, ACLs) and is sealed with a key of its own
    /// unless --no-seal.
    Import(crate::image_import::ImportArgs),
    /// Re-check an image's artifacts in the object store (SHA-256 and size) and, for a
    /// sealed root, that the key the server holds opens it (run it on the server host).
    Verify {
        /// The image's name.
        name: String,
    },
    /// List images.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one image.
    Show {
        /// The image's name.
        name: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete an image (refused while a node or profile uses it).
    Delete {
        /// The image's name.
        name: String,
    },
    /// Build a node initramfs: busybox, this ferry binary and its libraries, the kernel's
    /// network and WireGuard modules, and an /init that runs `ferry agent` (DHCP, enroll,
    /// fetch through the tunnel, phone home) and then switches to the image (root=tmpfs).
    Initramfs(InitramfsArgs),
}

pub use crate::images::InitramfsArgs;

#[derive(Subcommand, Debug)]
pub enum ConfigureCommand {
    /// dnsmasq: a complete configuration file for the provisioning network (DHCP with
    /// static leases for every node interface, iPXE over TFTP, the chain to ferry).
    Dnsmasq(crate::dnsmasq::DnsmasqArgs),
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
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Close a node's tunnel now and remove its peer.
    Revoke {
        /// The node whose tunnel closes.
        node: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// List the servers: liveness (heartbeat), active tunnels, endpoint and key.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Forget a server that is gone for good (shown LOST); refused while it is alive or
    /// still holds tunnels.
    Remove {
        /// The server's id (`ferry server list`).
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; it is printed once (only its SHA-256 is stored).
    Create {
        /// The token's name (the audit log's actor is `token:NAME`).
        name: String,
        /// What the token may do: viewer (read), operator (also revoke tunnels) or admin
        /// (everything).
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Lifetime, e.g. 30d, 12h; default: until revoked.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List tokens: name, role, state, expiry — never the token.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token now.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Set a secret (global, or for one node or profile); the value never goes on the
    /// command line. A node's templates see the secret of its own (--node) over its
    /// profiles' (--profile; a later profile of its list over an earlier one, a profile
    /// over its parents) over the global one of the same name.
    Set {
        /// The name templates use: `{{ secret("NAME") }}`.
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
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret (the one of the scope given: global, --node or --profile).
    Rm {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        scope: SecretScopeArgs,
    },
}

/// Where a secret applies: one node, one profile, or (neither) every node.
#[derive(Args, Debug, Default)]
#[group(multiple = false)]
pub struct SecretScopeArgs {
    /// The secret belongs to this node only (it wins over a profile's or the global one).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// The secret belongs to this profile's nodes (it wins over the global one).
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Add nodes: `ferry node add n[001-128] --profile compute --ip 10.0.1.1` (IPs count up).
    Add {
        /// The nodes: one name or a hostlist (`n[001-128]`, `n1,n5`).
        hostlist: String,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        node: NodeOnlyArgs,
    },
    /// Change nodes' own settings (maps merge by key, lists are replaced).
    Set {
        /// The nodes: one name or a hostlist.
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
        /// The nodes: one name or a hostlist.
        hostlist: String,
        /// The EK fingerprint to approve (`sha256:HEX`); for a hostlist of several
        /// nodes, `NODE=sha256:HEX` once per node. A pending TPM with another
        /// fingerprint is not approved.
        #[arg(long = "ek-fingerprint", value_name = "[NODE=]FINGERPRINT", required = true)]
        ek_fingerprint: Vec<String>,
    },
    /// List nodes' TPM identities (state, EK fingerprint, whether a certificate vouched);
    /// `ferry node tpm learn NODE` pins a known-good boot's PCR values.
    #[command(args_conflicts_with_subcommands = true)]
    Tpm {
        #[command(subcommand)]
        action: Option<crate::tpm_learn::NodeTpmCommand>,
        /// Only these nodes (a hostlist) [default: every node with a TPM].
        hostlist: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove fields from nodes: `ferry node unset n001 comment tag.rack netdev.ib0`.
    Unset {
        /// The nodes: one name or a hostlist.
        hostlist: String,
        /// Fields to remove; see FIELDS below.
        #[arg(required = true, help = format!("Fields: {}", ferry_core::patch::FIELD_HELP))]
        fields: Vec<String>,
    },
    /// List nodes (all, or those of a hostlist).
    List {
        /// Only these nodes (a hostlist) [default: every node].
        hostlist: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Each node's boot phase as ferry sees it (script fetched, enrolled, tunnel open,
    /// phoned home, refused with the reason, last boot), from the audit log.
    Status {
        /// The nodes to show, as a hostlist (e.g. 'n[001-128]'); default: every node.
        hostlist: Option<String>,
        /// Keep the view open and update it as nodes boot (Ctrl-C to stop); with --json,
        /// one line per node change.
        #[arg(long)]
        watch: bool,
        /// Read the audit log back to a time (RFC 3339) or for a duration (e.g. 2h).
        #[arg(long, value_name = "TIME|DURATION", default_value = "1d")]
        since: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one node; --merged shows effective values and where each came from.
    Show {
        /// The node's name.
        name: String,
        /// The effective settings (profiles merged in order, then the node's own), each
        /// with the profile or node it comes from.
        #[arg(long)]
        merged: bool,
        /// JSON instead of text (with the last phone-home report: time, FQDN, host keys).
        #[arg(long)]
        json: bool,
    },
    /// Delete nodes (their tunnels close).
    Delete {
        /// The nodes: one name or a hostlist.
        hostlist: String,
    },
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
        /// Profile names (or a hostlist-style list).
        names: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Remove fields from profiles.
    Unset {
        /// Profile names (or a hostlist-style list).
        names: String,
        #[arg(required = true, help = format!("Fields: {}", ferry_core::patch::FIELD_HELP))]
        fields: Vec<String>,
    },
    /// List profiles.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one profile.
    Show {
        /// The profile's name.
        name: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The profile's TPM PCR policy: `ferry profile tpm learn PROFILE --from NODE`.
    Tpm {
        #[command(subcommand)]
        action: crate::tpm_learn::ProfileTpmCommand,
    },
    /// Delete profiles (refused while a node or profile uses them).
    Delete {
        /// Profile names (or a hostlist-style list).
        names: String,
    },
}

/// Settings shared by nodes and profiles.
#[derive(Args, Debug, Default)]
pub struct SettingsArgs {
    /// Profiles to apply, in order (for a profile: its parents). Replaces the list.
    #[arg(short = 'P', long = "profile", value_delimiter = ',')]
    pub profiles: Option<Vec<String>>,
    /// A free-text note (one line).
    #[arg(long)]
    pub comment: Option<String>,
    /// Image name.
    #[arg(long)]
    pub image: Option<String>,
    /// DNS domain of the node names: a node's FQDN is NAME.DOMAIN (its SSH host
    /// certificate names it).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
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
    /// A bare INDEX selects the PCR with no value yet: see --tpm-pcrs.
    #[arg(long = "tpm-pcr", value_name = "INDEX[=HEX]")]
    pub tpm_pcrs: Vec<String>,
    /// PCRs to quote whose values are not known yet (comma-separated, e.g. 4,7,8,9):
    /// enrollment is refused until an admin approves a known-good boot's values with
    /// `ferry node tpm learn NODE` (or `ferry profile tpm learn PROFILE --from NODE`).
    #[arg(long = "tpm-pcrs", value_name = "INDEX,...", value_delimiter = ',')]
    pub tpm_pcrs_to_learn: Vec<String>,
    /// A cloud-init meta-data entry KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// cloud-init user-data template file.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// cloud-init vendor-data template file.
    #[arg(long, value_name = "FILE")]
    pub vendor_data: Option<PathBuf>,
    /// cloud-init network-config template file (rendered per node like user-data:
    /// `{{ node.name }}`, `{{ tags.rack }}`, ...).
    #[arg(long, value_name = "FILE")]
    pub network_config: Option<PathBuf>,
    #[arg(long, value_name = "DURATION", help = tunnel_ttl_help())]
    pub tunnel_ttl: Option<String>,
    /// Serve boot artifacts only with the node's asset tag (iPXE `${asset}`; Warewulf
    /// compatibility, weak: the tag travels in clear).
    #[arg(long, value_name = "true|false")]
    pub boot_asset_gate: Option<bool>,
    #[command(flatten)]
    pub netdev: NetdevArgs,
}

/// `--tunnel-ttl`'s help, with the bounds the server enforces.
fn tunnel_ttl_help() -> String {
    let range = ferry_core::model::TUNNEL_TTL_RANGE;
    format!(
        "Tunnel time to live, e.g. 10m, 1h: {}s to {}h (unset: the server's tunnel_ttl_secs). A tunnel that has \
         not phoned home by then is closed",
        range.start(),
        range.end() / 3600
    )
}

/// One interface's settings; `--netdev` names it (default eth0).
#[derive(Args, Debug, Default)]
pub struct NetdevArgs {
    /// The interface the --mac/--ip/--netmask/... flags of this command set
    /// [default: eth0].
    #[arg(long, value_name = "NAME")]
    pub netdev: Option<String>,
    /// The interface's MAC address (nodes only; unique across nodes): DHCP leases and
    /// the agent's enrollment find the node by it.
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// IPv4 address; with a hostlist, the first node's, counting up.
    #[arg(long = "ip")]
    pub ipv4: Option<String>,
    /// IPv4 netmask, e.g. 255.255.0.0.
    #[arg(long, value_name = "MASK")]
    pub netmask: Option<String>,
    /// Default gateway (IPv4 or IPv6).
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,
    /// IPv6 address; with a hostlist, the first node's, counting up.
    #[arg(long = "ip6")]
    pub ipv6: Option<String>,
    /// IPv6 prefix length (0 to 128).
    #[arg(long = "ip6-prefix", value_name = "LEN")]
    pub ipv6_prefix: Option<u8>,
    /// VLAN id (1 to 4094).
    #[arg(long, value_name = "ID")]
    pub vlan: Option<u16>,
    /// MTU in bytes (576 to 65535).
    #[arg(long, value_name = "BYTES")]
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

/// Subcommands that never talk to the admin API: `--admin-socket` is hidden from their
/// help (clap copies a global flag into every subcommand) and refused on their command
/// line.
pub const WITHOUT_ADMIN_SOCKET: &[&str] = &["agent", "bench", "completions", "man"];

/// The command line as clap parses it and as completions and man pages describe it.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    // clap copies a global flag into each subcommand that has no argument of that id
    // yet: these get a hidden copy (still global, so their own subcommands too).
    let hidden = cmd.get_arguments().find(|a| a.get_id() == "socket").cloned().map(|a| a.hide(true));
    for name in WITHOUT_ADMIN_SOCKET {
        if let Some(hidden) = hidden.clone() {
            cmd = cmd.mut_subcommand(name, |sub| sub.arg(hidden));
        }
    }
    cmd
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
