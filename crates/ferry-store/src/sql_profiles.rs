//! Profiles in the SQL store ([`ProfileStore`]), and the profile reads nodes need.

use crate::audit_rows::audit;
use crate::codec::{check_unique, parse_json, parse_name, to_json};
use crate::sql::SqlStore;
use crate::{format_time, now_secs, Actor, ProfileStore, StoreError};
use async_trait::async_trait;
use ferry_api::admin::{AddProfiles, AssetTagChange, NewProfile, ProfilePatch, ProfileView};
use ferry_core::merge::check_profile_graph;
use ferry_core::model::LayerKind;
use ferry_core::{patch, Profile, ProfileName, Settings};
use sqlx::{AnyConnection, Row};
use std::collections::BTreeMap;

/// Every profile with its revision and update time.
pub(crate) type LoadedProfiles = BTreeMap<ProfileName, (Profile, i64, i64)>;

/// Every profile with its parents in order: one statement (a join). A profile's columns
/// repeat on each of its parents' rows.
pub(crate) async fn load_profiles(conn: &mut AnyConnection) -> Result<LoadedProfiles, StoreError> {
    let mut out = BTreeMap::new();
    let mut last: Option<ProfileName> = None;
    for row in sqlx::query(
        "SELECT p.name, p.settings, p.revision, p.updated_at, pp.parent \
         FROM profiles p LEFT JOIN profile_parents pp ON pp.profile = p.name ORDER BY p.name, pp.position",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let name: ProfileName = parse_name("profile", row.get::<&str, _>(0))?;
        if last.as_ref() != Some(&name) {
            let settings: Settings = parse_json(&format!("profile {name}"), row.get(1))?;
            let profile = Profile { name: name.clone(), profiles: vec![], settings };
            out.insert(name.clone(), (profile, row.get(2), row.get(3)));
            last = Some(name.clone());
        }
        if let Some(parent) = row.get::<Option<&str>, _>(4) {
            if let Some((p, _, _)) = out.get_mut(&name) {
                p.profiles.push(parse_name("profile", parent)?);
            }
        }
    }
    Ok(out)
}

pub(crate) fn profile_map(loaded: &LoadedProfiles) -> BTreeMap<ProfileName, Profile> {
    loaded.iter().map(|(k, (p, _, _))| (k.clone(), p.clone())).collect()
}

/// What an audit entry says about a patch: the fields touched, never their values
/// (a template may embed credentials).
pub(crate) fn describe_patch(
    patch: &patch::SettingsPatch,
    profiles_changed: bool,
    asset: Option<&AssetTagChange>,
) -> String {
    let mut parts: Vec<String> = serde_json::to_value(&patch.set)
        .ok()
        .and_then(|v| v.as_object().map(|o| o.keys().map(|k| format!("set {k}")).collect()))
        .unwrap_or_default();
    parts.extend(patch.unset.iter().map(|p| format!("unset {}", p.join("."))));
    if profiles_changed {
        parts.push("set profiles".into());
    }
    match asset {
        Some(AssetTagChange::Set(_)) => parts.push("set asset_tag".into()),
        Some(AssetTagChange::Unset) => parts.push("unset asset_tag".into()),
        None => {}
    }
    parts.join(", ")
}

async fn write_parents(
    conn: &mut AnyConnection,
    name: &ProfileName,
    parents: &[ProfileName],
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM profile_parents WHERE profile = $1").bind(name.as_str()).execute(&mut *conn).await?;
    for (pos, parent) in parents.iter().enumerate() {
        sqlx::query("INSERT INTO profile_parents (profile, position, parent) VALUES ($1, $2, $3)")
            .bind(name.as_str())
            .bind(pos as i64)
            .bind(parent.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Adds profiles (parents may be among them) within the caller's write transaction.
pub(crate) async fn insert_profiles(
    conn: &mut AnyConnection,
    profiles: &[NewProfile],
    actor: &Actor,
) -> Result<(), StoreError> {
    check_unique(profiles.iter().map(|p| p.name.clone()))?;
    let mut all = profile_map(&load_profiles(&mut *conn).await?);
    let now = now_secs();
    for new in profiles {
        new.settings.validate(LayerKind::Profile)?;
        if all.contains_key(&new.name) {
            return Err(StoreError::Conflict(format!(
                "profile {} already exists; use `ferry profile set` to change it",
                new.name
            )));
        }
        all.insert(
            new.name.clone(),
            Profile { name: new.name.clone(), profiles: new.profiles.clone(), settings: new.settings.clone() },
        );
        sqlx::query("INSERT INTO profiles (name, settings, revision, updated_at) VALUES ($1, $2, 1, $3)")
            .bind(new.name.as_str())
            .bind(to_json(&new.settings))
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    // Parents may be added in the same batch, so links go in after all profiles.
    check_profile_graph(&all)?;
    for new in profiles {
        write_parents(&mut *conn, &new.name, &new.profiles).await?;
        audit(&mut *conn, actor, "profile.add", &format!("profile/{}", new.name), "").await?;
    }
    Ok(())
}

/// Applies a patch to profiles within the caller's write transaction, audited `profile.set`.
pub(crate) async fn update_profiles(
    conn: &mut AnyConnection,
    names: &[ProfileName],
    patch: &ProfilePatch,
    actor: &Actor,
) -> Result<(), StoreError> {
    let detail = describe_patch(&patch.settings, patch.profiles.is_some(), None);
    let loaded = load_profiles(&mut *conn).await?;
    let mut all = profile_map(&loaded);
    let now = now_secs();
    for name in names {
        let (_, revision, _) =
            loaded.get(name).ok_or_else(|| StoreError::NotFound { kind: "profile", name: name.to_string() })?;
        let p = all.get_mut(name).ok_or_else(|| StoreError::NotFound { kind: "profile", name: name.to_string() })?;
        p.settings = patch::apply(&p.settings, &patch.settings, LayerKind::Profile)?;
        if let Some(parents) = &patch.profiles {
            p.profiles = parents.clone();
        }
        sqlx::query("UPDATE profiles SET settings = $1, revision = $2, updated_at = $3 WHERE name = $4")
            .bind(to_json(&p.settings))
            .bind(revision + 1)
            .bind(now)
            .bind(name.as_str())
            .execute(&mut *conn)
            .await?;
        if patch.profiles.is_some() {
            let parents = p.profiles.clone();
            write_parents(&mut *conn, name, &parents).await?;
        }
        audit(&mut *conn, actor, "profile.set", &format!("profile/{name}"), &detail).await?;
    }
    check_profile_graph(&all)?;
    Ok(())
}

#[async_trait]
impl ProfileStore for SqlStore {
    async fn add_profiles(&self, req: AddProfiles, actor: &Actor) -> Result<usize, StoreError> {
        let mut tx = self.begin_write().await?;
        insert_profiles(&mut tx, &req.profiles, actor).await?;
        tx.commit().await?;
        Ok(req.profiles.len())
    }

    async fn set_profiles(
        &self,
        names: &[ProfileName],
        patch: &ProfilePatch,
        actor: &Actor,
    ) -> Result<usize, StoreError> {
        if patch.profiles.is_none() && patch.settings.is_empty() {
            return Err(StoreError::BadRequest("nothing to change: give at least one field to set or unset".into()));
        }
        check_unique(names.iter())?;
        let mut tx = self.begin_write().await?;
        update_profiles(&mut tx, names, patch, actor).await?;
        tx.commit().await?;
        Ok(names.len())
    }

    async fn delete_profiles(&self, names: &[ProfileName], actor: &Actor) -> Result<usize, StoreError> {
        check_unique(names.iter())?;
        let mut tx = self.begin_write().await?;
        for name in names {
            let users: Vec<(String,)> = sqlx::query_as(
                "SELECT node FROM node_profiles WHERE profile = $1 UNION SELECT profile FROM profile_parents WHERE parent = $2 ORDER BY 1 LIMIT 6",
            )
            .bind(name.as_str())
            .bind(name.as_str())
            .fetch_all(&mut *tx)
            .await?;
            if !users.is_empty() {
                let mut list: Vec<String> = users.into_iter().map(|(u,)| u).collect();
                if list.len() > 5 {
                    list.truncate(5);
                    list.push("...".into());
                }
                return Err(StoreError::Conflict(format!(
                    "profile {name} is still used by {}; remove it from them first",
                    list.join(", ")
                )));
            }
            let done =
                sqlx::query("DELETE FROM profiles WHERE name = $1").bind(name.as_str()).execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { kind: "profile", name: name.to_string() });
            }
            audit(&mut tx, actor, "profile.delete", &format!("profile/{name}"), "").await?;
        }
        tx.commit().await?;
        Ok(names.len())
    }

    async fn list_profiles(&self) -> Result<Vec<ProfileView>, StoreError> {
        let mut tx = self.begin_read().await?;
        let loaded = load_profiles(&mut tx).await?;
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT profile, COUNT(*) FROM node_profiles GROUP BY profile").fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let counts: BTreeMap<String, i64> = counts.into_iter().collect();
        Ok(loaded
            .into_values()
            .map(|(p, revision, updated_at)| ProfileView {
                nodes: counts.get(p.name.as_str()).copied().unwrap_or(0),
                name: p.name,
                profiles: p.profiles,
                settings: p.settings,
                revision,
                updated_at: format_time(updated_at),
            })
            .collect())
    }

    async fn get_profile(&self, name: &ProfileName) -> Result<ProfileView, StoreError> {
        self.list_profiles()
            .await?
            .into_iter()
            .find(|p| &p.name == name)
            .ok_or_else(|| StoreError::NotFound { kind: "profile", name: name.to_string() })
    }
}
