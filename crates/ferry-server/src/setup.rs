//! What `GET /v1/server` says about how this server runs (`ServerSetup`), for
//! `ferry doctor`: its listeners, WireGuard device, store, certificates.

use crate::remote::TlsFiles;
use crate::Config;
use ferry_api::admin::ServerSetup;
use ferry_wg::BackendKind;

/// The setup, from the checked configuration and the backend the device came up on.
pub fn describe(config: &Config, backend: BackendKind) -> ServerSetup {
    let cert = |files: Option<TlsFiles<'_>>| {
        files.map(|f| match f.configured {
            Some((cert, _)) => cert.display().to_string(),
            None => config.data_dir.join(format!("{}.crt", f.stem)).display().to_string(),
        })
    };
    let store = match config.store_location() {
        Ok(ferry_store::StoreLocation::Postgres(_)) => "postgres",
        _ => "sqlite",
    };
    let wg = &config.wireguard;
    ServerSetup {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        now: ferry_store::now_secs(),
        store: store.to_owned(),
        wireguard_interface: wg.interface.clone(),
        wireguard_backend: match backend {
            BackendKind::Kernel => "kernel",
            BackendKind::Userspace => "userspace",
            BackendKind::Uapi => "uapi",
        }
        .to_owned(),
        wireguard_backend_configured: match wg.backend {
            ferry_wg::BackendChoice::Auto => "auto",
            ferry_wg::BackendChoice::Kernel => "kernel",
            ferry_wg::BackendChoice::Userspace => "userspace",
            ferry_wg::BackendChoice::Uapi => "uapi",
        }
        .to_owned(),
        wireguard_listen_port: wg.listen_port,
        provisioning_listen: config.provisioning.listen.to_string(),
        provisioning_tls_listen: config.provisioning.tls_listen.map(|a| a.to_string()),
        provisioning_tls_cert: cert(TlsFiles::provisioning(config)),
        datasource_listen: std::net::SocketAddr::new(wg.network.server_address(), config.datasource.port).to_string(),
        remote_admin_listen: config.remote_admin.listen.map(|a| a.to_string()),
        remote_admin_tls_cert: cert(TlsFiles::remote_admin(config)),
        lost_after_secs: config.cluster.lost_after_secs,
    }
}
