//! Admin tokens in the SQL store: hashes, roles, expiry, revocation.

use crate::audit_rows::audit;
use crate::codec::parse_name;
use crate::sql::SqlStore;
use crate::{format_time, now_secs, Actor, Role, StoreError, TokenInfo, TokenStore};
use async_trait::async_trait;
use sqlx::Row;

fn check_name(name: &str) -> Result<(), StoreError> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadRequest(format!("invalid token name {name:?}: 1 to 64 letters, digits, '.', '_', '-', '@'")))
    }
}

fn info(r: &sqlx::any::AnyRow) -> Result<TokenInfo, StoreError> {
    let now = now_secs();
    let expires: Option<i64> = r.get(3);
    let revoked: Option<i64> = r.get(4);
    let name: String = r.get(0);
    Ok(TokenInfo {
        role: parse_name(&format!("token {name}"), r.get::<&str, _>(1))?,
        name,
        created_at: format_time(r.get(2)),
        expires_at: expires.map(format_time),
        state: match (revoked, expires) {
            (Some(_), _) => "revoked".into(),
            (None, Some(e)) if e <= now => "expired".into(),
            _ => "active".into(),
        },
    })
}

#[async_trait]
impl TokenStore for SqlStore {
    async fn create_token(
        &self,
        name: &str,
        role: Role,
        hash: &str,
        expires_at: Option<i64>,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        check_name(name)?;
        let mut tx = self.begin_write().await?;
        if sqlx::query("SELECT 1 FROM tokens WHERE name = $1").bind(name).fetch_optional(&mut *tx).await?.is_some() {
            return Err(StoreError::Conflict(format!("a token named {name} exists; revoke it or pick another name")));
        }
        sqlx::query("INSERT INTO tokens (name, role, hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(name)
            .bind(role.as_str())
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

    async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query("SELECT name, role, created_at, expires_at, revoked_at FROM tokens ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(info).collect()
    }

    async fn revoke_token(&self, name: &str, actor: &Actor) -> Result<(), StoreError> {
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

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>, StoreError> {
        let row = sqlx::query("SELECT name, role, created_at, expires_at, revoked_at FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(info).transpose()
    }
}
