//! ferry's server: configuration, start-up and the HTTP APIs, one module per audience.
//! Today: the admin API on a unix socket. Boot, enrollment and the tunnel datasource
//! join as their own routers.

pub mod admin;
pub mod config;
pub mod error;

pub use config::{Config, LogFormat};

use anyhow::Context;
use ferry_store::{Sealer, SqliteStore, Store};
use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use tokio::net::UnixListener;

/// A server that has opened its store and bound its sockets, ready to run.
pub struct Server {
    admin_listener: UnixListener,
    admin: admin::AdminState,
    config: Config,
}

impl Server {
    /// Opens the data directory and store, and binds the admin socket.
    pub async fn build(config: Config) -> anyhow::Result<Server> {
        // Everything ferry writes (database, keys) is for its own user only.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        create_private_dir(&config.data_dir)?;
        let sealer = Sealer::load_or_create(&config.secrets_key_path())?;
        let store = SqliteStore::open(&config.database_path(), sealer)
            .await
            .with_context(|| format!("cannot open the database {}", config.database_path().display()))?;
        let admin_listener = bind_admin_socket(&config.admin_socket)?;
        let allowed_uids = Arc::new(allowed_uids(&config.admin_users)?);
        let store: Arc<dyn Store> = Arc::new(store);
        Ok(Server { admin_listener, admin: admin::AdminState { store, allowed_uids }, config })
    }

    /// Serves until SIGINT or SIGTERM, then removes the admin socket.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tracing::info!(
            admin_socket = %self.config.admin_socket.display(),
            data_dir = %self.config.data_dir.display(),
            "ferry server ready"
        );
        let app = admin::router(self.admin)
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                std::time::Duration::from_secs(60),
            ))
            .into_make_service_with_connect_info::<admin::PeerCred>();
        let result = axum::serve(self.admin_listener, app).with_graceful_shutdown(shutdown_signal()).await;
        let _ = std::fs::remove_file(&self.config.admin_socket);
        tracing::info!("ferry server stopped");
        result.context("admin API failed")
    }
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
