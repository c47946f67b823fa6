//! What the admin API's handlers hold (`admin`, and the admin routes of `admin_inventory`,
//! `ssh_admin` and `image_roots`): a module of its own, so those handlers depend on it
//! and not on the router that serves them.

use ferry_store::Store;
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub allowed_uids: Arc<HashSet<u32>>,
    /// Tunnel listing, revocation and node deletion (which closes tunnels).
    pub tunnels: Arc<crate::tunnels::TunnelManager>,
    pub server_public_key: ferry_wg::PublicKey,
    pub data_dir: std::path::PathBuf,
    pub public_url: Option<String>,
    pub tpm: Arc<crate::tpm::TpmPolicy>,
    /// `sha256:HEX` of the provisioning TLS certificate, when that listener is on.
    pub provisioning_tls_pin: Option<String>,
    /// `[cluster] lost_after_secs`: a server silent for longer is shown as lost.
    pub lost_after_secs: u64,
    /// How this server runs (`GET /v1/server`, for `ferry doctor`).
    pub setup: Arc<ferry_api::admin::ServerSetup>,
}
