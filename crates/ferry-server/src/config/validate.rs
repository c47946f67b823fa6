//! [`Config::validate`]: every range and cross-field rule of the configuration, checked
//! once at start-up before anything is opened. What is built from the configuration
//! (rate limits, connection caps, the boot gate, TLS, the cluster) takes the values as
//! they are: a rule lives here and nowhere else. Each refusal names the key and says
//! what to write instead.

use super::{Config, ConfigError};
use std::ops::RangeInclusive;
use std::path::PathBuf;

/// Enrollment rates (requests per second) accepted, besides 0 (no limit).
pub const ENROLL_RATE_RANGE: RangeInclusive<f64> = 1e-6..=1e9;
/// Requests in one enrollment at most: challenge, TPM credential, enrollment. A burst
/// smaller than that could refuse every enrollment's last step for ever.
pub const MIN_ENROLL_BURST: u32 = 3;
/// Largest `boot_gate_max_failures` (the gate keeps that many times for each node
/// being guessed at).
pub const MAX_BOOT_GATE_FAILURES: u32 = 1_000;
/// Longest server id (a DNS label).
const MAX_SERVER_ID: usize = 63;

/// The timeouts and connection caps of a listener section (`[provisioning]`,
/// `[datasource]`: two types with these keys in common); 0 would cut off or refuse
/// every connection.
macro_rules! check_listener {
    ($section:literal, $s:expr) => {
        at_least_one(
            $section,
            &[
                ("header_timeout_secs", $s.header_timeout_secs),
                ("request_timeout_secs", $s.request_timeout_secs),
                ("idle_timeout_secs", $s.idle_timeout_secs),
                ("max_connections_per_source", $s.max_connections_per_source as u64),
                ("max_connections", $s.max_connections as u64),
            ],
        )
    };
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid(message)
}

impl Config {
    /// Checks every rule; the first value refused is named in the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_server_id(&self.server_id())?;
        let c = &self.cluster;
        if c.heartbeat_secs == 0 || c.lost_after_secs <= c.heartbeat_secs.saturating_mul(2) {
            return Err(invalid(
                "[cluster] lost_after_secs must be more than twice heartbeat_secs (and heartbeat_secs at least 1)"
                    .into(),
            ));
        }
        self.store_location()?;
        self.check_provisioning()?;
        check_listener!("[datasource]", self.datasource)?;
        let r = &self.remote_admin;
        if r.listen.is_some() {
            tls_pair("[remote_admin]", &r.tls_cert, &r.tls_key)?;
        }
        ferry_core::net::check_interface_name(&self.wireguard.interface)
            .map_err(|e| invalid(format!("[wireguard] interface: {e}")))?;
        self.check_ssh()
    }

    fn check_ssh(&self) -> Result<(), ConfigError> {
        let range = super::HOST_CERTIFICATE_VALIDITY_RANGE;
        let validity = self.ssh.host_certificate_validity_secs;
        if !range.contains(&validity) {
            return Err(invalid(format!(
                "[ssh] host_certificate_validity_secs = {validity}: must be {} to {} (5 minutes to 90 days)",
                range.start(),
                range.end()
            )));
        }
        for p in &self.ssh.host_patterns {
            ferry_core::ssh::check_host_pattern(p).map_err(|e| invalid(format!("[ssh] host_patterns: {e}")))?;
        }
        Ok(())
    }

    fn check_provisioning(&self) -> Result<(), ConfigError> {
        let p = &self.provisioning;
        let buckets = [
            ("per_source", p.enroll_rate_per_source, p.enroll_burst_per_source),
            ("global", p.enroll_rate_global, p.enroll_burst_global),
        ];
        for (what, rate, burst) in buckets {
            if rate == 0.0 {
                continue;
            }
            if !rate.is_finite() || !ENROLL_RATE_RANGE.contains(&rate) {
                return Err(invalid(format!(
                    "[provisioning] enroll_rate_{what} = {rate} is not a rate: use requests per second (0 < r <= \
                     1e9), or 0 for no limit"
                )));
            }
            if burst < MIN_ENROLL_BURST {
                return Err(invalid(format!(
                    "[provisioning] enroll_burst_{what} = {burst} is too small: one enrollment takes up to \
                     {MIN_ENROLL_BURST} requests"
                )));
            }
        }
        check_listener!("[provisioning]", p)?;
        at_least_one(
            "[provisioning]",
            &[
                ("max_pending_nonces", p.max_pending_nonces as u64),
                ("max_pending_nonces_per_source", p.max_pending_nonces_per_source as u64),
                ("boot_gate_lockout_secs", p.boot_gate_lockout_secs),
            ],
        )?;
        if !(1..=MAX_BOOT_GATE_FAILURES).contains(&p.boot_gate_max_failures) {
            return Err(invalid(format!(
                "[provisioning] boot_gate_max_failures = {} must be 1 to {MAX_BOOT_GATE_FAILURES}",
                p.boot_gate_max_failures
            )));
        }
        if p.tls_listen.is_some() {
            tls_pair("[provisioning]", &p.tls_cert, &p.tls_key)?;
        }
        Ok(())
    }
}

/// The id servers sharing a store know this one by: 1 to 63 of `A-Z a-z 0-9 - . _`.
fn check_server_id(id: &str) -> Result<(), ConfigError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_SERVER_ID
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !valid {
        return Err(invalid(format!(
            "server id {id:?}: use 1 to {MAX_SERVER_ID} letters, digits, '-', '.' or '_' (set [cluster] server_id)"
        )));
    }
    Ok(())
}

/// Timeouts (seconds) and counts of which 0 would refuse or cut off everything.
fn at_least_one(section: &str, values: &[(&str, u64)]) -> Result<(), ConfigError> {
    match values.iter().find(|(_, v)| *v == 0) {
        Some((key, _)) => Err(invalid(format!("{section} {key} must be at least 1"))),
        None => Ok(()),
    }
}

/// A listener's certificate and key come together, or neither (self-signed).
fn tls_pair(section: &str, cert: &Option<PathBuf>, key: &Option<PathBuf>) -> Result<(), ConfigError> {
    if cert.is_some() != key.is_some() {
        return Err(invalid(format!(
            "{section} needs both tls_cert and tls_key, or neither (a self-signed pair is made)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, Overrides};

    fn refused(c: &Config) -> String {
        c.validate().expect_err("refused").to_string()
    }

    #[test]
    fn the_defaults_and_the_documented_example_validate() {
        Config::default().validate().expect("the defaults are valid");
        let example: Config = toml::from_str(include_str!("../../../../docs/ferry.example.toml")).unwrap();
        example.validate().expect("the example is valid");
    }

    /// Each rule, broken alone, is refused with its key named.
    #[test]
    fn each_rule_is_refused_with_the_key_named() {
        type Breaks = fn(&mut Config);
        let cases: &[(Breaks, &str)] = &[
            (|c| c.provisioning.enroll_burst_per_source = 2, "enroll_burst_per_source = 2"),
            (|c| c.provisioning.enroll_rate_per_source = -1.0, "enroll_rate_per_source"),
            (|c| c.provisioning.enroll_rate_global = f64::NAN, "enroll_rate_global"),
            (|c| c.provisioning.enroll_rate_global = 1e10, "enroll_rate_global"),
            (|c| c.provisioning.enroll_burst_global = 0, "enroll_burst_global = 0"),
            (|c| c.provisioning.header_timeout_secs = 0, "[provisioning] header_timeout_secs"),
            (|c| c.provisioning.request_timeout_secs = 0, "[provisioning] request_timeout_secs"),
            (|c| c.provisioning.idle_timeout_secs = 0, "[provisioning] idle_timeout_secs"),
            (|c| c.provisioning.max_connections_per_source = 0, "[provisioning] max_connections_per_source"),
            (|c| c.provisioning.max_connections = 0, "[provisioning] max_connections "),
            (|c| c.provisioning.max_pending_nonces = 0, "[provisioning] max_pending_nonces "),
            (|c| c.provisioning.max_pending_nonces_per_source = 0, "max_pending_nonces_per_source"),
            (|c| c.provisioning.boot_gate_max_failures = 0, "boot_gate_max_failures"),
            (|c| c.provisioning.boot_gate_max_failures = 5_000, "boot_gate_max_failures"),
            (|c| c.provisioning.boot_gate_lockout_secs = 0, "boot_gate_lockout_secs"),
            (|c| c.datasource.header_timeout_secs = 0, "[datasource] header_timeout_secs"),
            (|c| c.datasource.request_timeout_secs = 0, "[datasource] request_timeout_secs"),
            (|c| c.datasource.idle_timeout_secs = 0, "[datasource] idle_timeout_secs"),
            (|c| c.datasource.max_connections_per_source = 0, "[datasource] max_connections_per_source"),
            (|c| c.datasource.max_connections = 0, "[datasource] max_connections"),
            (|c| c.cluster.heartbeat_secs = 0, "[cluster] lost_after_secs"),
            (|c| c.cluster.lost_after_secs = 2 * c.cluster.heartbeat_secs, "[cluster] lost_after_secs"),
            (|c| c.cluster.heartbeat_secs = u64::MAX, "[cluster] lost_after_secs"),
            (|c| c.store = Some("mysql://db/ferry".into()), "store: unsupported database URL scheme"),
            (|c| c.store = Some(" ".into()), "store:"),
            (
                |c| {
                    c.provisioning.tls_listen = Some("127.0.0.1:8443".parse().unwrap());
                    c.provisioning.tls_cert = Some("/etc/ferry/tls.crt".into());
                },
                "[provisioning] needs both tls_cert and tls_key",
            ),
            (
                |c| {
                    c.remote_admin.listen = Some("127.0.0.1:8472".parse().unwrap());
                    c.remote_admin.tls_key = Some("/etc/ferry/admin.key".into());
                },
                "[remote_admin] needs both tls_cert and tls_key",
            ),
            (|c| c.wireguard.interface = "ferry 0".into(), "[wireguard] interface"),
            (|c| c.ssh.host_certificate_validity_secs = 60, "[ssh] host_certificate_validity_secs = 60"),
            (|c| c.ssh.host_certificate_validity_secs = 91 * 86_400, "[ssh] host_certificate_validity_secs"),
            (|c| c.ssh.host_patterns = vec!["a b".into()], "[ssh] host_patterns"),
        ];
        for (breaks, named) in cases {
            let mut c = Config {
                cluster: ClusterConfig { server_id: Some("a".into()), ..Default::default() },
                ..Config::default()
            };
            breaks(&mut c);
            let e = refused(&c);
            assert!(e.contains(named), "{named:?} not named in: {e}");
        }
    }

    /// Moved from listen.rs (`ConnLimits::from_config` checked them).
    #[test]
    fn zero_limits_are_refused_with_the_key_named() {
        let mut c = Config::default();
        c.cluster.server_id = Some("a".into());
        c.datasource.max_connections_per_source = 0;
        let e = refused(&c);
        assert!(e.contains("[datasource] max_connections_per_source"), "{e}");
        c.datasource.max_connections_per_source = 16;
        c.provisioning.header_timeout_secs = 0;
        refused(&c);
        c.provisioning = crate::config::ProvisioningConfig {
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections_per_source: 64,
            max_connections: 16_384,
            ..Default::default()
        };
        c.validate().unwrap();
    }

    /// Moved from config.rs (`server_id()` checked them).
    #[test]
    fn server_ids_and_store_urls() {
        let mut c = Config {
            cluster: ClusterConfig { server_id: Some("ferry-a.1".into()), ..Default::default() },
            ..Config::default()
        };
        assert_eq!(c.server_id(), "ferry-a.1");
        c.validate().unwrap();
        for bad in ["", "has space", "x/y", &"a".repeat(64)] {
            c.cluster.server_id = Some(bad.into());
            let e = refused(&c);
            assert!(e.contains("[cluster] server_id"), "{bad:?}: {e}");
        }
        c.cluster = ClusterConfig { server_id: Some("a".into()), heartbeat_secs: 5, lost_after_secs: 10 };
        assert!(c.validate().is_err(), "lost_after must exceed two heartbeats");
        c.cluster.lost_after_secs = 11;
        c.store = Some("mysql://db/ferry".into());
        assert!(c.validate().is_err(), "an unknown scheme is not a file name");
        c.store = None;
        c.validate().unwrap();
        assert_eq!(c.store_location().unwrap(), ferry_store::StoreLocation::Sqlite(c.data_dir.join("ferry.db")));
    }

    /// Moved from limits.rs and gate.rs (`EnrollLimits::new`, `GateGuard::new` refused
    /// them).
    #[test]
    fn zero_disables_a_rate_and_gate_bounds_hold() {
        let mut c = Config::default();
        c.cluster.server_id = Some("a".into());
        c.provisioning.enroll_rate_per_source = 0.0;
        c.provisioning.enroll_burst_per_source = 0;
        c.provisioning.enroll_rate_global = 0.0;
        c.provisioning.enroll_burst_global = 0;
        c.provisioning.max_concurrent_enrollments = 0;
        c.validate().expect("0 turns a limit off; its burst is not looked at");
        for (failures, lockout, ok) in
            [(3, 60, true), (1_000, 1, true), (0, 60, false), (3, 0, false), (5_000, 60, false)]
        {
            c.provisioning.boot_gate_max_failures = failures;
            c.provisioning.boot_gate_lockout_secs = lockout;
            assert_eq!(c.validate().is_ok(), ok, "{failures} failures, {lockout} s");
        }
    }

    /// TLS files only matter for a listener that is on: without one, nothing is refused
    /// (as before this check moved here).
    #[test]
    fn tls_files_are_checked_only_for_a_listener_that_is_on() {
        let mut c = Config::default();
        c.cluster.server_id = Some("a".into());
        c.provisioning.tls_cert = Some("/x.crt".into());
        c.remote_admin.tls_key = Some("/x.key".into());
        c.validate().expect("no TLS listener");
        c.provisioning.tls_key = Some("/x.key".into());
        c.provisioning.tls_listen = Some("127.0.0.1:8443".parse().unwrap());
        c.validate().expect("both given");
    }

    /// `Server::build` checks first: a refused configuration creates nothing (no data
    /// directory, no sealing key, no store) and opens nothing.
    #[tokio::test]
    async fn the_server_refuses_a_bad_configuration_before_it_creates_anything() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        for broken in [
            ClusterConfig { server_id: Some("two words".into()), ..Default::default() },
            ClusterConfig { server_id: Some("a".into()), heartbeat_secs: 5, lost_after_secs: 10 },
        ] {
            let c = Config {
                data_dir: data_dir.clone(),
                admin_socket: dir.path().join("admin.sock"),
                cluster: broken,
                // Invalid too, so that no WireGuard interface could ever be made here.
                wireguard: crate::config::WireGuardConfig { interface: "no such if".into(), ..Default::default() },
                ..Config::default()
            };
            let e = crate::Server::build(c).await.err().expect("refused").to_string();
            assert!(e.contains("[cluster]"), "{e}");
            assert!(!data_dir.exists(), "the data directory was created before the check: {e}");
        }
    }

    /// Defaults, then the file, then what flags and `FERRY_*` variables set.
    #[test]
    fn the_file_overrides_defaults_and_flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.toml");
        std::fs::write(
            &file,
            "data_dir = \"/file/data\"\nstore = \"/file/ferry.db\"\nlog_format = \"json\"\n\
             [cluster]\nserver_id = \"from-file\"\n",
        )
        .unwrap();
        let from_file = Config::load(Overrides { config_file: Some(file.clone()), ..Default::default() }).unwrap();
        assert_eq!(from_file.data_dir, PathBuf::from("/file/data"));
        assert_eq!(from_file.admin_socket, PathBuf::from(crate::config::DEFAULT_ADMIN_SOCKET), "a default");
        assert_eq!(from_file.log_format, crate::LogFormat::Json);
        let flags = Overrides {
            config_file: Some(file),
            data_dir: Some("/flag/data".into()),
            admin_socket: Some("/flag/admin.sock".into()),
            log_format: Some(crate::LogFormat::Text),
            secrets_key: Some("/flag/secrets.key".into()),
            store: None,
            server_id: Some("from-flag".into()),
        };
        let c = Config::load(flags).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/flag/data"));
        assert_eq!(c.admin_socket, PathBuf::from("/flag/admin.sock"));
        assert_eq!(c.log_format, crate::LogFormat::Text);
        assert_eq!(c.secrets_key, Some(PathBuf::from("/flag/secrets.key")));
        assert_eq!(c.store.as_deref(), Some("/file/ferry.db"), "not overridden: the file's");
        assert_eq!(c.server_id(), "from-flag");
        assert_eq!(Config::load(Overrides::default()).unwrap(), Config::default());
        let missing = Overrides { config_file: Some(dir.path().join("none.toml")), ..Default::default() };
        assert!(Config::load(missing).unwrap_err().to_string().contains("none.toml"));
    }
}
