//! `ferry node tpm learn`: the admin API's view of a node's latest verified quote, and
//! the approval that pins its PCR values as the node's or a profile's policy.

use crate::admin_state::AdminState;
use crate::error::{ApiJson, HttpError};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Router};
use ferry_api::admin::{TpmLearn, TpmLearned, TpmQuoteView};
use ferry_api::routes;
use ferry_core::model::decode_hex;
use ferry_core::wgkey::hex_encode;
use ferry_core::NodeName;
use ferry_store::{format_time, Actor, LearnTarget, PcrApproval};
use std::collections::BTreeMap;

pub(crate) fn routes() -> Router<AdminState> {
    Router::new().route(routes::NODE_TPM_QUOTE, get(quote)).route(routes::NODE_TPM_LEARN, post(learn))
}

async fn quote(State(s): State<AdminState>, Path(name): Path<String>) -> Result<ApiJson<TpmQuoteView>, HttpError> {
    let node = NodeName::parse(&name)?;
    let Some(q) = s.store.pcr_quote(&node).await? else {
        return Err(HttpError::new(
            axum::http::StatusCode::NOT_FOUND,
            ferry_api::ErrorKind::NotFound,
            format!(
                "node {node} has no verified TPM quote recorded: boot it with its registered TPM and the PCRs \
                 selected (e.g. ferry node set {node} --tpm-pcrs 7), then learn"
            ),
        ));
    };
    Ok(ApiJson(TpmQuoteView {
        node,
        ek_fingerprint: q.ek_fingerprint,
        bank: q.bank,
        pcrs: q.values.iter().map(|(i, v)| (*i, hex_encode(v))).collect(),
        recorded_at: format_time(q.recorded_at),
        recorded_at_secs: q.recorded_at,
        reset_count: q.reset_count,
        restart_count: q.restart_count,
        client: q.client,
    }))
}

async fn learn(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<TpmLearn>,
) -> Result<ApiJson<TpmLearned>, HttpError> {
    let node = NodeName::parse(&name)?;
    let mut values = BTreeMap::new();
    for (i, hex) in &req.pcrs {
        let v = decode_hex(hex).filter(|v| v.len() == 32).ok_or_else(|| {
            HttpError::bad_request(format!("PCR {i}: not a SHA-256 value in hex (approve the quote as shown)"))
        })?;
        values.insert(*i, v);
    }
    let target = match req.profile {
        Some(p) => LearnTarget::Profile(p),
        None => LearnTarget::Node,
    };
    let pinned_on = match &target {
        LearnTarget::Node => format!("node/{node}"),
        LearnTarget::Profile(p) => format!("profile/{p}"),
    };
    let approval = PcrApproval { from: node, target, recorded_at: req.recorded_at_secs, values };
    let pinned = s.store.learn_pcrs(&approval, &actor).await?;
    tracing::info!(%pinned_on, from = %approval.from, "PCR policy learned from a verified quote");
    Ok(ApiJson(TpmLearned { pinned_on, pcrs: pinned.iter().map(|(i, v)| (*i, hex_encode(v))).collect() }))
}

#[cfg(test)]
#[path = "tpm_learn_tests.rs"]
mod tests;
