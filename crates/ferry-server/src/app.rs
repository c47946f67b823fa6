//! The handlers' side of the server: the state of each audience, built in one place
//! from the configuration and what `Server::build` opened, and the routers (with their
//! layers) that the listeners serve. The in-process test server (`testing`) builds the
//! very same, over a temporary store and a fake device.
//!
//! Each state holds what its handlers use — the store, the metrics — and the
//! `TunnelManager` only for tunnel operations (open, close, phone-home, who owns an
//! address); no handler reaches the store or the metrics through it.

use crate::admin::{self, AdminState};
use crate::boot::{self, BootState};
use crate::datasource::{self, DatasourceState};
use crate::enroll::{self, ProvisioningState};
use crate::limits::EnrollLimits;
use crate::metrics::Metrics;
use crate::nonces::NonceStore;
use crate::ssh_issue::{self, SshIssueState};
use crate::tpm::TpmPolicy;
use crate::tunnels::TunnelManager;
use crate::Config;
use axum::Router;
use ferry_store::Store;
use ferry_wg::PrivateKey;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// What the handlers are built on: opened or loaded by `Server::build`.
pub struct Parts {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub tunnels: Arc<TunnelManager>,
    /// The server's static WireGuard key (the device's; never logged).
    pub server_key: PrivateKey,
    pub tpm: Arc<TpmPolicy>,
    /// Who may use the admin socket (uids).
    pub allowed_uids: Arc<HashSet<u32>>,
    /// `sha256:HEX` of the provisioning TLS certificate, when that listener is on.
    pub provisioning_tls_pin: Option<String>,
    /// The WireGuard backend the device runs on (for `ferry doctor`'s set-up view).
    pub backend: ferry_wg::BackendKind,
}

/// The state of each audience.
pub struct Handlers {
    pub admin: AdminState,
    pub provisioning: ProvisioningState,
    pub boot: BootState,
    pub datasource: DatasourceState,
    /// The tunnel-only SSH certificate endpoints (served on the datasource listener).
    pub ssh: SshIssueState,
}

/// One router per listener, each with its own limits and request timeout.
pub struct Routers {
    /// The admin API on the unix socket (peer credentials).
    pub admin: Router,
    /// The admin API on the remote listener (TLS, bearer tokens and roles).
    pub remote_admin: Router,
    /// Enrollment, boot scripts and artifacts.
    pub provisioning: Router,
    /// The tunnel-only datasource and phone-home.
    pub datasource: Router,
}

/// The admin listeners' whole-request timeout.
const ADMIN_REQUEST_TIMEOUT_SECS: u64 = 30;

impl Handlers {
    pub fn new(parts: Parts) -> Handlers {
        let Parts { config, store, metrics, tunnels, server_key, tpm, allowed_uids, provisioning_tls_pin, backend } =
            parts;
        let server_public_key = server_key.public_key();
        let p = &config.provisioning;
        let limits = Arc::new(EnrollLimits::new(p));
        let nonces = Arc::new(NonceStore::new(
            Duration::from_secs(p.nonce_ttl_secs),
            p.max_pending_nonces,
            p.max_pending_nonces_per_source,
        ));
        Handlers {
            admin: AdminState {
                store: store.clone(),
                metrics: metrics.clone(),
                allowed_uids,
                tunnels: tunnels.clone(),
                server_public_key,
                data_dir: config.data_dir.clone(),
                public_url: p.public_url.clone(),
                tpm: tpm.clone(),
                provisioning_tls_pin,
                lost_after_secs: config.cluster.lost_after_secs,
                setup: Arc::new(crate::setup::describe(&config, backend)),
            },
            provisioning: ProvisioningState {
                store: store.clone(),
                tunnels: tunnels.clone(),
                nonces,
                config: config.clone(),
                server_public_key,
                server_private_key: Arc::new(server_key),
                tpm,
                limits: limits.clone(),
            },
            boot: BootState::new(
                store.clone(),
                metrics.clone(),
                tunnels.network(),
                config.clone(),
                server_public_key.to_base64(),
                limits,
            ),
            ssh: SshIssueState {
                tunnels: tunnels.clone(),
                store: store.clone(),
                validity_secs: config.ssh.host_certificate_validity_secs,
                node_patterns: match config.ssh.host_patterns.is_empty() {
                    true => vec!["*".to_owned()],
                    false => config.ssh.host_patterns.clone(),
                },
            },
            datasource: DatasourceState { store, metrics, tunnels, port: config.datasource.port },
        }
    }

    /// The routers the listeners serve.
    pub fn routers(self, config: &Config) -> Routers {
        let timeout = |secs: u64| {
            tower_http::timeout::TimeoutLayer::with_status_code(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(secs),
            )
        };
        let metrics = self.admin.metrics.clone();
        Routers {
            remote_admin: admin::remote_router(self.admin.clone()).layer(timeout(ADMIN_REQUEST_TIMEOUT_SECS)),
            admin: admin::router(self.admin).layer(timeout(ADMIN_REQUEST_TIMEOUT_SECS)),
            // The provisioning network is anyone's: its own request timeout.
            provisioning: enroll::router(self.provisioning)
                .merge(boot::router(self.boot))
                .layer(timeout(config.provisioning.request_timeout_secs))
                .layer(axum::middleware::from_fn_with_state(metrics, Metrics::count_enrollments)),
            datasource: datasource::router(self.datasource.clone())
                .merge(crate::image_roots::router(self.datasource))
                .merge(ssh_issue::router(self.ssh))
                .layer(timeout(config.datasource.request_timeout_secs)),
        }
    }
}
