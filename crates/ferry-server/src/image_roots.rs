//! Image root archives on the server: the tunnel datasource's `GET /image-key` (how a
//! node gets the key and digest of its image's root, inside its own tunnel only), and
//! the admin API's `GET /v1/images/{name}/verify` (the stored key opens the stored
//! root). Registration checks live with the other image routes in `admin`.
//!
//! The node's image is the one its merged settings name, from the snapshot the tunnel
//! was admitted on; a request names nothing, so no node can ask for another image's
//! key. Each delivery is audited (`image.key-delivered`, folded like document
//! deliveries); the key is never logged.

use crate::admin_state::AdminState;
use crate::datasource::DatasourceState;
use crate::error::{ApiJson, HttpError};
use crate::listen::TcpConn;
use crate::tunnel_caller::tunnel_caller;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use ferry_api::admin::SecretState;
use ferry_api::image::{ImageRecord, ImageRootKey, ImageVerified};
use ferry_api::{ErrorKind, Secret};
use ferry_image::seal::{key_opens, ImageKey};
use ferry_store::Actor;

/// Where the provisioning listener serves an image's root archive.
pub fn root_path(image: &str) -> String {
    format!("/boot/images/{image}/root")
}

fn no_root(why: String) -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, why)
}

/// The datasource listener's image-key route (tunnel-only, like the documents).
pub fn router(state: DatasourceState) -> axum::Router {
    axum::Router::new().route("/image-key", axum::routing::get(image_key)).with_state(state)
}

/// `GET /image-key` through the caller's own tunnel.
pub async fn image_key(
    State(s): State<DatasourceState>,
    ConnectInfo(conn): ConnectInfo<TcpConn>,
) -> Result<Response, HttpError> {
    let active = tunnel_caller(&s.tunnels, conn.remote)?;
    let tunnel = &active.record;
    let node = active.merged(s.store.as_ref()).await?;
    let Some(name) = node.settings.image.clone() else {
        return Err(no_root(format!("node {} has no image", tunnel.node)));
    };
    let store = &s.store;
    let image = store.get_image(&name).await?.ok_or_else(|| no_root(format!("image {name} is not imported")))?;
    let Some(root) = image.root.clone() else {
        return Err(no_root(format!(
            "image {name} has no root archive: import it with --rootfs (an image imported before sealed images \
             carries its root as a second initrd)"
        )));
    };
    let key = match root.sealed {
        true => {
            let Some(key) = store.image_root_key(&name).await? else {
                tracing::error!(image = %name, "a sealed image root has no key in the store");
                return Err(HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorKind::Internal,
                    "image key missing",
                ));
            };
            Some(Secret::new(base64::engine::general_purpose::STANDARD.encode(&key[..])))
        }
        false => None,
    };
    let asset_gate = !root.sealed && node.settings.boot_asset_gate == Some(true) && node.asset_tag == SecretState::Set;
    let actor = Actor(format!("node:{}", tunnel.node));
    let detail = format!("image={name} root={} sealed={}", root.sha256, root.sealed);
    store.record_repeatable_event(&actor, "image.key-delivered", &format!("node/{}", tunnel.node), &detail).await?;
    let answer = ImageRootKey { path: root_path(&name), image: name, root, key, asset_gate };
    let body = serde_json::to_vec(&answer).map_err(|e| {
        tracing::error!(error = %e, "cannot encode the image key answer");
        HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Internal, "internal error")
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response())
}

/// `GET /v1/images/{name}/verify`: for a sealed root, whether the key the store holds
/// opens the archive in the object store (header and first chunk authenticate).
pub async fn verify(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<ApiJson<ImageVerified>, HttpError> {
    let image: ImageRecord = s.store.get_image(&name).await?.ok_or_else(|| {
        HttpError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, format!("image {name:?} not found"))
    })?;
    let Some(root) = image.root.filter(|r| r.sealed) else {
        return Ok(ApiJson(ImageVerified { key_opens_root: None }));
    };
    let key = s.store.image_root_key(&name).await?;
    let path = crate::boot::object_path(&s.data_dir, &root.sha256);
    let opens = tokio::task::spawn_blocking(move || {
        let key = key.and_then(|k| ImageKey::from_slice(&k).ok())?;
        let file = std::fs::File::open(&path).ok()?;
        Some(key_opens(std::io::BufReader::new(file), &key).is_ok())
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false);
    Ok(ApiJson(ImageVerified { key_opens_root: Some(opens) }))
}
