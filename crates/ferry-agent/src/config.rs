//! The agent's validated configuration: flags over kernel command line parameters,
//! plus the asset tag read from DMI.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_core::{MacAddr, NodeName};
use ferry_wg::{BackendChoice, PublicKey};
use hyper::Uri;
use zeroize::Zeroizing;

use crate::args::{AgentArgs, Mode, ServerOrder};
use crate::cmdline::{split_list, FerryParams};
use crate::error::AgentError;
use crate::tcti::Tcti;

/// Placeholders firmware puts in DMI strings when nobody set a value (compared
/// case-insensitively after trimming). Such a tag is treated as no tag at all.
const PLACEHOLDERS: &[&str] = &[
    "not specified",
    "default string",
    "to be filled by o.e.m.",
    "to be filled by oem",
    "none",
    "n/a",
    "na",
    "not available",
    "not applicable",
    "unknown",
    "no asset tag",
    "no asset information",
    "asset tag",
    "asset tag:",
    "chassis asset tag",
    "system asset tag",
    "0",
    "0000000000",
    "0123456789",
    "1234567890",
    "invalid",
    "empty",
];

/// Longest asset tag file read (the server accepts at most 256 bytes).
const MAX_TAG_FILE: u64 = 4096;

/// An enrollment server: where the challenge and enroll paths are appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `http[s]://host[:port][/prefix]`, without a trailing slash.
    pub base: String,
    pub https: bool,
    /// The host as written (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl ServerUrl {
    /// Parses `http://host[:port][/prefix]`; a missing scheme means `http://`.
    pub fn parse(s: &str) -> Result<Self, AgentError> {
        let bad = |why: &str| AgentError::Config(format!("invalid ferry server URL {s:?}: {why}"));
        let with_scheme = if s.contains("://") { s.to_string() } else { format!("http://{s}") };
        let uri: Uri = with_scheme.parse().map_err(|_| bad("not a URL (expected http://HOST:PORT)"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("only http:// and https:// URLs are supported")),
        };
        if uri.query().is_some() {
            return Err(bad("a server URL takes no query string"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user names in the URL are not supported"));
        }
        // `http:/10.0.0.1:8470` (one slash) would otherwise be host "http", port 80.
        if authority.as_str().ends_with(':') {
            return Err(bad("empty port (a scheme needs two slashes: http://HOST:PORT)"));
        }
        let host = match authority.host().strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6.to_string(),
            Some(_) => return Err(bad("not an IPv6 address in brackets")),
            None if is_host_name(authority.host()) => authority.host().to_string(),
            None => return Err(bad("the host must be an IP address or a DNS name")),
        };
        // What follows the host; `Authority::port` would say "no port" for `h:99999`.
        let port = match &authority.as_str()[authority.host().len()..] {
            "" if https => 443,
            "" => 80,
            rest => rest
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("expected HOST or HOST:PORT with a port 1-65535"))?,
        };
        let path = uri.path().trim_end_matches('/');
        let scheme = if https { "https" } else { "http" };
        Ok(ServerUrl { base: format!("{scheme}://{authority}{path}"), https, host, port })
    }

    /// The URL of an API path (which starts with '/').
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// An IPv4 address or a DNS name: dot-separated labels of letters, digits and inner
/// hyphens (what the agent can connect to; the URL parser alone lets `[`, `%` and the
/// like through).
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Internal timings; tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// First back-off delay for enrollment retries (doubles up to `retry_max`).
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// First delay between datasource probes through a new tunnel.
    pub probe_initial: Duration,
    /// Time limit of one enrollment request.
    pub request_timeout: Duration,
    /// Time limit of one probe through the tunnel (the first one waits for the handshake).
    pub probe_timeout: Duration,
    /// How long past the tunnel's TTL a holding agent keeps the (dead) interface.
    pub ttl_grace: Duration,
    /// How often a holding agent with several servers checks that its server still
    /// answers through the tunnel (`watch.rs`; each wait is jittered down to half).
    pub watch_interval: Duration,
    /// How long without an answer through the tunnel before the server may be lost:
    /// short, because cloud-init gives up its datasource after about 11 s when the
    /// dead server's WireGuard device still resets connections.
    pub watch_patience: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            probe_initial: Duration::from_millis(250),
            request_timeout: Duration::from_secs(15),
            probe_timeout: Duration::from_secs(3),
            ttl_grace: Duration::from_secs(30),
            watch_interval: Duration::from_secs(2),
            watch_patience: Duration::from_secs(4),
        }
    }
}

/// Everything the agent needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Enrollment servers (at least one), tried in order: the agent fails over to the
    /// next one when a server is unreachable, busy, or lost mid-boot.
    pub servers: Vec<ServerUrl>,
    /// Which server is tried first (`--server-order`, `ferry.server_order=`).
    pub server_order: ServerOrder,
    /// The servers' WireGuard keys, pinned (`ferry.pubkey=K1,K2,...`): an enrollment
    /// answer must offer one of them.
    pub pinned: Vec<PublicKey>,
    pub node: Option<NodeName>,
    /// The asset tag, if the machine has a real one. Never logged.
    pub asset_tag: Option<Zeroizing<String>>,
    /// The TPM to prove the `tpm` factor with (`--tpm`, `ferry.tpm`); `None`: no TPM.
    pub tpm: Option<Tcti>,
    /// The SHA-256 of the https servers' certificates (`--tls-pin`, `ferry.tls`; one per
    /// server when they have different certificates).
    pub tls_pins: Vec<[u8; 32]>,
    /// `--mac`; when `None` it is discovered from the route to the server.
    pub mac: Option<MacAddr>,
    pub mode: Mode,
    pub interface: String,
    pub backend: BackendChoice,
    pub hold: bool,
    pub timeout: Duration,
    pub tunnel_timeout: Duration,
    pub seed_dir: PathBuf,
    /// cloud-init mode: the `network:` drop-in for the node's network-config.
    pub network_config_file: PathBuf,
    pub state_dir: PathBuf,
    pub ssh_dir: PathBuf,
    /// Fetch mode: what to do with the SSH host keys before phone-home.
    pub host_keys: crate::host_keys::HostKeys,
    /// Persistent keepalive of the server peer, seconds.
    pub keepalive: u16,
    /// The kernel's hostname (phone-home report).
    pub hostname_file: PathBuf,
    /// Where interface MACs are read (`/sys/class/net`).
    pub sys_class_net: PathBuf,
    pub tuning: Tuning,
    /// `--image-root`: unpack the node's image there (fetch mode).
    pub image: Option<crate::image::ImageTarget>,
}

impl Config {
    /// Builds the configuration from flags, the pins baked into the initramfs, the
    /// kernel command line and the asset tag file.
    pub fn from_args(args: &AgentArgs) -> Result<Self, AgentError> {
        let baked = crate::baked::read(&args.pins_file)?;
        let complete =
            (args.server.is_some() || !baked.servers.is_empty()) && (args.pubkey.is_some() || baked.pubkey.is_some());
        let params = match FerryParams::read(&args.cmdline) {
            Ok(p) => p,
            // With the server and its key known otherwise, a missing /proc/cmdline does not matter.
            Err(e) if complete => {
                tracing::debug!("ignoring the kernel command line: {e}");
                FerryParams::default()
            }
            Err(e) => return Err(e),
        };
        if baked != FerryParams::default() {
            tracing::info!(pins = %args.pins_file.display(), "using the server pins baked into this initramfs");
        }
        let params = crate::baked::apply(params, baked, &args.pins_file);
        let asset_tag = read_asset_tag(&args.asset_tag_file)?;
        Self::build(args, params, asset_tag)
    }

    /// Combines flags and kernel parameters (flags win).
    pub fn build(
        args: &AgentArgs,
        params: FerryParams,
        asset_tag: Option<Zeroizing<String>>,
    ) -> Result<Self, AgentError> {
        let servers = args.server.as_deref().map(split_list).unwrap_or(params.servers);
        if servers.is_empty() {
            return Err(AgentError::Config(
                "no ferry server configured: add ferry.server=http://SERVER:PORT to the kernel command \
                 line, or pass --server"
                    .into(),
            ));
        }
        let servers = servers.iter().map(|s| ServerUrl::parse(s)).collect::<Result<Vec<_>, _>>()?;
        let server_order = match (args.server_order, params.server_order.as_deref()) {
            (Some(order), _) => order,
            (None, None) => ServerOrder::default(),
            (None, Some(word)) => <ServerOrder as clap::ValueEnum>::from_str(word, true).map_err(|_| {
                AgentError::Config(format!("invalid ferry.server_order={word:?}: use hashed or listed"))
            })?,
        };
        let pubkey = args.pubkey.clone().or(params.pubkey).ok_or_else(|| {
            AgentError::Config(
                "no server key pinned: add ferry.pubkey=KEY (the server's WireGuard public key, as \
                 `wg show ferry0 public-key` prints it on the server) to the kernel command line, or pass --pubkey"
                    .into(),
            )
        })?;
        let pinned = split_list(&pubkey)
            .iter()
            .map(|k| {
                k.parse::<PublicKey>()
                    .map_err(|e| AgentError::Config(format!("invalid server key in ferry.pubkey= / --pubkey: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if pinned.is_empty() {
            return Err(AgentError::Config("ferry.pubkey= / --pubkey is empty: give the server's key".into()));
        }
        let node = match args.node.clone().or(params.node) {
            Some(n) => Some(
                NodeName::parse(&n)
                    .map_err(|e| AgentError::Config(format!("invalid node name in ferry.node= / --node: {e}")))?,
            ),
            None => None,
        };
        let tls_pins = match args.tls_pin.as_deref().or(params.tls.as_deref()) {
            Some(pins) => split_list(pins).iter().map(|p| parse_pin(p)).collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        match (servers.iter().any(|s| s.https), !tls_pins.is_empty()) {
            (true, false) => {
                return Err(AgentError::Config(
                    "an https:// ferry.server needs the certificate pinned: add ferry.tls=sha256:HEX \
                     (`ferry server-cert` on the server prints it), or pass --tls-pin"
                        .into(),
                ))
            }
            (false, true) => {
                return Err(AgentError::Config(
                    "ferry.tls= / --tls-pin pins a TLS certificate, but ferry.server is http://: use https://".into(),
                ))
            }
            _ => {}
        }
        let tpm = match args.tpm.as_deref().or(params.tpm.as_deref()) {
            Some(tcti) => Some(tpm_tcti(tcti)?),
            None => None,
        };
        let mac = match &args.mac {
            Some(m) => Some(MacAddr::parse(m).map_err(|e| AgentError::Config(format!("invalid --mac: {e}")))?),
            None => None,
        };
        ferry_core::net::check_interface_name(&args.interface)
            .map_err(|e| AgentError::Config(format!("invalid --interface: {e}")))?;
        if asset_tag.is_some() && node.is_none() && tpm.is_none() {
            tracing::warn!(
                "this machine has an asset tag, but no node name is known, so no asset-tag proof is sent \
                 (the proof binds the node name): add ferry.node=NAME to the kernel command line if this \
                 node's policy requires the asset tag"
            );
        }
        if args.timeout.is_zero() {
            return Err(AgentError::Config("--timeout must be more than 0".into()));
        }
        Ok(Config {
            servers,
            server_order,
            pinned,
            node,
            asset_tag,
            tpm,
            tls_pins,
            mac,
            mode: args.mode,
            interface: args.interface.clone(),
            backend: args.wg_backend,
            hold: args.hold,
            timeout: args.timeout,
            tunnel_timeout: args.tunnel_timeout,
            seed_dir: args.seed_dir.clone(),
            network_config_file: args.network_config_file.clone(),
            state_dir: args.state_dir.clone(),
            ssh_dir: args.ssh_dir.clone(),
            host_keys: args.ssh_host_keys,
            keepalive: 5,
            hostname_file: PathBuf::from("/proc/sys/kernel/hostname"),
            sys_class_net: PathBuf::from("/sys/class/net"),
            tuning: Tuning::default(),
            image: crate::image::ImageTarget::from_args(args)?,
        })
    }

    /// The first server: the one whose route tells which interface (and MAC) boots.
    pub fn first_server(&self) -> &ServerUrl {
        // `build` guarantees at least one; index 0 of a non-empty Vec.
        &self.servers[0]
    }
}

/// `sha256:HEX` (or bare HEX, colons allowed as `openssl x509 -fingerprint` prints it).
pub fn parse_pin(pin: &str) -> Result<[u8; 32], AgentError> {
    let hex: String = pin.trim().trim_start_matches("sha256:").chars().filter(|c| *c != ':').collect();
    ferry_core::model::decode_hex(&hex).and_then(|v| <[u8; 32]>::try_from(v).ok()).ok_or_else(|| {
        AgentError::Config(format!("invalid ferry.tls= / --tls-pin {pin:?}: expected sha256: and 64 hex digits"))
    })
}

/// Why `ferry.tpm` cannot work in a build without the `tpm` feature.
pub const NO_TPM_SUPPORT: &str = "this ferry was built without TPM support (cargo feature `tpm`, which needs \
     libtss2-dev): rebuild it with the feature, or remove ferry.tpm / --tpm";

/// The TCTI of `ferry.tpm` / `--tpm`, validated.
fn tpm_tcti(tcti: &str) -> Result<Tcti, AgentError> {
    let tcti = Tcti::parse(tcti).map_err(AgentError::Config)?;
    if cfg!(feature = "tpm") {
        Ok(tcti)
    } else {
        Err(AgentError::Config(format!("cannot use the TPM at {tcti}: {NO_TPM_SUPPORT}")))
    }
}

/// Reads the asset tag; a missing file, an empty one or a firmware placeholder mean "no tag".
pub fn read_asset_tag(path: &Path) -> Result<Option<Zeroizing<String>>, AgentError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(path = %path.display(), "no asset tag file");
            return Ok(None);
        }
        Err(e) => return Err(AgentError::io_path("read the asset tag file", path, e)),
    };
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_TAG_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| AgentError::io_path("read the asset tag file", path, e))?;
    let text = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
    let tag = clean_asset_tag(&text).map(|t| Zeroizing::new(t.to_string()));
    if tag.is_none() {
        tracing::info!(path = %path.display(), "the asset tag is empty or a firmware placeholder: sending no asset-tag proof");
    }
    Ok(tag)
}

/// The tag without surrounding whitespace, or `None` for an empty tag, a firmware
/// placeholder, or a value the server could never hold (over 256 bytes, control characters).
pub fn clean_asset_tag(raw: &str) -> Option<&str> {
    let tag = raw.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if tag.is_empty() || tag.len() > 256 || tag.chars().any(char::is_control) {
        return None;
    }
    let lower = tag.to_lowercase();
    if PLACEHOLDERS.contains(&lower.as_str()) {
        return None;
    }
    Some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse_for_tests as args;

    const KEY: &str = "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk=";

    #[test]
    fn asset_tag_placeholders_mean_no_tag() {
        for raw in [
            "",
            "\n",
            "   \t \n",
            "Not Specified\n",
            "Default string",
            "To Be Filled By O.E.M.",
            "  to be filled by o.e.m.  ",
            "NONE",
            "0123456789",
            "\0\0\0",
            "tab\tinside",
        ] {
            assert_eq!(clean_asset_tag(raw), None, "{raw:?}");
        }
        assert_eq!(clean_asset_tag("ASSET-0042\n"), Some("ASSET-0042"));
        assert_eq!(clean_asset_tag("  rack 7 slot 3 "), Some("rack 7 slot 3"));
        assert_eq!(clean_asset_tag(&"x".repeat(257)), None);
    }

    #[test]
    fn asset_tag_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tag");
        assert!(read_asset_tag(&path).expect("missing is fine").is_none());
        std::fs::write(&path, "Default string\n").expect("write");
        assert!(read_asset_tag(&path).expect("read").is_none());
        std::fs::write(&path, "T-1000\n").expect("write");
        assert_eq!(read_asset_tag(&path).expect("read").as_deref().map(String::as_str), Some("T-1000"));
    }

    #[test]
    fn server_urls() {
        let s = ServerUrl::parse("http://10.0.0.1:8080/").expect("valid");
        assert_eq!((s.base.as_str(), s.host.as_str(), s.port), ("http://10.0.0.1:8080", "10.0.0.1", 8080));
        assert_eq!(s.url("/v1/enroll"), "http://10.0.0.1:8080/v1/enroll");
        let s = ServerUrl::parse("boot.example:9000").expect("scheme optional");
        assert_eq!(s.base, "http://boot.example:9000");
        let s = ServerUrl::parse("http://[fd00::1]/ferry").expect("v6 with prefix");
        assert_eq!((s.host.as_str(), s.port), ("fd00::1", 80));
        assert_eq!(s.url("/v1/enroll"), "http://[fd00::1]/ferry/v1/enroll");
        assert!(ServerUrl::parse("https://x").expect("https (with a pin)").https);
        for bad in ["ftp://x", "http://", "http://x?y=1", "http://u@x", "http://x y", "http://x:/y"] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
        // Found by fuzzing: a scheme with one slash made the scheme the host; hosts the
        // URL parser lets through but nothing can connect to; ports beyond u16 became 80.
        let e = ServerUrl::parse("http:/10.0.0.1:8470").expect_err("one slash").to_string();
        assert!(e.contains("two slashes"), "{e}");
        for bad in [
            "https:/h",
            "http://b0exampl[:]500",
            "http://a%41b/",
            "http://[fd00::zz]/",
            "http://h:99999",
            "http://h:0",
            "http://-h/",
            "http://a..b/",
            "https://[fd00::]1:843/",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ServerUrl::parse("http://boot-1.example.:8470").expect("a DNS name").host, "boot-1.example.");
    }

    #[test]
    fn https_needs_a_pin_and_a_pin_needs_https() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let params = |server: &str, tls: Option<&str>| FerryParams {
            servers: vec![server.into()],
            pubkey: Some(KEY.into()),
            tls: tls.map(str::to_owned),
            ..Default::default()
        };
        let c = Config::build(&args(&[]), params("https://10.0.0.1:8443", Some(&pin)), None).expect("valid");
        assert_eq!(c.tls_pins, vec![[0xab; 32]]);
        assert!(c.first_server().https && c.first_server().base == "https://10.0.0.1:8443");
        assert_eq!(ServerUrl::parse("https://h").unwrap().port, 443);
        let e = Config::build(&args(&[]), params("https://10.0.0.1:8443", None), None).unwrap_err();
        assert!(e.to_string().contains("ferry.tls=sha256:"), "{e}");
        let e = Config::build(&args(&[]), params("http://10.0.0.1:8470", Some(&pin)), None).unwrap_err();
        assert!(e.to_string().contains("use https://"), "{e}");
        let e = Config::build(&args(&[]), params("https://h", Some("sha256:abcd")), None).unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        let colons = (0..32).map(|_| "AB").collect::<Vec<_>>().join(":");
        let flag = Config::build(&args(&["--tls-pin", &colons]), params("https://h", None), None).expect("flag");
        assert_eq!(flag.tls_pins, vec![[0xab; 32]]);
    }

    #[test]
    fn the_server_order_comes_from_the_flag_or_the_command_line() {
        let params = |order: Option<&str>| FerryParams {
            servers: vec!["http://a".into(), "http://b".into()],
            pubkey: Some(KEY.into()),
            server_order: order.map(str::to_owned),
            ..Default::default()
        };
        let order = |flags: &[&str], word| Config::build(&args(flags), params(word), None).map(|c| c.server_order);
        assert_eq!(order(&[], None).expect("default"), ServerOrder::Hashed);
        assert_eq!(order(&[], Some("listed")).expect("cmdline"), ServerOrder::Listed);
        assert_eq!(order(&["--server-order", "hashed"], Some("listed")).expect("flag wins"), ServerOrder::Hashed);
        let e = order(&[], Some("random")).unwrap_err().to_string();
        assert!(e.contains("ferry.server_order") && e.contains("hashed or listed"), "{e}");
    }

    #[test]
    fn several_servers_keys_and_pins() {
        let other = ferry_wg::PrivateKey::from_bytes([3; 32]).public_key().to_base64();
        let params = FerryParams {
            servers: vec!["https://a:1".into(), "https://b:2".into()],
            pubkey: Some(format!("{KEY}, {other}")),
            tls: Some(format!("sha256:{},sha256:{}", "ab".repeat(32), "cd".repeat(32))),
            ..Default::default()
        };
        let c = Config::build(&args(&[]), params.clone(), None).expect("valid");
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.pinned.len(), 2);
        assert_eq!(c.pinned[1].to_base64(), other);
        assert_eq!(c.tls_pins, vec![[0xab; 32], [0xcd; 32]]);
        let bad = FerryParams { pubkey: Some(format!("{KEY},nope")), ..params.clone() };
        assert!(Config::build(&args(&[]), bad, None).is_err(), "every pinned key must be valid");
        let empty = FerryParams { pubkey: Some(",".into()), ..params };
        assert!(Config::build(&args(&[]), empty, None).is_err(), "no key at all");
    }

    #[test]
    fn flags_override_kernel_parameters() {
        let params = FerryParams {
            servers: vec!["http://a:1".into(), "http://b:2".into()],
            pubkey: Some(KEY.into()),
            node: Some("n1".into()),
            tpm: None,
            tls: None,
            server_order: None,
        };
        let c = Config::build(&args(&[]), params.clone(), None).expect("valid");
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.first_server().host, "a");
        assert_eq!(c.node.as_ref().map(NodeName::as_str), Some("n1"));
        let c = Config::build(
            &args(&["--server", "http://c:3", "--node", "n2", "--mac", "52-54-00-12-34-56"]),
            params,
            None,
        )
        .expect("valid");
        assert_eq!(c.first_server().host, "c");
        assert_eq!(c.node.as_ref().map(NodeName::as_str), Some("n2"));
        assert_eq!(c.mac.map(|m| m.to_string()).as_deref(), Some("52:54:00:12:34:56"));
    }

    #[test]
    fn tpm_from_the_command_line_or_the_flag() {
        let params = FerryParams { pubkey: Some(KEY.into()), servers: vec!["http://a".into()], ..Default::default() };
        let c = Config::build(&args(&[]), params.clone(), None).expect("valid");
        assert_eq!(c.tpm, None, "no ferry.tpm: no TPM");
        let with_tpm = FerryParams { tpm: Some("device".into()), ..params.clone() };
        let result = Config::build(&args(&[]), with_tpm.clone(), None);
        let flag = Config::build(&args(&["--tpm", "swtpm:host=127.0.0.1,port=2321"]), with_tpm, None);
        let bad = Config::build(&args(&["--tpm", "tpm0"]), params, None).expect_err("invalid TCTI");
        assert_eq!(bad.exit_code(), 2);
        assert!(bad.to_string().contains("invalid TPM TCTI"), "{bad}");
        if cfg!(feature = "tpm") {
            assert_eq!(result.expect("valid").tpm.map(|t| t.to_string()).as_deref(), Some("device:/dev/tpmrm0"));
            assert_eq!(
                flag.expect("valid").tpm.map(|t| t.to_string()).as_deref(),
                Some("swtpm:host=127.0.0.1,port=2321"),
                "the flag wins"
            );
        } else {
            let err = result.expect_err("no TPM support");
            assert!(err.to_string().contains("without TPM support"), "{err}");
        }
    }

    #[test]
    fn missing_or_bad_values_are_usage_errors() {
        let none = FerryParams::default();
        let err = Config::build(&args(&[]), none.clone(), None).expect_err("no server");
        assert!(err.to_string().contains("ferry.server="), "{err}");
        assert_eq!(err.exit_code(), 2);
        let err = Config::build(&args(&["--server", "http://a"]), none.clone(), None).expect_err("no key");
        assert!(err.to_string().contains("ferry.pubkey="), "{err}");
        for bad in [
            vec!["--server", "http://a", "--pubkey", "nope"],
            vec!["--server", "http://a", "--pubkey", KEY, "--node", "Bad Name!"],
            vec!["--server", "http://a", "--pubkey", KEY, "--mac", "zz"],
            vec!["--server", "http://a", "--pubkey", KEY, "--interface", "much-too-long-name0"],
            vec!["--server", "http://a", "--pubkey", KEY, "--timeout", "0"],
        ] {
            let err = Config::build(&args(&bad), none.clone(), None).expect_err("invalid");
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }
}
