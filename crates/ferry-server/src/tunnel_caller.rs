//! Who calls a tunnel-only route (the datasource's documents and phone-home, the image
//! key, the SSH certificate endpoints): the node whose active tunnel owns the packet's
//! source address, which WireGuard's cryptokey routing binds to that node's key.

use crate::error::HttpError;
use crate::tunnels::{ActiveTunnel, TunnelManager};
use axum::http::StatusCode;
use ferry_api::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;

/// The active tunnel owning `peer`'s address, or 403.
pub(crate) fn tunnel_caller(tunnels: &TunnelManager, peer: SocketAddr) -> Result<Arc<ActiveTunnel>, HttpError> {
    tunnels.active(peer.ip().to_canonical()).ok_or_else(|| {
        tracing::warn!(source = %peer, "tunnel-only request from an address without an active tunnel");
        not_a_tunnel()
    })
}

/// The refusal of a caller that is not (or no longer) an active tunnel.
pub(crate) fn not_a_tunnel() -> HttpError {
    HttpError::new(StatusCode::FORBIDDEN, ErrorKind::Forbidden, "forbidden: not an active ferry tunnel")
}
