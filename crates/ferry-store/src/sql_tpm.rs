//! Node TPM identities in the SQL store.

use crate::sql::{audit, SqlStore};
use crate::tpm::{TpmRecord, TpmRegistration, TpmState};
use crate::{now_secs, Actor, StoreError};
use ferry_core::NodeName;
use sqlx::{AnyConnection, Row};

const COLUMNS: &str = "node, state, fingerprint, ek_spki, ek_cert, updated_at";

fn record(row: &sqlx::any::AnyRow) -> Result<(NodeName, TpmRecord), StoreError> {
    let node: String = row.get(0);
    let state = match row.get::<String, _>(1).as_str() {
        "registered" => TpmState::Registered,
        "pending" => TpmState::Pending,
        other => return Err(StoreError::Corrupt(format!("node_tpm/{node}"), format!("state {other:?}"))),
    };
    let name = NodeName::parse(&node).map_err(|e| StoreError::Corrupt(format!("node_tpm/{node}"), e.to_string()))?;
    let registration = TpmRegistration { fingerprint: row.get(2), ek_spki: row.get(3), ek_certificate: row.get(4) };
    Ok((name, TpmRecord { state, registration, updated_at: row.get(5) }))
}

async fn node_exists(conn: &mut AnyConnection, node: &NodeName) -> Result<(), StoreError> {
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

impl SqlStore {
    pub(crate) async fn set_node_tpm_impl(
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

    pub(crate) async fn node_tpms_impl(
        &self,
        only: Option<&NodeName>,
    ) -> Result<Vec<(NodeName, TpmRecord)>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM node_tpm {} ORDER BY node",
            if only.is_some() { "WHERE node = $1" } else { "" }
        );
        let mut q = sqlx::query(&sql);
        if let Some(n) = only {
            q = q.bind(n.as_str());
        }
        q.fetch_all(&self.read).await?.iter().map(record).collect()
    }

    pub(crate) async fn record_pending_tpm_impl(
        &self,
        node: &NodeName,
        tpm: &TpmRegistration,
        actor: &Actor,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        node_exists(&mut tx, node).await?;
        let current = sqlx::query("SELECT state, fingerprint FROM node_tpm WHERE node = $1")
            .bind(node.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        match current {
            // A registered EK is never replaced by discovery.
            Some(row) if row.get::<String, _>(0) == "registered" => return Ok(false),
            Some(row) if row.get::<String, _>(1) == tpm.fingerprint => return Ok(false),
            _ => {}
        }
        if owner_of(&mut tx, &tpm.fingerprint, node).await?.is_some() {
            return Ok(false);
        }
        upsert(&mut tx, node, TpmState::Pending, tpm).await?;
        let detail = format!("ek={} certified={}", tpm.fingerprint, tpm.ek_certificate.is_some());
        audit(&mut tx, actor, "tpm.pending", &format!("node/{node}"), &detail).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(crate) async fn approve_tpm_impl(&self, node: &NodeName, actor: &Actor) -> Result<TpmRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        node_exists(&mut tx, node).await?;
        let now = now_secs();
        let done = sqlx::query(
            "UPDATE node_tpm SET state = 'registered', updated_at = $1 WHERE node = $2 AND state = 'pending'",
        )
        .bind(now)
        .bind(node.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Err(StoreError::Conflict(format!(
                "node {node} has no pending TPM to approve (see ferry node tpm {node})"
            )));
        }
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM node_tpm WHERE node = $1"))
            .bind(node.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let (_, rec) = record(&row)?;
        audit(&mut tx, actor, "tpm.approve", &format!("node/{node}"), &format!("ek={}", rec.registration.fingerprint))
            .await?;
        tx.commit().await?;
        Ok(rec)
    }
}
