//! The sealing key check: the store records, per key id, a value sealed under that key
//! (the key check value), and a server proves at start-up that its key opens the
//! store's before it registers. A server with another key would join as healthy and
//! fail every delivery of a secret; it refuses to start instead.

use crate::audit_rows::audit;
use crate::secrets::{asset_tag_aad, SealingKeyCheck, SealingStore, SecretScope};
use crate::sql::SqlStore;
use crate::{now_secs, Actor, SealError, StoreError};
use async_trait::async_trait;
use ferry_core::{NodeName, ProfileName};
use sqlx::AnyConnection;

/// What a key check value seals; its associated data names the key id.
const CHECK_PLAINTEXT: &[u8] = b"ferry sealing key check v1";
/// Values named in an error or a warning (the rest are counted).
const NAMED_AT_MOST: usize = 10;

fn check_aad(key_id: &str) -> String {
    format!("ferry/sealing-key-check/{key_id}")
}

/// `a, b, c and 4 more`.
fn name_some(names: &[String]) -> String {
    let mut text = names.iter().take(NAMED_AT_MOST).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > NAMED_AT_MOST {
        text.push_str(&format!(" and {} more", names.len() - NAMED_AT_MOST));
    }
    text
}

#[async_trait]
impl SealingStore for SqlStore {
    fn sealing_key_id(&self) -> &str {
        self.sealer.key_id()
    }

    async fn check_sealing_key(&self, actor: &Actor) -> Result<SealingKeyCheck, StoreError> {
        let ours = self.sealer.key_id().to_owned();
        // One writer at a time (every server of a PostgreSQL store): two servers starting
        // together on a store without a key cannot both record theirs.
        let mut tx = self.begin_write().await?;
        let recorded: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT key_id, check_value FROM sealing_keys ORDER BY key_id").fetch_all(&mut *tx).await?;
        if let Some((_, check)) = recorded.iter().find(|(id, _)| *id == ours) {
            return match self.sealer.open(check, check_aad(&ours).as_bytes()) {
                Ok(text) if text.as_slice() == CHECK_PLAINTEXT => Ok(SealingKeyCheck::Verified),
                _ => Err(SealError::CheckValueAltered { key_id: ours }.into()),
            };
        }
        if !recorded.is_empty() {
            let store = recorded.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(", ");
            return Err(SealError::WrongKey { ours, store }.into());
        }
        // No key recorded: an empty store, or one made before keys were recorded.
        let (opened, unreadable) = self.open_every_sealed_value(&mut tx).await?;
        let total = opened + unreadable.len();
        let (outcome, origin) = if total == 0 {
            (SealingKeyCheck::Recorded, "new")
        } else if opened > unreadable.len() {
            // Most, not all: servers without a shared key may have sealed a few values
            // under their own; the key that sealed the majority is the store's.
            (SealingKeyCheck::Adopted { opened, unreadable: unreadable.clone() }, "adopted")
        } else {
            return Err(SealError::NotTheStoresKey { ours, opened, total, unreadable: name_some(&unreadable) }.into());
        };
        let check = self.sealer.seal(CHECK_PLAINTEXT, check_aad(&ours).as_bytes());
        sqlx::query("INSERT INTO sealing_keys (key_id, check_value, recorded_at, origin) VALUES ($1, $2, $3, $4)")
            .bind(&ours)
            .bind(&check)
            .bind(now_secs())
            .bind(origin)
            .execute(&mut *tx)
            .await?;
        let mut detail = format!("origin={origin} opened={opened}");
        if !unreadable.is_empty() {
            detail.push_str(&format!(" unreadable={}", unreadable.len()));
        }
        audit(&mut tx, actor, "store.sealing-key", &format!("sealing-key/{ours}"), &detail).await?;
        tx.commit().await?;
        Ok(outcome)
    }
}

impl SqlStore {
    /// Tries this key on every sealed value (asset tags, template secrets): how many
    /// open, and the names of those that do not.
    async fn open_every_sealed_value(&self, conn: &mut AnyConnection) -> Result<(usize, Vec<String>), StoreError> {
        let (mut opened, mut unreadable) = (0, Vec::new());
        let tags: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT name, asset_tag FROM nodes WHERE asset_tag IS NOT NULL ORDER BY name")
                .fetch_all(&mut *conn)
                .await?;
        for (name, sealed) in tags {
            let opens =
                NodeName::parse(&name).is_ok_and(|n| self.sealer.open(&sealed, asset_tag_aad(&n).as_bytes()).is_ok());
            if opens {
                opened += 1;
            } else {
                unreadable.push(format!("the asset tag of node {name}"));
            }
        }
        let secrets: Vec<(String, String, String, Vec<u8>)> =
            sqlx::query_as("SELECT name, scope, target, value FROM secrets ORDER BY name, scope, target")
                .fetch_all(&mut *conn)
                .await?;
        for (name, scope, target, sealed) in secrets {
            let scope = match scope.as_str() {
                "global" => Some(SecretScope::Global),
                "profile" => ProfileName::parse(&target).ok().map(SecretScope::Profile),
                "node" => NodeName::parse(&target).ok().map(SecretScope::Node),
                _ => None,
            };
            match scope {
                Some(scope) if self.sealer.open(&sealed, scope.aad(&name).as_bytes()).is_ok() => opened += 1,
                Some(scope) => unreadable.push(format!("secret {name} ({scope})")),
                None => unreadable.push(format!("secret {name} ({target})")),
            }
        }
        Ok((opened, unreadable))
    }
}
