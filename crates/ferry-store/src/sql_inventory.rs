//! Profiles and nodes added in one transaction ([`InventoryStore`]): what `ferry import`
//! writes, through the same code as `profile add` and `node add`.

use crate::audit_rows::audit;
use crate::sql::SqlStore;
use crate::sql_profiles::insert_profiles;
use crate::{Actor, InventoryStore, StoreError};
use async_trait::async_trait;
use ferry_api::admin::{AddInventory, InventoryAdded};

/// The longest `source` recorded in the audit.
const MAX_SOURCE_CHARS: usize = 256;

#[async_trait]
impl InventoryStore for SqlStore {
    async fn add_inventory(&self, req: AddInventory, actor: &Actor) -> Result<InventoryAdded, StoreError> {
        let source: String = req.source.chars().filter(|c| !c.is_control()).take(MAX_SOURCE_CHARS).collect::<String>();
        let mut tx = self.begin_write().await?;
        // Profiles first: the nodes' merge checks need them.
        insert_profiles(&mut tx, &req.profiles, actor).await?;
        self.insert_nodes(&mut tx, &req.nodes, actor).await?;
        let added = InventoryAdded { profiles: req.profiles.len(), nodes: req.nodes.len(), committed: !req.dry_run };
        let detail = format!("source={source} profiles={} nodes={}", added.profiles, added.nodes);
        audit(&mut tx, actor, "inventory.import", "inventory", &detail).await?;
        if req.dry_run {
            // Dropped uncommitted: rolled back, every check done.
            drop(tx);
        } else {
            tx.commit().await?;
        }
        Ok(added)
    }
}
