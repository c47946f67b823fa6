//! Recorded PCR quotes and learning a PCR policy from one, in the SQL store.

use crate::audit_rows::audit;
use crate::codec::{parse_json, to_json};
use crate::pcr_quotes::{LearnTarget, PcrApproval, PcrQuote, PcrQuoteStore};
use crate::sql::SqlStore;
use crate::sql_nodes::load_node_layer;
use crate::sql_profiles::{load_profiles, profile_map, update_profiles};
use crate::sql_tpm::{node_exists, read_record};
use crate::{format_time, Actor, StoreError, TpmState};
use async_trait::async_trait;
use ferry_api::admin::{NodePatch, ProfilePatch};
use ferry_core::merge::merge_node;
use ferry_core::model::decode_hex;
use ferry_core::patch::SettingsPatch;
use ferry_core::wgkey::hex_encode;
use ferry_core::{NodeName, Settings};
use sqlx::{AnyConnection, Row};
use std::collections::BTreeMap;

const COLUMNS: &str = "node, ek_fingerprint, bank, pcrs, policy, reset_count, restart_count, client, recorded_at";

fn quote_row(node: &NodeName, row: &sqlx::any::AnyRow) -> Result<PcrQuote, StoreError> {
    let what = format!("node_pcr_quotes/{node}");
    let hex: BTreeMap<u8, String> = parse_json(&what, row.get(3))?;
    let values = hex
        .into_iter()
        .map(|(i, v)| {
            decode_hex(&v).map(|v| (i, v)).ok_or_else(|| StoreError::Corrupt(what.clone(), "PCR value".into()))
        })
        .collect::<Result<_, _>>()?;
    let count =
        |i: usize| u32::try_from(row.get::<i64, _>(i)).map_err(|_| StoreError::Corrupt(what.clone(), "count".into()));
    Ok(PcrQuote {
        ek_fingerprint: row.get(1),
        bank: row.get(2),
        values,
        policy: parse_json(&what, row.get(4))?,
        reset_count: count(5)?,
        restart_count: count(6)?,
        client: row.get(7),
        recorded_at: row.get(8),
    })
}

async fn read_quote(conn: &mut AnyConnection, node: &NodeName) -> Result<Option<PcrQuote>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM node_pcr_quotes WHERE node = $1"))
        .bind(node.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| quote_row(node, &r)).transpose()
}

fn hex_map(values: &BTreeMap<u8, Vec<u8>>) -> BTreeMap<u8, String> {
    values.iter().map(|(i, v)| (*i, hex_encode(v))).collect()
}

/// `7=ab… 8=cd…`, for the audit log and refusals.
pub fn describe_pcrs(values: &BTreeMap<u8, Vec<u8>>) -> String {
    values.iter().map(|(i, v)| format!("{i}={}", hex_encode(v))).collect::<Vec<_>>().join(" ")
}

/// Which values the approval pins, after every check that makes the quote learnable.
async fn approved_values(
    conn: &mut AnyConnection,
    approval: &PcrApproval,
) -> Result<(PcrQuote, BTreeMap<u8, Vec<u8>>), StoreError> {
    let node = &approval.from;
    node_exists(&mut *conn, node).await?;
    let Some(quote) = read_quote(&mut *conn, node).await? else {
        return Err(StoreError::Conflict(format!(
            "node {node} has no verified TPM quote recorded: boot it (its TPM registered, the PCRs selected, e.g. \
             ferry node set {node} --tpm-pcrs 7) so it quotes, then learn"
        )));
    };
    if quote.recorded_at != approval.recorded_at || quote.values != approval.values {
        return Err(StoreError::Conflict(format!(
            "node {node} quoted again ({}) since the quote you approved; nothing pinned: run learn again and \
             approve what it shows",
            format_time(quote.recorded_at)
        )));
    }
    let held = read_record(&mut *conn, node).await?.filter(|r| r.state == TpmState::Registered);
    if held.as_ref().map(|r| &r.registration.fingerprint) != Some(&quote.ek_fingerprint) {
        return Err(StoreError::Conflict(format!(
            "the quote of node {node} was made by TPM {}, which is no longer the TPM registered for it; boot it \
             again with its registered TPM",
            quote.ek_fingerprint
        )));
    }
    let (layer, node_changed) = load_node_layer(&mut *conn, node).await?;
    let loaded = load_profiles(&mut *conn).await?;
    let profiles = profile_map(&loaded);
    let merged = merge_node(&layer, &profiles)?;
    // The last change of the node or a profile it uses (whole seconds: a change in the
    // quote's own second counts as before it). Together with the policy the quote was
    // made under, no quote older than a policy change is learned, even one whose policy
    // was later restored.
    let last_change =
        merged.profiles.iter().filter_map(|p| loaded.get(p)).map(|(_, _, at)| *at).fold(node_changed, i64::max);
    if merged.settings.tpm_pcrs != quote.policy || quote.recorded_at < last_change {
        return Err(StoreError::Conflict(format!(
            "the PCR policy of node {node} changed after its quote ({}; the node or a profile of it changed at \
             {}); nothing pinned: boot it again so it quotes under the current policy, then learn",
            format_time(quote.recorded_at),
            format_time(last_change)
        )));
    }
    let selected: Vec<u8> = match &approval.target {
        // The PCRs the node itself selects, and any still to learn: values its profiles
        // pin stay theirs (a node copy would hide the profile's next learn).
        LearnTarget::Node => {
            let mut own = layer.settings.pcr_selection();
            own.extend(merged.settings.unlearned_pcrs());
            own.sort_unstable();
            own.dedup();
            if own.is_empty() && !merged.settings.pcr_selection().is_empty() {
                return Err(StoreError::BadRequest(format!(
                    "node {node} selects no PCRs itself and none is left to learn: its profiles pin them; learn \
                     there: ferry profile tpm learn PROFILE --from {node}"
                )));
            }
            own
        }
        LearnTarget::Profile(p) => {
            if !merged.profiles.contains(p) {
                return Err(StoreError::Conflict(format!(
                    "node {node} does not use profile {p}: learn a profile's values from one of its own nodes"
                )));
            }
            // The profile's own layer: `~INDEX` removals do not parse as indexes.
            let own = profiles.get(p).map(|p| p.settings.pcr_selection()).unwrap_or_default();
            if own.is_empty() {
                return Err(StoreError::BadRequest(format!(
                    "profile {p} selects no PCRs; select them first, e.g. ferry profile set {p} --tpm-pcrs 4,7,8,9"
                )));
            }
            own
        }
    };
    if selected.is_empty() {
        return Err(StoreError::BadRequest(format!(
            "node {node}'s policy selects no PCRs; select them first, e.g. ferry node set {node} --tpm-pcrs 7"
        )));
    }
    let mut pinned = BTreeMap::new();
    for i in selected {
        let value = quote.values.get(&i).ok_or_else(|| {
            StoreError::Conflict(format!("node {node}'s quote does not cover PCR {i}; boot it again, then learn"))
        })?;
        pinned.insert(i, value.clone());
    }
    Ok((quote, pinned))
}

#[async_trait]
impl PcrQuoteStore for SqlStore {
    async fn record_pcr_quote(&self, node: &NodeName, quote: &PcrQuote) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        node_exists(&mut tx, node).await?;
        sqlx::query("DELETE FROM node_pcr_quotes WHERE node = $1").bind(node.as_str()).execute(&mut *tx).await?;
        sqlx::query(&format!("INSERT INTO node_pcr_quotes ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
            .bind(node.as_str())
            .bind(&quote.ek_fingerprint)
            .bind(&quote.bank)
            .bind(to_json(&hex_map(&quote.values)))
            .bind(to_json(&quote.policy))
            .bind(i64::from(quote.reset_count))
            .bind(i64::from(quote.restart_count))
            .bind(&quote.client)
            .bind(quote.recorded_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn pcr_quote(&self, node: &NodeName) -> Result<Option<PcrQuote>, StoreError> {
        let mut tx = self.begin_read().await?;
        node_exists(&mut tx, node).await?;
        let quote = read_quote(&mut tx, node).await?;
        tx.commit().await?;
        Ok(quote)
    }

    async fn learn_pcrs(&self, approval: &PcrApproval, actor: &Actor) -> Result<BTreeMap<u8, Vec<u8>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let (quote, pinned) = approved_values(&mut tx, approval).await?;
        let set = Settings {
            tpm_pcrs: pinned.iter().map(|(i, v)| (i.to_string(), hex_encode(v))).collect(),
            ..Default::default()
        };
        let settings = SettingsPatch { set, unset: vec![] };
        let from = &approval.from;
        let subject = match &approval.target {
            LearnTarget::Node => {
                let patch = NodePatch { settings, ..Default::default() };
                self.update_nodes(&mut tx, std::slice::from_ref(from), &patch, actor).await?;
                format!("node/{from}")
            }
            LearnTarget::Profile(p) => {
                let patch = ProfilePatch { settings, ..Default::default() };
                update_profiles(&mut tx, std::slice::from_ref(p), &patch, actor).await?;
                format!("profile/{p}")
            }
        };
        let detail = format!(
            "from=node/{from} quoted={} boot=reset:{}/restart:{} ek={} pcrs={}",
            format_time(quote.recorded_at),
            quote.reset_count,
            quote.restart_count,
            quote.ek_fingerprint,
            describe_pcrs(&pinned)
        );
        audit(&mut tx, actor, "tpm.pcrs-learned", &subject, &detail).await?;
        tx.commit().await?;
        Ok(pinned)
    }
}
