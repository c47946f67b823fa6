//! Nodes in the SQL store ([`NodeStore`]): settings, relations (profiles, unique
//! addresses), sealed asset tags, and the tunnels a deletion closes.

use crate::audit_rows::audit;
use crate::codec::{check_unique, parse_json, parse_name, to_json};
use crate::secrets::asset_tag_aad;
use crate::sql::SqlStore;
use crate::sql_profiles::{describe_patch, load_profiles, profile_map};
use crate::sql_tpm::{read_record, registered_tpm_nodes};
use crate::tunnel_tx::{announce, delete_tunnel};
use crate::write_conn::SqlxConn;
use crate::{format_time, now_secs, Actor, CloseReason, EnrollmentIdentity, NodeStore, StoreError, TunnelRecord};
use async_trait::async_trait;
use ferry_api::admin::{AddNodes, AssetTagChange, MergedNodeView, NewNode, NodePatch, NodeView, SecretState};
use ferry_api::Secret;
use ferry_core::merge::merge_node;
use ferry_core::model::{check_asset_tag, check_node_addresses, LayerKind};
use ferry_core::{patch, MacAddr, Node, NodeName, Profile, ProfileName};
use sqlx::AnyConnection;
use std::collections::{BTreeMap, HashSet};

struct StoredNode {
    node: Node,
    asset_tag: Option<Vec<u8>>,
    revision: i64,
    updated_at: i64,
}

/// Which nodes [`load_nodes`] reads.
enum Nodes<'a> {
    All,
    Named(&'a NodeName),
    /// The node with this MAC address, if any (the enrollment's look-up, in the same
    /// statement as the node).
    WithMac(&'a MacAddr),
}

/// Nodes with their profiles in order: one statement (a join), so a single node's read
/// is one round trip. A node's columns repeat on each of its profiles' rows.
async fn load_nodes(conn: &mut AnyConnection, which: Nodes<'_>) -> Result<Vec<StoredNode>, StoreError> {
    let (filter, key) = match which {
        Nodes::All => ("", None),
        Nodes::Named(name) => (" WHERE n.name = $1", Some(name.to_string())),
        Nodes::WithMac(mac) => (
            " WHERE n.name = (SELECT node FROM node_addresses WHERE kind = 'mac' AND value = $1)",
            Some(mac.to_string()),
        ),
    };
    let sql = format!(
        "SELECT n.name, n.settings, n.asset_tag, n.revision, n.updated_at, p.profile \
         FROM nodes n LEFT JOIN node_profiles p ON p.node = n.name{filter} ORDER BY n.name, p.position"
    );
    let mut q = sqlx::query_as::<_, (String, String, Option<Vec<u8>>, i64, i64, Option<String>)>(&sql);
    if let Some(key) = key {
        q = q.bind(key);
    }
    let mut nodes: Vec<StoredNode> = Vec::new();
    for (n, settings, asset_tag, revision, updated_at, profile) in q.fetch_all(&mut *conn).await? {
        if nodes.last().is_none_or(|last| last.node.name.as_str() != n) {
            let name: NodeName = parse_name("node", &n)?;
            let settings = parse_json(&format!("node {name}"), &settings)?;
            nodes.push(StoredNode { node: Node { name, profiles: vec![], settings }, asset_tag, revision, updated_at });
        }
        if let (Some(profile), Some(last)) = (profile, nodes.last_mut()) {
            last.node.profiles.push(parse_name("profile", &profile)?);
        }
    }
    Ok(nodes)
}

/// A node's own layer (profiles and settings) as stored, and when it last changed.
pub(crate) async fn load_node_layer(conn: &mut AnyConnection, name: &NodeName) -> Result<(Node, i64), StoreError> {
    let stored = load_node(conn, name).await?;
    Ok((stored.node, stored.updated_at))
}

async fn load_node(conn: &mut AnyConnection, name: &NodeName) -> Result<StoredNode, StoreError> {
    load_nodes(conn, Nodes::Named(name))
        .await?
        .pop()
        .ok_or_else(|| StoreError::NotFound { kind: "node", name: name.to_string() })
}

/// A node as listings show it, with the identity policy its merged settings give.
fn node_view(
    s: StoredNode,
    profiles: &BTreeMap<ProfileName, Profile>,
    registered_tpms: &HashSet<String>,
) -> Result<NodeView, StoreError> {
    let merged = merge_node(&s.node, profiles)?;
    let policy = merged.settings.identity_policy(s.asset_tag.is_some(), registered_tpms.contains(s.node.name.as_str()));
    Ok(NodeView {
        name: s.node.name,
        profiles: s.node.profiles,
        settings: s.node.settings,
        asset_tag: if s.asset_tag.is_some() { SecretState::Set } else { SecretState::Unset },
        identity: (&policy).into(),
        revision: s.revision,
        updated_at: format_time(s.updated_at),
    })
}

/// Validates a node against the current profiles and writes it with its relations.
async fn write_node(
    conn: &mut AnyConnection,
    node: &Node,
    asset_tag: Option<&[u8]>,
    profiles: &BTreeMap<ProfileName, Profile>,
    existing_revision: Option<i64>,
) -> Result<(), StoreError> {
    node.settings.validate(LayerKind::Node)?;
    check_node_addresses(node)?;
    merge_node(node, profiles)?;
    let now = now_secs();
    let settings = to_json(&node.settings);
    match existing_revision {
        None => {
            let taken = sqlx::query("SELECT 1 FROM nodes WHERE name = $1")
                .bind(node.name.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            if taken.is_some() {
                return Err(StoreError::Conflict(format!(
                    "node {} already exists; use `ferry node set` to change it",
                    node.name
                )));
            }
            sqlx::query(
                "INSERT INTO nodes (name, settings, asset_tag, revision, updated_at) VALUES ($1, $2, $3, 1, $4)",
            )
            .bind(node.name.as_str())
            .bind(&settings)
            .bind(asset_tag)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        Some(rev) => {
            sqlx::query(
                "UPDATE nodes SET settings = $1, asset_tag = $2, revision = $3, updated_at = $4 WHERE name = $5",
            )
            .bind(&settings)
            .bind(asset_tag)
            .bind(rev + 1)
            .bind(now)
            .bind(node.name.as_str())
            .execute(&mut *conn)
            .await?;
            sqlx::query("DELETE FROM node_profiles WHERE node = $1")
                .bind(node.name.as_str())
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM node_addresses WHERE node = $1")
                .bind(node.name.as_str())
                .execute(&mut *conn)
                .await?;
        }
    }
    for (pos, p) in node.profiles.iter().enumerate() {
        sqlx::query("INSERT INTO node_profiles (node, position, profile) VALUES ($1, $2, $3)")
            .bind(node.name.as_str())
            .bind(pos as i64)
            .bind(p.as_str())
            .execute(&mut *conn)
            .await?;
    }
    for (kind, value) in node.settings.unique_addresses() {
        let owner: Option<(String,)> = sqlx::query_as("SELECT node FROM node_addresses WHERE kind = $1 AND value = $2")
            .bind(kind.as_str())
            .bind(&value)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some((owner,)) = owner {
            let what = if kind == ferry_core::model::AddressKind::Mac { "MAC address" } else { "IP address" };
            return Err(StoreError::Conflict(format!(
                "{what} {value} of node {} is already used by node {owner}; each node needs its own",
                node.name
            )));
        }
        sqlx::query("INSERT INTO node_addresses (kind, value, node) VALUES ($1, $2, $3)")
            .bind(kind.as_str())
            .bind(&value)
            .bind(node.name.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A stored node merged with its profiles, and its sealed tag.
fn merged_view(
    stored: StoredNode,
    profiles: &BTreeMap<ProfileName, Profile>,
) -> Result<(MergedNodeView, Option<Vec<u8>>), StoreError> {
    let merged = merge_node(&stored.node, profiles)?;
    let view = MergedNodeView {
        name: stored.node.name,
        profiles: merged.profiles,
        settings: merged.settings,
        fields: merged.fields,
        asset_tag: if stored.asset_tag.is_some() { SecretState::Set } else { SecretState::Unset },
    };
    Ok((view, stored.asset_tag))
}

async fn node_with_mac(conn: &mut AnyConnection, mac: &MacAddr) -> Result<Option<NodeName>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT node FROM node_addresses WHERE kind = 'mac' AND value = $1")
        .bind(mac.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|(n,)| parse_name("node", &n)).transpose()
}

impl SqlStore {
    /// A node merged with its profiles, and its sealed tag, from one read snapshot.
    async fn merged_and_sealed(&self, name: &NodeName) -> Result<(MergedNodeView, Option<Vec<u8>>), StoreError> {
        let mut tx = self.begin_read().await?;
        let stored = load_node(&mut tx, name).await?;
        let profiles = profile_map(&load_profiles(&mut tx).await?);
        tx.commit().await?;
        merged_view(stored, &profiles)
    }

    /// A node's sealed asset tag, opened.
    fn open_tag(&self, name: &NodeName, sealed: Option<Vec<u8>>) -> Result<Option<Secret>, StoreError> {
        let Some(sealed) = sealed else { return Ok(None) };
        let clear = self.sealer.open(&sealed, asset_tag_aad(name).as_bytes())?;
        let text = String::from_utf8(clear.to_vec())
            .map_err(|_| StoreError::Corrupt(format!("node {name} asset tag"), "not UTF-8".into()))?;
        Ok(Some(Secret::new(text)))
    }

    /// Adds nodes within the caller's write transaction (their profiles must exist in it).
    pub(crate) async fn insert_nodes(
        &self,
        conn: &mut AnyConnection,
        nodes: &[NewNode],
        actor: &Actor,
    ) -> Result<(), StoreError> {
        check_unique(nodes.iter().map(|n| n.name.clone()))?;
        let profiles = profile_map(&load_profiles(&mut *conn).await?);
        for new in nodes {
            let node = Node { name: new.name.clone(), profiles: new.profiles.clone(), settings: new.settings.clone() };
            let sealed = new.asset_tag.as_ref().map(|t| self.seal_tag(&node.name, t)).transpose()?;
            write_node(&mut *conn, &node, sealed.as_deref(), &profiles, None).await?;
            let detail = if new.asset_tag.is_some() { "with asset tag" } else { "" };
            audit(&mut *conn, actor, "node.add", &format!("node/{}", node.name), detail).await?;
        }
        Ok(())
    }

    /// Applies a patch to nodes within the caller's write transaction, audited `node.set`.
    pub(crate) async fn update_nodes(
        &self,
        conn: &mut AnyConnection,
        names: &[NodeName],
        patch: &NodePatch,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let detail = describe_patch(&patch.settings, patch.profiles.is_some(), patch.asset_tag.as_ref());
        let profiles = profile_map(&load_profiles(&mut *conn).await?);
        for name in names {
            let mut stored = load_node(&mut *conn, name).await?;
            stored.node.settings = patch::apply(&stored.node.settings, &patch.settings, LayerKind::Node)?;
            if let Some(p) = &patch.profiles {
                stored.node.profiles = p.clone();
            }
            let asset = match &patch.asset_tag {
                None => stored.asset_tag.take(),
                Some(AssetTagChange::Unset) => None,
                Some(AssetTagChange::Set(t)) => Some(self.seal_tag(name, t)?),
            };
            write_node(&mut *conn, &stored.node, asset.as_deref(), &profiles, Some(stored.revision)).await?;
            audit(&mut *conn, actor, "node.set", &format!("node/{name}"), &detail).await?;
        }
        Ok(())
    }

    fn seal_tag(&self, node: &NodeName, tag: &Secret) -> Result<Vec<u8>, StoreError> {
        check_asset_tag(tag.expose())?;
        Ok(self.sealer.seal(tag.expose().as_bytes(), asset_tag_aad(node).as_bytes()))
    }
}

#[async_trait]
impl NodeStore for SqlStore {
    async fn add_nodes(&self, req: AddNodes, actor: &Actor) -> Result<usize, StoreError> {
        let mut tx = self.begin_write().await?;
        self.insert_nodes(&mut tx, &req.nodes, actor).await?;
        tx.commit().await?;
        Ok(req.nodes.len())
    }

    async fn set_nodes(&self, names: &[NodeName], patch: &NodePatch, actor: &Actor) -> Result<usize, StoreError> {
        if patch.is_empty() {
            return Err(StoreError::BadRequest("nothing to change: give at least one field to set or unset".into()));
        }
        check_unique(names.iter())?;
        let mut tx = self.begin_write().await?;
        self.update_nodes(&mut tx, names, patch, actor).await?;
        tx.commit().await?;
        Ok(names.len())
    }

    async fn delete_nodes(&self, names: &[NodeName], actor: &Actor) -> Result<Vec<TunnelRecord>, StoreError> {
        check_unique(names.iter())?;
        let mut tx = self.begin_write().await?;
        let mut closed = Vec::new();
        for name in names {
            // Closed here, audited, rather than dropped by the foreign key unseen.
            let tunnel = delete_tunnel(&mut SqlxConn::new(&mut tx), name, CloseReason::Deleted, actor).await?;
            closed.extend(tunnel);
            let done = sqlx::query("DELETE FROM nodes WHERE name = $1").bind(name.as_str()).execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { kind: "node", name: name.to_string() });
            }
            audit(&mut tx, actor, "node.delete", &format!("node/{name}"), "").await?;
        }
        announce(&mut SqlxConn::new(&mut tx), &closed).await?;
        tx.commit().await?;
        Ok(closed)
    }

    async fn list_nodes(&self) -> Result<Vec<NodeView>, StoreError> {
        let mut tx = self.begin_read().await?;
        let nodes = load_nodes(&mut tx, Nodes::All).await?;
        let profiles = profile_map(&load_profiles(&mut tx).await?);
        let tpms = registered_tpm_nodes(&mut tx, None).await?;
        tx.commit().await?;
        nodes.into_iter().map(|n| node_view(n, &profiles, &tpms)).collect()
    }

    async fn get_node(&self, name: &NodeName) -> Result<NodeView, StoreError> {
        let mut tx = self.begin_read().await?;
        let node = load_node(&mut tx, name).await?;
        let profiles = profile_map(&load_profiles(&mut tx).await?);
        let tpms = registered_tpm_nodes(&mut tx, Some(name)).await?;
        tx.commit().await?;
        node_view(node, &profiles, &tpms)
    }

    async fn merged_node(&self, name: &NodeName) -> Result<MergedNodeView, StoreError> {
        Ok(self.merged_and_sealed(name).await?.0)
    }

    async fn node_identity(&self, name: &NodeName) -> Result<(MergedNodeView, Option<Secret>), StoreError> {
        let (merged, sealed) = self.merged_and_sealed(name).await?;
        Ok((merged, self.open_tag(name, sealed)?))
    }

    async fn node_by_mac(&self, mac: &MacAddr) -> Result<Option<NodeName>, StoreError> {
        // A single statement: no snapshot to begin.
        node_with_mac(&mut *self.read.acquire().await?, mac).await
    }

    async fn enrollment_identity(&self, mac: &MacAddr) -> Result<Option<EnrollmentIdentity>, StoreError> {
        // One connection and one snapshot for the four reads (on PostgreSQL each pooled
        // read costs its round trips plus sqlx's ping when the connection goes back).
        let mut tx = self.begin_read().await?;
        let Some(stored) = load_nodes(&mut tx, Nodes::WithMac(mac)).await?.pop() else {
            tx.commit().await?;
            return Ok(None);
        };
        let node = stored.node.name.clone();
        let profiles = profile_map(&load_profiles(&mut tx).await?);
        let tpm = read_record(&mut tx, &node).await?;
        tx.commit().await?;
        let (merged, sealed) = merged_view(stored, &profiles)?;
        let asset_tag = self.open_tag(&node, sealed)?;
        Ok(Some(EnrollmentIdentity { node, merged, asset_tag, tpm }))
    }
}
