//! Admin tokens in the SQL store: hashes, roles, expiry, revocation.

use crate::sql::{audit, SqlStore};
use crate::{format_time, now_secs, Actor, StoreError, TokenInfo};
use sqlx::Row;

const ROLES: [&str; 3] = ["viewer", "operator", "admin"];

fn check_name(name: &str) -> Result<(), StoreError> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadRequest(format!("invalid token name {name:?}: 1 to 64 letters, digits, '.', '_', '-', '@'")))
    }
}

fn info(r: &sqlx::any::AnyRow) -> TokenInfo {
    let now = now_secs();
    let expires: Option<i64> = r.get(3);
    let revoked: Option<i64> = r.get(4);
    TokenInfo {
        name: r.get(0),
        role: r.get(1),
        created_at: format_time(r.get(2)),
        expires_at: expires.map(format_time),
        state: match (revoked, expires) {
            (Some(_), _) => "revoked".into(),
            (None, Some(e)) if e <= now => "expired".into(),
            _ => "active".into(),
        },
    }
}

impl SqlStore {
    pub(crate) async fn create_token_impl(
        &self,
        name: &str,
        role: &str,
        hash: &str,
        expires_at: Option<i64>,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        check_name(name)?;
        if !ROLES.contains(&role) {
            return Err(StoreError::BadRequest(format!("invalid role {role:?}: viewer, operator or admin")));
        }
        let mut tx = self.begin_write().await?;
        if sqlx::query("SELECT 1 FROM tokens WHERE name = $1").bind(name).fetch_optional(&mut *tx).await?.is_some() {
            return Err(StoreError::Conflict(format!("a token named {name} exists; revoke it or pick another name")));
        }
        sqlx::query("INSERT INTO tokens (name, role, hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(name)
            .bind(role)
            .bind(hash)
            .bind(now_secs())
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        let detail = format!("role={role} expires={}", expires_at.map(format_time).unwrap_or_else(|| "never".into()));
        audit(&mut tx, actor, "token.create", &format!("token/{name}"), &detail).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn list_tokens_impl(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query("SELECT name, role, created_at, expires_at, revoked_at FROM tokens ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(info).collect())
    }

    pub(crate) async fn revoke_token_impl(&self, name: &str, actor: &Actor) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
            .bind(now_secs())
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if done == 0 {
            return Err(StoreError::NotFound { kind: "active token", name: name.to_owned() });
        }
        audit(&mut tx, actor, "token.revoke", &format!("token/{name}"), "").await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn token_by_hash_impl(&self, hash: &str) -> Result<Option<TokenInfo>, StoreError> {
        let row = sqlx::query("SELECT name, role, created_at, expires_at, revoked_at FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(info))
    }
}
