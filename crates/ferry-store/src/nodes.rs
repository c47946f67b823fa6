//! The inventory: nodes and the profiles they inherit from ([`NodeStore`],
//! [`ProfileStore`], and both at once: [`InventoryStore`]).

use crate::{Actor, StoreError, TpmRecord, TunnelRecord};
use async_trait::async_trait;
use ferry_api::admin::{
    AddInventory, AddNodes, AddProfiles, InventoryAdded, MergedNodeView, NodePatch, NodeView, ProfilePatch, ProfileView,
};
use ferry_api::Secret;
use ferry_core::{MacAddr, NodeName, ProfileName};

#[async_trait]
pub trait NodeStore: Send + Sync {
    async fn add_nodes(&self, req: AddNodes, actor: &Actor) -> Result<usize, StoreError>;
    async fn set_nodes(&self, names: &[NodeName], patch: &NodePatch, actor: &Actor) -> Result<usize, StoreError>;
    /// Deletes nodes (all or none), closing their tunnels in the same transaction
    /// (audited `tunnel.close`, reason `deleted`). Returns the closed tunnels.
    async fn delete_nodes(&self, names: &[NodeName], actor: &Actor) -> Result<Vec<TunnelRecord>, StoreError>;
    async fn list_nodes(&self) -> Result<Vec<NodeView>, StoreError>;
    async fn get_node(&self, name: &NodeName) -> Result<NodeView, StoreError>;
    async fn merged_node(&self, name: &NodeName) -> Result<MergedNodeView, StoreError>;
    /// The node's merged settings and its asset tag in clear, from one snapshot, for
    /// identity checks only (enrollment, boot gating). Never return the tag to an API
    /// caller.
    async fn node_identity(&self, name: &NodeName) -> Result<(MergedNodeView, Option<Secret>), StoreError>;
    /// The node whose interface has this MAC.
    async fn node_by_mac(&self, mac: &MacAddr) -> Result<Option<NodeName>, StoreError>;
    /// What an enrollment decides on, from one snapshot: the node with this MAC, its
    /// [`NodeStore::node_identity`] and its TPM record (`None`: no node has the MAC).
    /// Identity checks only, like `node_identity`.
    async fn enrollment_identity(&self, mac: &MacAddr) -> Result<Option<EnrollmentIdentity>, StoreError>;
}

/// See [`NodeStore::enrollment_identity`]. Holds the asset tag in clear: never shown.
pub struct EnrollmentIdentity {
    pub node: NodeName,
    pub merged: MergedNodeView,
    pub asset_tag: Option<Secret>,
    pub tpm: Option<TpmRecord>,
}

/// Profiles and nodes together (`ferry import`).
#[async_trait]
pub trait InventoryStore: Send + Sync {
    /// Adds every profile, then every node, in one transaction: all or nothing, with the
    /// same checks (and audit entries) as [`ProfileStore::add_profiles`] and
    /// [`NodeStore::add_nodes`], plus one `inventory.import` entry naming the source.
    /// A dry run does the same work and rolls it back.
    async fn add_inventory(&self, req: AddInventory, actor: &Actor) -> Result<InventoryAdded, StoreError>;
}

#[async_trait]
pub trait ProfileStore: Send + Sync {
    async fn add_profiles(&self, req: AddProfiles, actor: &Actor) -> Result<usize, StoreError>;
    async fn set_profiles(
        &self,
        names: &[ProfileName],
        patch: &ProfilePatch,
        actor: &Actor,
    ) -> Result<usize, StoreError>;
    async fn delete_profiles(&self, names: &[ProfileName], actor: &Actor) -> Result<usize, StoreError>;
    async fn list_profiles(&self) -> Result<Vec<ProfileView>, StoreError>;
    async fn get_profile(&self, name: &ProfileName) -> Result<ProfileView, StoreError>;
}
