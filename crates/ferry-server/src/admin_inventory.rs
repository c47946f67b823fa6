//! `POST /v1/inventory`: profiles and nodes in one transaction (`ferry import`).

use crate::admin_state::AdminState;
use crate::error::{ApiJson, HttpError};
use axum::extract::State;
use axum::Extension;
use ferry_api::admin::{AddInventory, InventoryAdded};
use ferry_store::Actor;

pub(crate) async fn add_inventory(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<AddInventory>,
) -> Result<ApiJson<InventoryAdded>, HttpError> {
    let added = s.store.add_inventory(req, &actor).await?;
    if added.committed {
        tracing::info!(profiles = added.profiles, nodes = added.nodes, actor = %actor.0, "inventory imported");
    }
    Ok(ApiJson(added))
}
