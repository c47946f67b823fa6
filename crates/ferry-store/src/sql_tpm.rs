//! Node TPM identities in the SQL store.

use crate::audit_rows::audit;
use crate::sql::SqlStore;
use crate::tpm::{Discovery, TpmRecord, TpmRegistration, TpmState, TpmStore};
use crate::{now_secs, Actor, StoreError};
use async_trait::async_trait;
use ferry_core::NodeName;
use sqlx::{AnyConnection, Row};

const COLUMNS: &str = "node, state, fingerprint, ek_spki, ek_cert, updated_at";
const READ_COLUMNS: &str = "node, state, fingerprint, ek_spki, ek_cert, updated_at, conflict_fingerprint";

fn record(row: &sqlx::any::AnyRow) -> Result<(NodeName, TpmRecord), StoreError> {
    let node: String = row.get(0);
    let state = match row.get::<String, _>(1).as_str() {
        "registered" => TpmState::Registered,
        "pending" => TpmState::Pending,
        other => return Err(StoreError::Corrupt(format!("node_tpm/{node}"), format!("state {other:?}"))),
    };
    let name = NodeName::parse(&node).map_err(|e| StoreError::Corrupt(format!("node_tpm/{node}"), e.to_string()))?;
    let registration = TpmRegistration { fingerprint: row.get(2), ek_spki: row.get(3), ek_certificate: row.get(4) };
    Ok((name, TpmRecord { state, registration, updated_at: row.get(5), conflict: row.get(6) }))
}

/// The nodes with a registered TPM (the default identity policy requires it of them).
pub(crate) async fn registered_tpm_nodes(
    conn: &mut AnyConnection,
    only: Option<&NodeName>,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut q = sqlx::query_scalar::<_, String>(if only.is_some() {
        "SELECT node FROM node_tpm WHERE state = 'registered' AND node = $1"
    } else {
        "SELECT node FROM node_tpm WHERE state = 'registered'"
    });
    if let Some(n) = only {
        q = q.bind(n.as_str());
    }
    Ok(q.fetch_all(&mut *conn).await?.into_iter().collect())
}

pub(crate) async fn read_record(conn: &mut AnyConnection, node: &NodeName) -> Result<Option<TpmRecord>, StoreError> {
    let row = sqlx::query(&format!("SELECT {READ_COLUMNS} FROM node_tpm WHERE node = $1"))
        .bind(node.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(record).transpose().map(|r| r.map(|(_, rec)| rec))
}

pub(crate) async fn node_exists(conn: &mut AnyConnection, node: &NodeName) -> Result<(), StoreError> {
    match sqlx::query("SELECT 1 FROM nodes WHERE name = $1").bind(node.as_str()).fetch_optional(&mut *conn).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound { kind: "node", name: node.to_string() }),
    }
}

/// The node that already holds this EK, other than `node`.
async fn owner_of(
    conn: &mut AnyConnection,
    fingerprint: &str,
    node: &NodeName,
) -> Result<Option<(String, String)>, StoreError> {
    let row = sqlx::query("SELECT node, state FROM node_tpm WHERE fingerprint = $1 AND node <> $2")
        .bind(fingerprint)
        .bind(node.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

async fn upsert(
    conn: &mut AnyConnection,
    node: &NodeName,
    state: TpmState,
    tpm: &TpmRegistration,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM node_tpm WHERE node = $1").bind(node.as_str()).execute(&mut *conn).await?;
    sqlx::query(&format!("INSERT INTO node_tpm ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"))
        .bind(node.as_str())
        .bind(state.as_str())
        .bind(&tpm.fingerprint)
        .bind(&tpm.ek_spki)
        .bind(tpm.ek_certificate.as_deref())
        .bind(now_secs())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait]
impl TpmStore for SqlStore {
    async fn set_node_tpm(
        &self,
        node: &NodeName,
        tpm: Option<&TpmRegistration>,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        node_exists(&mut tx, node).await?;
        let subject = format!("node/{node}");
        match tpm {
            Some(tpm) => {
                if let Some((other, state)) = owner_of(&mut tx, &tpm.fingerprint, node).await? {
                    return Err(StoreError::Conflict(format!(
                        "TPM {} is already {state} for node {other}; one TPM identifies one node \
                         (clear it there first: ferry node set {other} --tpm-clear)",
                        tpm.fingerprint
                    )));
                }
                upsert(&mut tx, node, TpmState::Registered, tpm).await?;
                let how = if tpm.ek_certificate.is_some() { "certificate" } else { "public key" };
                audit(&mut tx, actor, "tpm.register", &subject, &format!("ek={} from={how}", tpm.fingerprint)).await?;
            }
            None => {
                let gone = sqlx::query("DELETE FROM node_tpm WHERE node = $1")
                    .bind(node.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if gone > 0 {
                    audit(&mut tx, actor, "tpm.clear", &subject, "").await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn node_tpms(&self, only: Option<&NodeName>) -> Result<Vec<(NodeName, TpmRecord)>, StoreError> {
        let sql = format!(
            "SELECT {READ_COLUMNS} FROM node_tpm {} ORDER BY node",
            if only.is_some() { "WHERE node = $1" } else { "" }
        );
        let mut q = sqlx::query(&sql);
        if let Some(n) = only {
            q = q.bind(n.as_str());
        }
        q.fetch_all(&self.read).await?.iter().map(record).collect()
    }

    async fn record_pending_tpm(
        &self,
        node: &NodeName,
        tpm: &TpmRegistration,
        actor: &Actor,
    ) -> Result<Discovery, StoreError> {
        let mut tx = self.begin_write().await?;
        node_exists(&mut tx, node).await?;
        let subject = format!("node/{node}");
        let outcome = match read_record(&mut tx, node).await? {
            Some(held) if held.registration.fingerprint == tpm.fingerprint => match held.state {
                TpmState::Registered => Discovery::AlreadyRegistered,
                TpmState::Pending => Discovery::AlreadyPending,
            },
            // Whatever is held stays: the admin compares both fingerprints.
            Some(held) => {
                sqlx::query("UPDATE node_tpm SET conflict_fingerprint = $1, conflict_at = $2 WHERE node = $3")
                    .bind(&tpm.fingerprint)
                    .bind(now_secs())
                    .bind(node.as_str())
                    .execute(&mut *tx)
                    .await?;
                let held_fp = held.registration.fingerprint;
                let detail = format!("held={held_fp} ({}) presented={}", held.state.as_str(), tpm.fingerprint);
                audit(&mut tx, actor, "tpm.conflict", &subject, &detail).await?;
                Discovery::Conflict { held: held_fp, state: held.state }
            }
            None => match owner_of(&mut tx, &tpm.fingerprint, node).await? {
                Some((other, _)) => Discovery::OtherNode(other),
                None => {
                    upsert(&mut tx, node, TpmState::Pending, tpm).await?;
                    let detail = format!("ek={} certified={}", tpm.fingerprint, tpm.ek_certificate.is_some());
                    audit(&mut tx, actor, "tpm.pending", &subject, &detail).await?;
                    Discovery::Held
                }
            },
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn approve_tpm(&self, node: &NodeName, fingerprint: &str, actor: &Actor) -> Result<TpmRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        node_exists(&mut tx, node).await?;
        let held = read_record(&mut tx, node).await?;
        let Some(held) = held.filter(|h| h.state == TpmState::Pending) else {
            return Err(StoreError::Conflict(format!(
                "node {node} has no pending TPM to approve (see ferry node tpm {node})"
            )));
        };
        if held.registration.fingerprint != fingerprint {
            return Err(StoreError::Conflict(format!(
                "the TPM pending for node {node} is {}, not {fingerprint}; nothing approved. Approve only the \
                 fingerprint you read from the node's own TPM",
                held.registration.fingerprint
            )));
        }
        sqlx::query(
            "UPDATE node_tpm SET state = 'registered', updated_at = $1, conflict_fingerprint = NULL, \
             conflict_at = NULL WHERE node = $2",
        )
        .bind(now_secs())
        .bind(node.as_str())
        .execute(&mut *tx)
        .await?;
        let detail = match &held.conflict {
            Some(other) => format!("ek={fingerprint} (conflict {other} cleared)"),
            None => format!("ek={fingerprint}"),
        };
        audit(&mut tx, actor, "tpm.approve", &format!("node/{node}"), &detail).await?;
        let rec = read_record(&mut tx, node)
            .await?
            .ok_or_else(|| StoreError::NotFound { kind: "TPM of node", name: node.to_string() })?;
        tx.commit().await?;
        Ok(rec)
    }
}
