//! The SSH certificate authority in the SQL store: sealed CA keys, issued certificates,
//! revoked nodes. Every write is one transaction with its audit entries.

use crate::audit_rows::audit;
use crate::codec::parse_name;
use crate::sql::SqlStore;
use crate::ssh_ca::{
    ca_aad, NewSshCertificate, SigningCa, SshCaPurpose, SshCaRecord, SshCaStore, SshCertificateState,
    SshCertificateView, SshIssueRefusal, MAX_CERTIFICATES_PER_BOOT, SSH_CERTIFICATE_KEEP_SECS,
};
use crate::{format_time, now_secs, Actor, StoreError};
use async_trait::async_trait;
use ferry_core::NodeName;
use sqlx::{AnyConnection, Row};

const CA_COLUMNS: &str = "id, purpose, public_key, created_at, retired_at, trusted_until";

fn ca_record(r: &sqlx::any::AnyRow) -> Result<SshCaRecord, StoreError> {
    let id: i64 = r.get(0);
    Ok(SshCaRecord {
        id,
        purpose: parse_name(&format!("ssh CA {id}"), r.get::<&str, _>(1))?,
        public_key: r.get(2),
        created_at: r.get(3),
        retired_at: r.get(4),
        trusted_until: r.get(5),
    })
}

async fn signing_ca(conn: &mut AnyConnection, purpose: SshCaPurpose) -> Result<Option<SshCaRecord>, StoreError> {
    let sql = format!("SELECT {CA_COLUMNS} FROM ssh_cas WHERE purpose = $1 AND retired_at IS NULL");
    let row = sqlx::query(&sql).bind(purpose.as_str()).fetch_optional(&mut *conn).await?;
    row.as_ref().map(ca_record).transpose()
}

/// Inserts a CA as the signing one of its purpose (the caller retired the previous).
async fn insert_ca(
    store: &SqlStore,
    conn: &mut AnyConnection,
    purpose: SshCaPurpose,
    public_key: &str,
    private_key: &[u8],
) -> Result<SshCaRecord, StoreError> {
    let (next,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) + 1 FROM ssh_cas").fetch_one(&mut *conn).await?;
    let sealed = store.sealer.seal(private_key, ca_aad(purpose, next).as_bytes());
    let now = now_secs();
    sqlx::query("INSERT INTO ssh_cas (id, purpose, public_key, private_key, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(next)
        .bind(purpose.as_str())
        .bind(public_key)
        .bind(&sealed)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(SshCaRecord {
        id: next,
        purpose,
        public_key: public_key.to_owned(),
        created_at: now,
        retired_at: None,
        trusted_until: None,
    })
}

fn check_ca_key(public_key: &str, private_key: &[u8]) -> Result<(), StoreError> {
    if public_key.trim().is_empty() || public_key.contains('\n') || private_key.is_empty() {
        return Err(StoreError::BadRequest("an SSH CA needs a one-line public key and a private key".into()));
    }
    Ok(())
}

fn certificate_view(r: &sqlx::any::AnyRow, now: i64) -> Result<SshCertificateView, StoreError> {
    let serial: i64 = r.get(0);
    let what = format!("ssh certificate {serial}");
    let (valid_before, revoked_at): (i64, Option<i64>) = (r.get(8), r.get(9));
    let principals: String = r.get(6);
    Ok(SshCertificateView {
        serial: serial as u64,
        node: parse_name(&what, r.get::<&str, _>(1))?,
        ca_id: r.get(2),
        key_id: r.get(3),
        key_type: r.get(4),
        fingerprint: r.get(5),
        principals: principals.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        issued_at: format_time(r.get(7)),
        valid_before: format_time(valid_before),
        state: match revoked_at {
            Some(_) => SshCertificateState::Revoked,
            None if valid_before <= now => SshCertificateState::Expired,
            None => SshCertificateState::Valid,
        },
    })
}

#[async_trait]
impl SshCaStore for SqlStore {
    async fn ensure_ssh_ca(
        &self,
        purpose: SshCaPurpose,
        public_key: &str,
        private_key: &[u8],
        actor: &Actor,
    ) -> Result<(SshCaRecord, bool), StoreError> {
        check_ca_key(public_key, private_key)?;
        let mut tx = self.begin_write().await?;
        if let Some(existing) = signing_ca(&mut tx, purpose).await? {
            return Ok((existing, false));
        }
        let ca = insert_ca(self, &mut tx, purpose, public_key, private_key).await?;
        audit(&mut tx, actor, "ssh.ca-created", &format!("ssh-ca/{}", ca.id), &format!("purpose={purpose}")).await?;
        tx.commit().await?;
        Ok((ca, true))
    }

    async fn ssh_signing_ca(&self, purpose: SshCaPurpose) -> Result<Option<SigningCa>, StoreError> {
        let sql = format!("SELECT {CA_COLUMNS}, private_key FROM ssh_cas WHERE purpose = $1 AND retired_at IS NULL");
        let Some(row) = sqlx::query(&sql).bind(purpose.as_str()).fetch_optional(&self.read).await? else {
            return Ok(None);
        };
        let ca = ca_record(&row)?;
        let sealed: Vec<u8> = row.get(6);
        let private_key = self.sealer.open(&sealed, ca_aad(purpose, ca.id).as_bytes())?;
        Ok(Some(SigningCa { ca, private_key }))
    }

    async fn list_ssh_cas(&self) -> Result<Vec<SshCaRecord>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {CA_COLUMNS} FROM ssh_cas ORDER BY id DESC")).fetch_all(&self.read).await?;
        rows.iter().map(ca_record).collect()
    }

    async fn rotate_ssh_ca(
        &self,
        purpose: SshCaPurpose,
        public_key: &str,
        private_key: &[u8],
        overlap_secs: u64,
        actor: &Actor,
    ) -> Result<SshCaRecord, StoreError> {
        check_ca_key(public_key, private_key)?;
        let overlap = i64::try_from(overlap_secs).unwrap_or(i64::MAX / 2).min(i64::MAX / 2);
        let mut tx = self.begin_write().await?;
        let now = now_secs();
        let old = signing_ca(&mut tx, purpose).await?;
        if let Some(old) = &old {
            sqlx::query("UPDATE ssh_cas SET retired_at = $1, trusted_until = $2 WHERE id = $3")
                .bind(now)
                .bind(now.saturating_add(overlap))
                .bind(old.id)
                .execute(&mut *tx)
                .await?;
        }
        let ca = insert_ca(self, &mut tx, purpose, public_key, private_key).await?;
        let detail = match &old {
            Some(old) => format!(
                "purpose={purpose} replaces=ssh-ca/{} trusted_until={}",
                old.id,
                format_time(now.saturating_add(overlap))
            ),
            None => format!("purpose={purpose}"),
        };
        audit(&mut tx, actor, "ssh.ca-rotated", &format!("ssh-ca/{}", ca.id), &detail).await?;
        tx.commit().await?;
        Ok(ca)
    }

    async fn record_ssh_certificates(
        &self,
        node: &NodeName,
        boot_started: i64,
        certificates: &[NewSshCertificate],
        actor: &Actor,
    ) -> Result<Result<(), SshIssueRefusal>, StoreError> {
        let subject = format!("node/{node}");
        let mut tx = self.begin_write().await?;
        let mut refusal = None;
        let (issued,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM ssh_certificates WHERE node = $1 AND issued_at >= $2")
                .bind(node.as_str())
                .bind(boot_started)
                .fetch_one(&mut *tx)
                .await?;
        if issued + certificates.len() as i64 > MAX_CERTIFICATES_PER_BOOT {
            let max = MAX_CERTIFICATES_PER_BOOT;
            refusal = Some(SshIssueRefusal::TooMany { node: node.clone(), issued, max });
        }
        if refusal.is_none()
            && sqlx::query("SELECT 1 FROM ssh_revoked_nodes WHERE node = $1")
                .bind(node.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .is_some()
        {
            refusal = Some(SshIssueRefusal::NodeRevoked(node.clone()));
        }
        for c in certificates {
            if refusal.is_some() {
                break;
            }
            let other: Option<(String,)> =
                sqlx::query_as("SELECT node FROM ssh_certificates WHERE fingerprint = $1 AND node <> $2 LIMIT 1")
                    .bind(&c.fingerprint)
                    .bind(node.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((other,)) = other {
                let other = parse_name(&format!("ssh certificate of {}", c.fingerprint), &other)?;
                refusal = Some(SshIssueRefusal::KeyOfAnotherNode { fingerprint: c.fingerprint.clone(), other });
            }
        }
        if let Some(refusal) = refusal {
            return Ok(Err(refusal));
        }
        for c in certificates {
            sqlx::query(
                "INSERT INTO ssh_certificates (serial, node, ca_id, key_id, key_type, fingerprint, public_key, \
                 principals, issued_at, valid_before) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(c.serial as i64)
            .bind(node.as_str())
            .bind(c.ca_id)
            .bind(&c.key_id)
            .bind(&c.key_type)
            .bind(&c.fingerprint)
            .bind(&c.public_key)
            .bind(c.principals.join(","))
            .bind(c.issued_at)
            .bind(c.valid_before)
            .execute(&mut *tx)
            .await?;
            let detail = format!(
                "serial={} ca=ssh-ca/{} type={} fingerprint={} principals={} valid_before={} key_id={:?}",
                c.serial,
                c.ca_id,
                c.key_type,
                c.fingerprint,
                c.principals.join(","),
                format_time(c.valid_before),
                c.key_id
            );
            audit(&mut tx, actor, "ssh.certificate-issued", &subject, &detail).await?;
        }
        sqlx::query("DELETE FROM ssh_certificates WHERE valid_before < $1")
            .bind(now_secs() - SSH_CERTIFICATE_KEEP_SECS)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    async fn list_ssh_certificates(&self, node: Option<&NodeName>) -> Result<Vec<SshCertificateView>, StoreError> {
        let columns =
            "serial, node, ca_id, key_id, key_type, fingerprint, principals, issued_at, valid_before, revoked_at";
        let rows = match node {
            Some(n) => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM ssh_certificates WHERE node = $1 ORDER BY issued_at DESC, serial"
                ))
                .bind(n.as_str())
                .fetch_all(&self.read)
                .await?
            }
            None => {
                sqlx::query(&format!("SELECT {columns} FROM ssh_certificates ORDER BY issued_at DESC, serial"))
                    .fetch_all(&self.read)
                    .await?
            }
        };
        let now = now_secs();
        rows.iter().map(|r| certificate_view(r, now)).collect()
    }

    async fn revoke_ssh_node(&self, node: &NodeName, actor: &Actor) -> Result<usize, StoreError> {
        let mut tx = self.begin_write().await?;
        if sqlx::query("SELECT 1 FROM nodes WHERE name = $1")
            .bind(node.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound { kind: "node", name: node.to_string() });
        }
        let now = now_secs();
        let revoked = sqlx::query("UPDATE ssh_certificates SET revoked_at = $1 WHERE node = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(node.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected() as usize;
        sqlx::query("INSERT INTO ssh_revoked_nodes (node, revoked_at) VALUES ($1, $2) ON CONFLICT (node) DO NOTHING")
            .bind(node.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        audit(&mut tx, actor, "ssh.revoke", &format!("node/{node}"), &format!("certificates={revoked}")).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    async fn reinstate_ssh_node(&self, node: &NodeName, actor: &Actor) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let gone = sqlx::query("DELETE FROM ssh_revoked_nodes WHERE node = $1")
            .bind(node.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Err(StoreError::NotFound { kind: "node with revoked SSH certificates", name: node.to_string() });
        }
        audit(&mut tx, actor, "ssh.reinstate", &format!("node/{node}"), "").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ssh_revoked_keys(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT public_key FROM ssh_certificates WHERE valid_before > $1 AND \
             (revoked_at IS NOT NULL OR node NOT IN (SELECT name FROM nodes)) ORDER BY public_key",
        )
        .bind(now_secs())
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|(k,)| k).collect())
    }
}
