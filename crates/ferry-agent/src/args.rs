//! Command line flags of `ferry agent` and `ferry agent teardown`.

use std::path::PathBuf;
use std::time::Duration;

use ferry_wg::BackendChoice;

/// What the agent does once the tunnel is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Fetch the seed into --seed-dir, phone home, remove the tunnel, print
    /// `ds=nocloud;s=file://SEED_DIR/`.
    Fetch,
    /// Keep the tunnel up for cloud-init, print `ds=nocloud-net;s=DATASOURCE_URL`, and run
    /// until SIGTERM/SIGINT (or `ferry agent teardown`).
    CloudInit,
}

/// Which of several servers a node tries first (it then goes round the list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ServerOrder {
    /// Start at the server picked by a hash of the node's MAC: a boot storm spreads
    /// evenly over the servers, and a node always starts at the same one.
    #[default]
    Hashed,
    /// Start at the first listed server (every node the same: one server takes a
    /// whole storm while the others wait as standbys).
    Listed,
}

/// The WireGuard backends the agent can use: `auto`, `kernel`, `userspace`. Not `uapi`:
/// the agent makes its own interface (addresses, route, guard) rather than attach to
/// one another process runs.
fn agent_backends() -> impl clap::builder::TypedValueParser<Value = BackendChoice> {
    use clap::builder::TypedValueParser;
    use clap::ValueEnum;
    let offered = BackendChoice::value_variants()
        .iter()
        .filter(|b| **b != BackendChoice::Uapi)
        .filter_map(ValueEnum::to_possible_value);
    clap::builder::PossibleValuesParser::new(offered).try_map(|word| word.parse::<BackendChoice>())
}

/// `ferry agent`: enroll this node, fetch its cloud-init seed through an ephemeral
/// WireGuard tunnel, phone home and tear the tunnel down.
///
/// Configuration comes from the kernel command line (`ferry.server=URL[,URL...]`,
/// `ferry.pubkey=KEY[,KEY...]`, optional `ferry.node=NAME`); pins baked into the
/// initramfs (`--pins-file`) override it, and flags override both. Only the datasource
/// line is printed on standard output; logs go to standard error.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Enrollment server URL(s), comma-separated (overrides ferry.server=). With
    /// several, the agent fails over to the next one when a server is unreachable,
    /// busy, or lost after enrolling.
    #[arg(long, value_name = "URL[,URL...]")]
    pub server: Option<String>,

    /// Which server to try first when there are several (overrides
    /// ferry.server_order=): hashed (by the node's MAC, spreads a boot storm) or listed.
    #[arg(long, value_enum, value_name = "ORDER")]
    pub server_order: Option<ServerOrder>,

    /// The ferry servers' WireGuard public keys, base64, comma-separated (overrides
    /// ferry.pubkey=). The agent refuses any server that presents another key.
    #[arg(long, value_name = "KEY[,KEY...]")]
    pub pubkey: Option<String>,

    /// This node's name in the ferry inventory (overrides ferry.node=). Needed to prove
    /// the asset tag; without it no asset-tag proof is sent.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,

    /// Prove the TPM factor with this TPM (overrides ferry.tpm): a TCTI such as
    /// device:/dev/tpm0 or swtpm:host=127.0.0.1,port=2321; `--tpm` alone (or `device`)
    /// means device:/dev/tpmrm0. Without it (and ferry.tpm) no TPM is used.
    #[arg(long, value_name = "TCTI", num_args = 0..=1, default_missing_value = "device")]
    pub tpm: Option<String>,

    /// The SHA-256 of the servers' TLS certificates (`sha256:HEX[,sha256:HEX...]`,
    /// overrides ferry.tls=), for https:// servers: the agent accepts those
    /// certificates and no other.
    #[arg(long, value_name = "sha256:HEX[,...]")]
    pub tls_pin: Option<String>,

    /// fetch: write the seed and tear down; cloud-init: keep the tunnel for cloud-init.
    #[arg(long, value_enum, default_value_t = Mode::Fetch)]
    pub mode: Mode,

    /// The MAC to present (default: the MAC of the interface that routes to the server).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,

    /// The WireGuard interface to create.
    #[arg(long, value_name = "NAME", default_value = "ferry-node0")]
    pub interface: String,

    /// WireGuard implementation.
    #[arg(long, default_value_t = BackendChoice::Auto, value_parser = agent_backends())]
    pub wg_backend: BackendChoice,

    /// In cloud-init mode with kernel WireGuard, keep running until SIGTERM instead of
    /// exiting and leaving the interface for `ferry agent teardown`. Implied with several
    /// servers: the agent stays to move the tunnel if its server is lost.
    #[arg(long)]
    pub hold: bool,

    /// Give up enrolling (and fetching) after this long: "300", "90s", "5m".
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How long to wait for the datasource to answer through a new tunnel (with
    /// several servers: how long a silent server is given before failing over).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub tunnel_timeout: Duration,

    /// Where the seed is written in fetch mode (created 0700, files 0600).
    #[arg(long, value_name = "DIR", default_value = "/run/ferry/seed")]
    pub seed_dir: PathBuf,

    /// Fetch mode: after the seed and before phone-home, unpack the node's image root
    /// into DIR (the tmpfs /init switches to): its key and digest come through the
    /// tunnel, the archive from the provisioning listener; a root that does not match
    /// its digest is refused (exit 7) before anything is unpacked.
    #[arg(long, value_name = "DIR")]
    pub image_root: Option<PathBuf>,

    /// Where the image root's archive is kept while it is checked and unpacked (on a
    /// tmpfs: its space is given back as the unpacking goes).
    #[arg(long, value_name = "FILE", default_value = "/run/ferry/image.part")]
    pub image_cache: PathBuf,

    /// cloud-init mode: where the node's network-config (fetched through the tunnel) is
    /// written as a cloud-init `network:` drop-in, which cloud-init 22.4's local stage
    /// applies (it does not fetch network-config from an s= URL). Removed when the node
    /// has none; not written when its directory does not exist.
    #[arg(long, value_name = "FILE", default_value = crate::network_config::DEFAULT_DROP_IN)]
    pub network_config_file: PathBuf,

    /// Where the cloud-init mode state file (agent.json) is written.
    #[arg(long, value_name = "DIR", default_value = "/run/ferry")]
    pub state_dir: PathBuf,

    /// Where the SSH host public keys reported at phone-home are read from (and, in
    /// fetch mode, the host certificates and sshd/ssh drop-ins are written).
    #[arg(long, value_name = "DIR", default_value = "/etc/ssh")]
    pub ssh_dir: PathBuf,

    /// Fetch mode: have the host keys in --ssh-dir certified by ferry's SSH host CA
    /// through the tunnel before phone-home (certify), make an ed25519 host key there
    /// first if there is none (generate), or leave SSH alone (off).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = crate::host_keys::HostKeys::Certify)]
    pub ssh_host_keys: crate::host_keys::HostKeys,

    /// The kernel command line to read ferry.* parameters from.
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,

    /// Server pins baked into the initramfs (`ferry image initramfs --pin-...`): the
    /// ferry.server=, ferry.pubkey= and ferry.tls= it holds win over the kernel command
    /// line, which the boot channel can rewrite. A missing file pins nothing.
    #[arg(long, value_name = "FILE", default_value = crate::baked::BAKED_PINS_PATH)]
    pub pins_file: PathBuf,

    /// The file holding the chassis asset tag.
    #[arg(long, value_name = "FILE", default_value = "/sys/class/dmi/id/chassis_asset_tag")]
    pub asset_tag_file: PathBuf,
}

/// `ferry agent teardown`: stop a cloud-init mode agent and remove its tunnel.
/// Idempotent: succeeds when there is nothing to tear down.
#[derive(Debug, Clone, clap::Args)]
pub struct TeardownArgs {
    /// The directory holding the agent's state file (agent.json).
    #[arg(long, value_name = "DIR", default_value = "/run/ferry")]
    pub state_dir: PathBuf,

    /// How long to wait for the agent to exit after SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub wait: Duration,
}

/// Parses "300" (seconds) or a humantime duration ("90s", "5m", "1h 30m").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map(Duration::from_secs).map_err(|e| e.to_string());
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (use seconds like 300, or 90s, 5m)"))
}

/// `ferry agent` alone on a command line (tests).
#[cfg(test)]
#[derive(clap::Parser)]
pub(crate) struct TestCli {
    #[command(flatten)]
    pub args: AgentArgs,
}

/// `ferry agent`'s flags from `extra` (the tests of the modules that read them).
#[cfg(test)]
pub(crate) fn parse_for_tests(extra: &[&str]) -> AgentArgs {
    use clap::Parser;
    TestCli::try_parse_from(std::iter::once("agent").chain(extra.iter().copied())).expect("flags parse").args
}

#[cfg(test)]
mod tests {
    use super::TestCli as Cli;
    use super::*;
    use clap::Parser;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999999").is_err());
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["agent"]).expect("defaults parse");
        let a = cli.args;
        assert_eq!(a.mode, Mode::Fetch);
        assert_eq!(a.interface, "ferry-node0");
        assert_eq!(a.timeout, Duration::from_secs(300));
        assert_eq!(a.seed_dir, PathBuf::from("/run/ferry/seed"));
        let cli = Cli::try_parse_from(["agent", "--mode", "cloud-init", "--wg-backend", "userspace", "--timeout", "2"])
            .expect("parse");
        assert_eq!(cli.args.mode, Mode::CloudInit);
        assert_eq!(cli.args.wg_backend, BackendChoice::Userspace);
        assert_eq!(cli.args.timeout, Duration::from_secs(2));
        assert_eq!(cli.args.tpm, None);
        let cli = Cli::try_parse_from(["agent", "--tpm", "--mode", "fetch"]).expect("bare --tpm");
        assert_eq!(cli.args.tpm.as_deref(), Some("device"));
        let cli = Cli::try_parse_from(["agent", "--tpm", "swtpm:port=2321"]).expect("--tpm TCTI");
        assert_eq!(cli.args.tpm.as_deref(), Some("swtpm:port=2321"));
    }

    /// The agent makes its own interface: of ferry-wg's backends it offers all but uapi,
    /// spelled as everywhere else.
    #[test]
    fn the_wg_backend_flag_offers_the_backends_that_make_an_interface() {
        let backend = |word: &str| Cli::try_parse_from(["agent", "--wg-backend", word]).map(|c| c.args.wg_backend);
        assert_eq!(Cli::try_parse_from(["agent"]).expect("default").args.wg_backend, BackendChoice::Auto);
        for choice in [BackendChoice::Auto, BackendChoice::Kernel, BackendChoice::Userspace] {
            assert_eq!(backend(&choice.to_string()).expect("offered"), choice);
        }
        let refused = backend("uapi").expect_err("uapi attaches to another process's interface").to_string();
        assert!(refused.contains("[possible values: auto, kernel, userspace]"), "{refused}");
    }
}
