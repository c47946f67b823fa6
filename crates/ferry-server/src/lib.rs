//! ferry's server: configuration, start-up and the HTTP APIs, one module per audience.
//! - admin API: unix socket, peer credentials (`admin`);
//! - provisioning network: enrollment (`enroll`), boot scripts and artifacts (`boot`),
//!   with rate limits (`limits`);
//! - tunnel-only datasource and phone-home, bound to the server's tunnel address
//!   (`datasource`), its connections closed with their tunnel (`conns`).
//!
//! Each audience's handlers have a state of their own, built with the routers in one
//! place (`app`). Every listener runs `listen::serve` (timeouts, connection caps). All
//! WireGuard device changes go through [`tunnels::TunnelManager`].

pub mod admin;
mod admin_inventory;
mod admin_state;
mod app;
mod artifacts;
pub mod boot;
mod client_addr;
mod cluster;
pub mod config;
mod conns;
pub mod datasource;
pub mod enroll;
pub mod error;
mod gate;
mod image_roots;
pub mod limits;
pub mod listen;
mod metrics;
mod node_locks;
mod nonces;
mod periodic;
mod remote;
pub mod render;
mod retention;
mod setup;
mod ssh_admin;
mod ssh_ca;
mod ssh_issue;
#[cfg(test)]
mod testing;
pub use remote::certificate_file_pin;
mod tpm;
mod tpm_learn;
mod tunnel_caller;
pub mod tunnels;
mod wgkey;

pub use config::{Config, ConfigError, LogFormat, Overrides};

/// The provisioning listener's own header parsers, for the cargo-fuzz targets in `fuzz/`
/// (docs/fuzzing.md) and nothing else: re-exported here so that their modules stay private.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::artifacts::{parse_range, RangeRequest};
    pub use crate::client_addr::client_address;
    pub use crate::ssh_ca::parse_host_keys;
}

use anyhow::Context;
use ferry_store::{Sealer, SqlStore, Store};
use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};
use tunnels::TunnelManager;

/// A server that has opened its store, brought up its device and bound its sockets.
pub struct Server {
    admin_listener: UnixListener,
    /// The remote admin listener, its TLS and certificate pin, when configured.
    remote_admin: Option<(TcpListener, tokio_rustls::TlsAcceptor, String)>,
    /// The provisioning API's TLS listener, its TLS and certificate pin, when configured.
    provisioning_tls: Option<(TcpListener, tokio_rustls::TlsAcceptor, String)>,
    provisioning_listener: TcpListener,
    datasource_listener: TcpListener,
    /// The state of each audience's handlers.
    handlers: app::Handlers,
    store: Arc<dyn Store>,
    metrics: Arc<metrics::Metrics>,
    tunnels: Arc<TunnelManager>,
    server_public_key: ferry_wg::PublicKey,
    config: Arc<Config>,
    limits: ListenerLimits,
}

/// Each listener's timeouts and connection caps, from the configuration.
struct ListenerLimits {
    provisioning: listen::ConnLimits,
    datasource: listen::ConnLimits,
}

impl ListenerLimits {
    fn from_config(c: &Config) -> Self {
        let (p, d) = (&c.provisioning, &c.datasource);
        ListenerLimits {
            provisioning: listen::ConnLimits::new(
                p.header_timeout_secs,
                p.idle_timeout_secs,
                p.max_connections_per_source,
                p.max_connections,
            ),
            datasource: listen::ConnLimits::new(
                d.header_timeout_secs,
                d.idle_timeout_secs,
                d.max_connections_per_source,
                d.max_connections,
            ),
        }
    }
}

impl Server {
    /// Validates the configuration, then opens the data directory and store, and binds
    /// the admin socket.
    pub async fn build(config: Config) -> anyhow::Result<Server> {
        // The one check of the configuration, before anything is created or opened;
        // all that follows trusts its values.
        config.validate()?;
        // Everything ferry writes (database, keys) is for its own user only.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let listener_limits = ListenerLimits::from_config(&config);
        let l = &listener_limits;
        let caps = (l.provisioning.max_total + l.datasource.max_total + 2 * listen::ADMIN_LIMITS.max_total) as u64;
        let open_files = listen::raise_open_files_limit(caps)?;
        tracing::debug!(open_files, "open-files limit");
        create_private_dir(&config.data_dir)?;
        let key_file = config.secrets_key_path();
        let key_was_made = !key_file.exists();
        let sealer = Sealer::load_or_create(&key_file)?;
        let location = config.store_location()?;
        let server_id = config.server_id();
        let store =
            SqlStore::open(&location, sealer).await.with_context(|| format!("cannot open the store {location}"))?;
        let store: Arc<dyn Store> = Arc::new(store);
        cluster::check_sealing_key(&store, &server_id, &key_file, key_was_made).await?;
        ssh_ca::ensure_host_ca(store.as_ref(), &server_id).await.context("cannot set up the SSH host CA")?;
        let allowed_uids = Arc::new(allowed_uids(&config.admin_users)?);
        let tpm = Arc::new(tpm::TpmPolicy::load(&config.tpm)?);
        // First of the sockets: a second server on the same socket stops here, before
        // touching the WireGuard device.
        let admin_listener = bind_admin_socket(&config.admin_socket)?;

        let wg = &config.wireguard;
        let key = wgkey::load_or_create(&config.wireguard_key_path())?;
        let server_public_key = key.public_key();
        // Enrollment keys asset-tag proofs with the X25519 secret shared with this key.
        let server_key = key.clone();
        let server_address = wg.network.server_address();
        let setup = ferry_wg::InterfaceSetup {
            addresses: vec![ferry_wg::IpNet::new(server_address, wg.network.prefix_len())?],
            private_key: Some(key),
            listen_port: Some(wg.listen_port),
            ..Default::default()
        };
        let device = ferry_wg::open_device(&wg.interface, wg.backend, &setup)
            .await
            .with_context(|| format!("cannot bring up WireGuard interface {}", wg.interface))?;
        tracing::info!(interface = %wg.interface, backend = ?device.backend(), public_key = %server_public_key, "WireGuard device up");
        let backend = device.backend();
        cluster::register(&store, &config, &server_id, &server_public_key).await?;
        retention::record(store.as_ref(), config.audit_retention_days).await?;
        let handshake_deadline = match wg.handshake_deadline_secs {
            0 => {
                tracing::warn!(
                    "[wireguard] handshake_deadline_secs = 0: a tunnel whose node never completes a handshake stays \
                     until its TTL"
                );
                None
            }
            secs => Some(std::time::Duration::from_secs(secs)),
        };
        let metrics = Arc::new(metrics::Metrics::default());
        let tunnels = Arc::new(
            TunnelManager::new(store.clone(), device, wg.network, server_id)
                .with_handshake_deadline(handshake_deadline)
                .with_metrics(metrics.clone()),
        );
        // The store is the truth: restore active tunnels, drop orphans and expired ones.
        let report = tunnels.reconcile().await.context("initial reconcile of the WireGuard device failed")?;
        tracing::info!(?report, "device reconciled at start-up");
        enroll::warn_about_weak_identities(store.as_ref()).await?;

        let datasource_addr = std::net::SocketAddr::new(server_address, config.datasource.port);
        let datasource_listener = TcpListener::bind(datasource_addr)
            .await
            .with_context(|| format!("cannot listen on the tunnel address {datasource_addr}"))?;
        let provisioning_listener = TcpListener::bind(config.provisioning.listen)
            .await
            .with_context(|| format!("cannot listen on {} (set [provisioning] listen)", config.provisioning.listen))?;

        let remote_admin = match remote::TlsFiles::remote_admin(&config) {
            Some(files) => Some(remote::bind_tls(&files, &config.data_dir).await?),
            None => None,
        };
        let provisioning_tls = match remote::TlsFiles::provisioning(&config) {
            Some(files) => Some(remote::bind_tls(&files, &config.data_dir).await?),
            None => None,
        };
        let config = Arc::new(config);
        let provisioning_tls_pin = provisioning_tls.as_ref().map(|(_, _, pin)| format!("sha256:{pin}"));
        let handlers = app::Handlers::new(app::Parts {
            config: config.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            tunnels: tunnels.clone(),
            server_key,
            tpm,
            allowed_uids,
            provisioning_tls_pin,
            backend,
        });
        Ok(Server {
            admin_listener,
            remote_admin,
            provisioning_tls,
            provisioning_listener,
            datasource_listener,
            handlers,
            store,
            metrics,
            tunnels,
            server_public_key,
            config,
            limits: listener_limits,
        })
    }

    /// Serves until SIGINT or SIGTERM, then removes the admin socket.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tracing::info!(
            admin_socket = %self.config.admin_socket.display(),
            provisioning = %self.config.provisioning.listen,
            datasource = %self.datasource_listener.local_addr()?,
            data_dir = %self.config.data_dir.display(),
            "ferry server ready"
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let drain = std::time::Duration::from_secs(30);
        let metrics = self.metrics.clone();
        let routers = self.handlers.routers(&self.config);
        // The TLS listeners are optional; each runs in a task of its own.
        let spawn_tls = |listener: listen::Listener<TcpListener>, app| {
            let addr = listener.incoming.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(listen = %addr, "{} listener (TLS)", listener.name);
            (listener.name, tokio::spawn(listen::serve(listener, app, drain, stopped())))
        };
        let mut tls_tasks = Vec::new();
        if let Some((incoming, tls, _)) = self.remote_admin {
            let caps = listen::ConnCaps::new("remote-admin", listen::ADMIN_LIMITS, metrics.clone());
            let listener = listen::Listener { name: "remote-admin", incoming, tls: Some(tls), caps, watcher: None };
            tls_tasks.push(spawn_tls(listener, routers.remote_admin));
        }
        let admin = listen::serve(
            listen::Listener {
                name: "admin",
                incoming: self.admin_listener,
                tls: None,
                caps: listen::ConnCaps::new("admin", listen::ADMIN_LIMITS, metrics.clone()),
                watcher: None,
            },
            routers.admin,
            drain,
            stopped(),
        );
        // The plain and TLS provisioning listeners share their connection caps.
        let provisioning_caps = listen::ConnCaps::new("provisioning", self.limits.provisioning, metrics.clone());
        if let Some((incoming, tls, _)) = self.provisioning_tls {
            let caps = provisioning_caps.clone();
            let listener = listen::Listener { name: "provisioning", incoming, tls: Some(tls), caps, watcher: None };
            tls_tasks.push(spawn_tls(listener, routers.provisioning.clone()));
        }
        let provisioning = listen::serve(
            listen::Listener {
                name: "provisioning",
                incoming: self.provisioning_listener,
                tls: None,
                caps: provisioning_caps,
                watcher: None,
            },
            routers.provisioning,
            drain,
            stopped(),
        );
        // A tunnel's connections end with the tunnel: the tunnel manager watches them.
        let datasource = listen::serve(
            listen::Listener {
                name: "datasource",
                incoming: self.datasource_listener,
                tls: None,
                caps: listen::ConnCaps::new("datasource", self.limits.datasource, metrics.clone()),
                watcher: Some(self.tunnels.clone()),
            },
            routers.datasource,
            drain,
            stopped(),
        );
        let pruner = tokio::spawn(retention::prune_loop(self.store.clone(), stopped()));
        let reconciler = reconcile_loop(self.tunnels.clone(), self.config.clone(), stopped());
        let server_id = self.tunnels.server_id().to_owned();
        let heartbeat = cluster::heartbeat_loop(
            self.store.clone(),
            self.config.clone(),
            server_id,
            self.server_public_key,
            stopped(),
        );
        let watcher = cluster::watch_loop(self.store.clone(), self.tunnels.clone(), stopped());
        let signal = async move {
            shutdown_signal().await;
            tracing::info!("stopping");
            let _ = stop_tx.send(true);
        };
        let (a, p, d, (), (), (), ()) =
            tokio::join!(admin, provisioning, datasource, reconciler, heartbeat, watcher, signal);
        for (what, task) in tls_tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "{what} TLS listener failed"),
                Err(e) => tracing::error!(error = %e, "{what} TLS listener panicked"),
            }
        }
        self.tunnels.shutdown().await;
        let _ = pruner.await;
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "could not write the last audit entries");
        }
        let _ = std::fs::remove_file(&self.config.admin_socket);
        tracing::info!("ferry server stopped");
        a.context("admin API failed")?;
        p.context("provisioning API failed")?;
        d.context("datasource failed")?;
        Ok(())
    }
}

/// Reaps expired tunnels (and those of lost servers) and repairs the device every
/// `reconcile_interval_secs`.
async fn reconcile_loop(
    tunnels: Arc<TunnelManager>,
    config: Arc<Config>,
    stopped: impl std::future::Future<Output = ()>,
) {
    let interval = std::time::Duration::from_secs(config.wireguard.reconcile_interval_secs.max(1));
    periodic::every(interval, stopped, || async {
        if let Err(e) = tunnels.reap_lost_servers(config.cluster.lost_after_secs).await {
            tracing::error!(error = %e, "could not close the tunnels of lost servers");
        }
        if let Err(e) = tunnels.reconcile().await {
            tracing::error!(error = %e, "reconcile failed");
        }
    })
    .await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {} (set --data-dir or FERRY_DATA_DIR)", dir.display()))
}

/// Binds the admin socket with mode 0600, replacing a stale socket file but never a
/// live server's.
fn bind_admin_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another ferry server is already listening on {}; stop it first or use --admin-socket",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    // Bind under a restrictive umask so the socket never exists with a looser mode.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("cannot listen on admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// root, the user the server runs as, and the configured admin users.
fn allowed_uids(admin_users: &[String]) -> anyhow::Result<HashSet<u32>> {
    let mut uids = HashSet::from([0, nix::unistd::geteuid().as_raw()]);
    for u in admin_users {
        let uid = match u.parse::<u32>() {
            Ok(uid) => uid,
            Err(_) => nix::unistd::User::from_name(u)
                .with_context(|| format!("cannot look up admin user {u:?}"))?
                .with_context(|| format!("admin user {u:?} does not exist; fix `admin_users` in the config"))?
                .uid
                .as_raw(),
        };
        uids.insert(uid);
    }
    Ok(uids)
}
