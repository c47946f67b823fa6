//! Template secrets in the SQL store: sealed values, listings without them.

use crate::audit_rows::audit;
use crate::secrets::{SecretInfo, SecretScope, SecretStore, MAX_SECRET_BYTES};
use crate::sql::SqlStore;
use crate::{format_time, now_secs, Actor, StoreError};
use async_trait::async_trait;
use ferry_core::model::check_secret_name;
use ferry_core::{NodeName, ProfileName};
use sqlx::{AnyConnection, Row};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

async fn target_exists(conn: &mut AnyConnection, scope: &SecretScope) -> Result<(), StoreError> {
    let (sql, kind) = match scope {
        SecretScope::Global => return Ok(()),
        SecretScope::Profile(_) => ("SELECT 1 FROM profiles WHERE name = $1", "profile"),
        SecretScope::Node(_) => ("SELECT 1 FROM nodes WHERE name = $1", "node"),
    };
    match sqlx::query(sql).bind(scope.target()).fetch_optional(&mut *conn).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound { kind, name: scope.target().to_owned() }),
    }
}

#[async_trait]
impl SecretStore for SqlStore {
    async fn set_secret(&self, name: &str, scope: &SecretScope, value: &[u8], actor: &Actor) -> Result<(), StoreError> {
        check_secret_name(name)?;
        if value.is_empty() || value.len() > MAX_SECRET_BYTES {
            return Err(StoreError::BadRequest(format!(
                "secret {name} has {} bytes; a secret holds 1 to {MAX_SECRET_BYTES} bytes",
                value.len()
            )));
        }
        let sealed = self.sealer.seal(value, scope.aad(name).as_bytes());
        let mut tx = self.begin_write().await?;
        target_exists(&mut tx, scope).await?;
        sqlx::query("DELETE FROM secrets WHERE name = $1 AND scope = $2 AND target = $3")
            .bind(name)
            .bind(scope.kind())
            .bind(scope.target())
            .execute(&mut *tx)
            .await?;
        let (node, profile) = match scope {
            SecretScope::Global => (None, None),
            SecretScope::Profile(p) => (None, Some(p.as_str())),
            SecretScope::Node(n) => (Some(n.as_str()), None),
        };
        sqlx::query(
            "INSERT INTO secrets (name, scope, target, node, profile, value, size, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(name)
        .bind(scope.kind())
        .bind(scope.target())
        .bind(node)
        .bind(profile)
        .bind(&sealed)
        .bind(value.len() as i64)
        .bind(now_secs())
        .execute(&mut *tx)
        .await?;
        audit(&mut tx, actor, "secret.set", &format!("secret/{name}"), &format!("scope={scope} size={}", value.len()))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_secret(&self, name: &str, scope: &SecretScope, actor: &Actor) -> Result<(), StoreError> {
        check_secret_name(name)?;
        let mut tx = self.begin_write().await?;
        let gone = sqlx::query("DELETE FROM secrets WHERE name = $1 AND scope = $2 AND target = $3")
            .bind(name)
            .bind(scope.kind())
            .bind(scope.target())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Err(StoreError::NotFound { kind: "secret", name: format!("{name} ({scope})") });
        }
        audit(&mut tx, actor, "secret.delete", &format!("secret/{name}"), &format!("scope={scope}")).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_secrets(&self) -> Result<Vec<SecretInfo>, StoreError> {
        let rows =
            sqlx::query("SELECT name, scope, target, size, updated_at FROM secrets ORDER BY name, scope, target")
                .fetch_all(&self.read)
                .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let (scope, target): (String, String) = (r.get(1), r.get(2));
                SecretInfo {
                    name: r.get(0),
                    scope: if target.is_empty() { scope } else { format!("{scope}/{target}") },
                    size: r.get::<i64, _>(3).max(0) as u64,
                    updated_at: format_time(r.get(4)),
                }
            })
            .collect())
    }

    /// Every secret a node sees, opened: global, then its profiles in order, then its
    /// own — each later one replacing an earlier one of the same name.
    async fn secrets_for(
        &self,
        node: &NodeName,
        profiles: &[ProfileName],
    ) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, scope, target, value FROM secrets WHERE scope = 'global' OR (scope = 'node' AND target = $1) \
             OR scope = 'profile'",
        )
        .bind(node.as_str())
        .fetch_all(&self.read)
        .await?;
        let rank = |scope: &str, target: &str| -> Option<usize> {
            match scope {
                "global" => Some(0),
                "profile" => profiles.iter().position(|p| p.as_str() == target).map(|i| i + 1),
                "node" => Some(profiles.len() + 1),
                _ => None,
            }
        };
        let mut ranked: Vec<(usize, String, SecretScope, Vec<u8>)> = Vec::new();
        for r in rows {
            let (name, scope, target, sealed): (String, String, String, Vec<u8>) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let Some(rank) = rank(&scope, &target) else { continue };
            let scope = match scope.as_str() {
                "global" => SecretScope::Global,
                "profile" => SecretScope::Profile(
                    ProfileName::parse(&target)
                        .map_err(|e| StoreError::Corrupt(format!("secret/{name}"), e.to_string()))?,
                ),
                _ => SecretScope::Node(node.clone()),
            };
            ranked.push((rank, name, scope, sealed));
        }
        ranked.sort_by_key(|(rank, ..)| *rank);
        let mut out = BTreeMap::new();
        for (_, name, scope, sealed) in ranked {
            let value = self.sealer.open(&sealed, scope.aad(&name).as_bytes())?;
            out.insert(name, value);
        }
        Ok(out)
    }
}
