//! Server configuration: built-in defaults, then an optional TOML file, then what
//! `FERRY_*` environment variables and command-line flags set ([`Config::load`]); then
//! [`Config::validate`], once, before the server opens anything. Everything built from
//! the configuration trusts the values it checked.

mod validate;

pub use validate::{ENROLL_RATE_RANGE, MAX_BOOT_GATE_FAILURES, MIN_ENROLL_BURST};

use ferry_core::tunnel::TunnelNetwork;
use ferry_wg::BackendChoice;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/ferry";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/ferry/admin.sock";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where ferry keeps its state: the database, the secrets key, the WireGuard key.
    pub data_dir: PathBuf,
    /// The admin API's unix socket (mode 0600).
    pub admin_socket: PathBuf,
    /// Users besides root and the server's own user that may use the admin socket
    /// (names or numeric uids). The socket's mode must also let them connect.
    pub admin_users: Vec<String>,
    /// The sealing key for asset tags and secrets (32 bytes, 0600); default
    /// `data_dir/secrets.key`, created on first start.
    pub secrets_key: Option<PathBuf>,
    /// `text` or `json` log lines on stderr.
    pub log_format: LogFormat,
    /// The store: an SQLite file (`sqlite:PATH` or a path; default `data_dir/ferry.db`)
    /// or `postgres://USER@HOST/DB`, which several servers may share ([cluster]).
    pub store: Option<String>,
    /// Audit entries older than this many days are deleted (hourly); 0 keeps them all.
    /// The database records it and refuses to delete anything younger, whoever asks.
    /// Several servers on one store should agree (each change is audited).
    pub audit_retention_days: u32,
    pub cluster: ClusterConfig,
    pub provisioning: ProvisioningConfig,
    pub wireguard: WireGuardConfig,
    pub datasource: DatasourceConfig,
    pub tpm: TpmConfig,
    pub remote_admin: RemoteAdminConfig,
    pub ssh: SshConfig,
}

/// ferry as the cluster's SSH host certificate authority (`ferry ssh ...`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SshConfig {
    /// How long a host certificate issued at boot is valid, seconds (5 minutes to 90
    /// days). A node that runs longer presents an expired certificate until it boots again.
    pub host_certificate_validity_secs: u64,
    /// The known_hosts patterns nodes' own SSH clients trust the host CA for (the file
    /// delivered through the tunnel), e.g. `["*.cluster.example", "n*"]`. Empty: `*`
    /// (the CA signs only inventory names). `ferry ssh known-hosts` lists the
    /// inventory's names instead unless given `--hosts`.
    pub host_patterns: Vec<String>,
}

/// Shortest and longest validity of a host certificate.
pub const HOST_CERTIFICATE_VALIDITY_RANGE: std::ops::RangeInclusive<u64> = 300..=90 * 86_400;

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig { host_certificate_validity_secs: 7 * 86_400, host_patterns: Vec::new() }
    }
}

/// Several servers on one PostgreSQL store: each has an id, its own WireGuard device
/// and key, and a heartbeat in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This server's id among those sharing the store (letters, digits, `-`, `.`, `_`;
    /// at most 63). Default: the host name.
    pub server_id: Option<String>,
    /// How often this server records that it is alive, seconds.
    pub heartbeat_secs: u64,
    /// A server whose heartbeat is older than this is lost: the others close its
    /// tunnels, so its nodes enroll again elsewhere. Seconds; more than 2 heartbeats.
    pub lost_after_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { server_id: None, heartbeat_secs: 2, lost_after_secs: 15 }
    }
}

/// The optional remote admin listener (TLS, bearer tokens with roles).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteAdminConfig {
    /// e.g. `10.0.0.1:8472`; unset: no remote admin (the unix socket only).
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain and key; unset: a self-signed pair is made in the data dir.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names or IPs for the self-signed certificate.
    pub tls_names: Vec<String>,
}

/// The `tpm` identity factor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TpmConfig {
    /// PEM file of the CAs that sign EK certificates (the TPM manufacturers' roots and
    /// intermediates). Unset: EK certificates cannot be checked, so `--tpm-ek-cert` is
    /// refused and nodes are registered by EK public key only.
    pub ek_ca_bundle: Option<PathBuf>,
    /// Trust on first use: a node whose policy needs `tpm` but that has no registered
    /// TPM has the EK it presents held as pending until `ferry node approve`. With a CA
    /// bundle, only TPMs whose EK certificate verifies are held.
    pub discovery: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The provisioning network listener: enrollment, boot scripts and artifacts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisioningConfig {
    pub listen: SocketAddr,
    /// The URL nodes reach this listener at, for boot scripts and `ferry.server=`
    /// (e.g. `http://10.0.0.1:8470`). Default: from each request's Host header.
    pub public_url: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For` is believed (the right-most untrusted hop
    /// is the client). Empty: proxy headers are ignored.
    pub trusted_proxies: Vec<IpAddr>,
    /// How long an enrollment nonce stays valid, seconds.
    pub nonce_ttl_secs: u64,
    /// Most nonces outstanding at once; when the table is full, the oldest is dropped to
    /// make room (under a flood a nonce still lives this many / the admitted challenge
    /// rate seconds).
    pub max_pending_nonces: usize,
    /// Most nonces one source (an IPv4 address, an IPv6 /64) holds at once; beyond it
    /// its challenges get 429. Nodes behind one NAT share it.
    pub max_pending_nonces_per_source: usize,
    /// Enrollment requests (challenge, TPM credential, enrollment) admitted per second
    /// from one source address: the TCP peer, or the client a trusted proxy names. One
    /// boot takes 2 (3 with the TPM factor). Beyond it: 429 with Retry-After. 0: no
    /// per-source limit.
    pub enroll_rate_per_source: f64,
    /// How many enrollment requests one source may send at once before the rate applies
    /// (at least 3: one whole enrollment).
    pub enroll_burst_per_source: u32,
    /// Enrollment requests admitted per second from all sources together; 0: no limit.
    /// A quarter more is kept for sources that send little (booting nodes) when the rest
    /// is taken, so a flood from many addresses cannot starve them.
    pub enroll_rate_global: f64,
    /// The global burst (at least 3).
    pub enroll_burst_global: u32,
    /// Enrollments (`/v1/enroll`, `/v1/enroll/tpm`) processed at once; beyond it 503
    /// with Retry-After: 1. 0: no cap.
    pub max_concurrent_enrollments: usize,
    /// A client must send a request's headers within this many seconds of connecting
    /// (or of its previous response), else the connection is closed (slowloris).
    pub header_timeout_secs: u64,
    /// Longest time to read a request and produce the answer's headers, seconds; then
    /// 408. Artifact downloads stream their bodies beyond it.
    pub request_timeout_secs: u64,
    /// A connection on which no byte moved either way and no request is being handled
    /// for this many seconds is closed (e.g. a client that stopped reading a download).
    pub idle_timeout_secs: u64,
    /// Connections open at once from one address (the TCP peer; a proxy or NAT in
    /// front of many nodes counts as one). Beyond it a new connection is closed at once.
    /// Shared by the plain and the TLS listener.
    pub max_connections_per_source: usize,
    /// Connections open at once in all (plain and TLS listener together).
    pub max_connections: usize,
    /// A second, TLS listener for the same API (e.g. `0.0.0.0:8443`); agents pin its
    /// certificate (`ferry.tls=sha256:…`, printed by `ferry server-cert`). The plain
    /// listener stays for iPXE, which cannot pin.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate and key; unset: a self-signed pair is made in the data dir.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Asset-tag boot gate (`--boot-asset-gate`): after this many wrong tags for one
    /// node within `boot_gate_lockout_secs`, its gated artifacts are refused to everyone
    /// (even with the right tag) for `boot_gate_lockout_secs`. At least 1.
    pub boot_gate_max_failures: u32,
    /// The window in which wrong tags are counted, and how long a lock lasts; seconds.
    pub boot_gate_lockout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WireGuardConfig {
    pub interface: String,
    /// `auto` (kernel if the module is there, else in-process userspace), `kernel`,
    /// `userspace`, or `uapi` (attach to an interface run by wireguard-go).
    pub backend: BackendChoice,
    pub listen_port: u16,
    /// `host:port` nodes dial. Default: the address the node reached the provisioning
    /// listener on, with `listen_port`.
    pub endpoint: Option<String>,
    /// Tunnel addresses; the server takes the first host address.
    pub network: TunnelNetwork,
    /// Tunnel time to live when the node's settings do not say, seconds.
    pub tunnel_ttl_secs: u64,
    /// How often the device is reconciled with the store and expired tunnels reaped.
    pub reconcile_interval_secs: u64,
    /// A tunnel whose node has not completed a WireGuard handshake this many seconds
    /// after enrollment is closed (audit `reason=no-handshake`): an agent that refused
    /// the server's key, crashed or never came up holds nothing until the TTL. Checked
    /// at each reconcile. 0 turns it off (not recommended; logged as a warning).
    pub handshake_deadline_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatasourceConfig {
    /// Port of the tunnel-only datasource; it listens on the server's tunnel address only.
    pub port: u16,
    /// As in `[provisioning]`: the request head within this many seconds of connecting
    /// or of the previous answer (so idle keep-alive connections end too).
    pub header_timeout_secs: u64,
    /// A whole request answered within this many seconds, else 408.
    pub request_timeout_secs: u64,
    /// No byte moved and no request in progress for this long: closed.
    pub idle_timeout_secs: u64,
    /// Connections open at once from one tunnel address (cloud-init and the agent use
    /// one or two). A tunnel's connections are closed when the tunnel ends.
    pub max_connections_per_source: usize,
    /// Connections open at once in all.
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: DEFAULT_DATA_DIR.into(),
            admin_socket: DEFAULT_ADMIN_SOCKET.into(),
            admin_users: Vec::new(),
            secrets_key: None,
            log_format: LogFormat::Text,
            store: None,
            audit_retention_days: 365,
            cluster: ClusterConfig::default(),
            provisioning: ProvisioningConfig::default(),
            wireguard: WireGuardConfig::default(),
            datasource: DatasourceConfig::default(),
            tpm: TpmConfig::default(),
            remote_admin: RemoteAdminConfig::default(),
            ssh: SshConfig::default(),
        }
    }
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        ProvisioningConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8470)),
            public_url: None,
            trusted_proxies: Vec::new(),
            nonce_ttl_secs: 60,
            max_pending_nonces: 65_536,
            max_pending_nonces_per_source: 16,
            enroll_rate_per_source: 10.0,
            enroll_burst_per_source: 30,
            enroll_rate_global: 2_000.0,
            enroll_burst_global: 5_000,
            max_concurrent_enrollments: 256,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_connections_per_source: 64,
            max_connections: 8_192,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            boot_gate_max_failures: 10,
            boot_gate_lockout_secs: 900,
        }
    }
}

impl Default for WireGuardConfig {
    fn default() -> Self {
        WireGuardConfig {
            interface: "ferry0".into(),
            backend: BackendChoice::Auto,
            listen_port: 51820,
            endpoint: None,
            network: TunnelNetwork::parse("100.64.0.0/16").expect("default network is valid"),
            tunnel_ttl_secs: 600,
            reconcile_interval_secs: 5,
            handshake_deadline_secs: 30,
        }
    }
}

impl Default for DatasourceConfig {
    fn default() -> Self {
        DatasourceConfig {
            port: 8471,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            idle_timeout_secs: 30,
            max_connections_per_source: 16,
            max_connections: 8_192,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is invalid: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("{0}")]
    Invalid(String),
}

/// What `ferry serve`'s flags and `FERRY_*` environment variables set (clap reads
/// both; a flag wins over its variable). Each value given wins over the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--config` / `FERRY_CONFIG`: the TOML file; none: the built-in defaults.
    pub config_file: Option<PathBuf>,
    /// `--data-dir` / `FERRY_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--admin-socket` / `FERRY_ADMIN_SOCKET`.
    pub admin_socket: Option<PathBuf>,
    /// `--log-format` / `FERRY_LOG_FORMAT`.
    pub log_format: Option<LogFormat>,
    /// `--secrets-key` / `FERRY_SECRETS_KEY`.
    pub secrets_key: Option<PathBuf>,
    /// `--store` / `FERRY_STORE`.
    pub store: Option<String>,
    /// `--server-id` / `FERRY_SERVER_ID`: `[cluster] server_id`.
    pub server_id: Option<String>,
}

impl Config {
    /// The configuration the server runs with: the built-in defaults, then the file
    /// (keys it does not set keep their defaults), then the overrides. Not validated
    /// yet: [`Config::validate`] is the one check.
    pub fn load(overrides: Overrides) -> Result<Self, ConfigError> {
        let Overrides { config_file, data_dir, admin_socket, log_format, secrets_key, store, server_id } = overrides;
        let mut config = match &config_file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.data_dir = data_dir.unwrap_or(config.data_dir);
        config.admin_socket = admin_socket.unwrap_or(config.admin_socket);
        config.log_format = log_format.unwrap_or(config.log_format);
        config.secrets_key = secrets_key.or(config.secrets_key);
        config.store = store.or(config.store);
        config.cluster.server_id = server_id.or(config.cluster.server_id);
        Ok(config)
    }

    /// Reads a TOML config file; keys not in the file keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: shown, source })
    }

    /// Where the store is: `store`, else the SQLite file in the data directory.
    pub fn store_location(&self) -> Result<ferry_store::StoreLocation, ConfigError> {
        match &self.store {
            Some(s) => ferry_store::StoreLocation::parse(s).map_err(|e| ConfigError::Invalid(format!("store: {e}"))),
            None => Ok(ferry_store::StoreLocation::Sqlite(self.data_dir.join("ferry.db"))),
        }
    }

    /// This server's id: `[cluster] server_id`, else the host name (else `ferry`).
    /// [`Config::validate`] checks its syntax.
    pub fn server_id(&self) -> String {
        match &self.cluster.server_id {
            Some(id) => id.clone(),
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "ferry".into()),
        }
    }

    pub fn secrets_key_path(&self) -> PathBuf {
        self.secrets_key.clone().unwrap_or_else(|| self.data_dir.join("secrets.key"))
    }

    pub fn wireguard_key_path(&self) -> PathBuf {
        self.data_dir.join("wireguard.key")
    }
}

/// A listener's configured certificate and key, when both are given; none: a
/// self-signed pair is made. ([`Config::validate`] refuses one without the other.)
pub fn tls_files<'a>(cert: &'a Option<PathBuf>, key: &'a Option<PathBuf>) -> Option<(&'a Path, &'a Path)> {
    cert.as_deref().zip(key.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example claims to show the defaults: it is exactly them (so it starts on any
    /// host: no user that may not exist, no file that must be made first).
    #[test]
    fn the_documented_example_parses_and_unknown_keys_fail() {
        let example = include_str!("../../../docs/ferry.example.toml");
        let c: Config = toml::from_str(example).unwrap();
        assert_eq!(c, Config::default());
        assert!(toml::from_str::<Config>("data_dri = \"/x\"").is_err());
        assert!(toml::from_str::<Config>("[wireguard]\nnetwork = \"100.64.0.1/16\"").is_err(), "host bits set");
    }
}
