//! The `tpm` identity factor: registration of a node's EK (admin side), the credential
//! challenge (provisioning side, between the nonce and the enrollment) and the verdict
//! on the proof an enrollment carries.
//!
//! The server holds no TPM: MakeCredential, quote and certificate checks are
//! `ferry-attest`'s pure functions. What a challenge needs at enrollment time (the AK,
//! the secret, the WireGuard key it was issued for) rides on the nonce, so it is
//! single-use, expires with the nonce and is bounded by the nonce cap. A refused
//! credential request uses its nonce up.
//!
//! Discovery (trust on first use) records nothing at the credential step: an unknown
//! EK only rides on the nonce as a candidate. The enrollment holds it pending once the
//! TPM really proved itself (credential activated, quote good) and every other factor
//! of the node's policy passed; a node that already holds another EK keeps it, and the
//! newcomer is refused as a conflict (`ferry_store::Discovery`).

use crate::error::HttpError;
use crate::nonces::{NonceError, NonceStore};
use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ferry_api::enroll::{TpmCredentialChallenge, TpmCredentialRequest, TpmProof};
use ferry_attest::{check_pcr_policy, make_credential, verify_quote, CaBundle, EkIdentity, QuoteInfo, TpmPublic};
use ferry_core::enroll::tpm_qualifying_data;
use ferry_core::identity::TpmEvidence;
use ferry_core::{IdentityFactor, MacAddr, NodeName, Settings};
use ferry_store::{Actor, Discovery, PcrQuote, Store, TpmRecord, TpmRegistration, TpmState, PCR_BANK};
use rand::RngCore;
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The server's TPM settings, loaded once.
pub struct TpmPolicy {
    ca: Option<CaBundle>,
    discovery: bool,
}

impl TpmPolicy {
    pub fn load(config: &crate::config::TpmConfig) -> anyhow::Result<Self> {
        let ca = match &config.ek_ca_bundle {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read [tpm] ek_ca_bundle {}", path.display()))?;
                let bundle = CaBundle::from_pem(&pem).with_context(|| {
                    format!("[tpm] ek_ca_bundle {} is not a PEM certificate bundle", path.display())
                })?;
                tracing::info!(certificates = bundle.len(), path = %path.display(), "EK CA bundle loaded");
                Some(bundle)
            }
        };
        Ok(TpmPolicy { ca, discovery: config.discovery })
    }

    /// An admin vouches for this EK public key (PEM).
    pub fn registration_from_pem(&self, pem: &str) -> Result<TpmRegistration, HttpError> {
        let ek = EkIdentity::from_pem(pem).map_err(|e| HttpError::bad_request(e.to_string()))?;
        Ok(registration(&ek, None))
    }

    /// An EK certificate (DER) that must verify against the CA bundle.
    pub fn registration_from_certificate(&self, der: &[u8]) -> Result<TpmRegistration, HttpError> {
        let Some(ca) = &self.ca else {
            return Err(HttpError::bad_request(
                "no EK CA bundle is configured ([tpm] ek_ca_bundle), so EK certificates cannot be verified; \
                 configure one or register the EK public key with --tpm-ek",
            ));
        };
        let ek = ca
            .verify_ek_certificate(der, ferry_store::now_secs())
            .map_err(|e| HttpError::bad_request(e.to_string()))?;
        Ok(registration(&ek, Some(der.to_vec())))
    }
}

/// `sha256:<64 hex>` in lower case, the form EK fingerprints are stored in; `None` if
/// `s` is not one.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let hex = s.trim().strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256:{}", hex.to_lowercase()))
}

fn registration(ek: &EkIdentity, certificate: Option<Vec<u8>>) -> TpmRegistration {
    TpmRegistration { ek_spki: ek.spki_der().to_vec(), ek_certificate: certificate, fingerprint: ek.fingerprint() }
}

/// What the credential challenge leaves for the enrollment, attached to the nonce.
pub struct PendingTpm {
    node: NodeName,
    wg_key: [u8; 32],
    ak: TpmPublic,
    secret: Zeroizing<[u8; 32]>,
    pcrs: Vec<u8>,
    fingerprint: String,
    /// The EK was the node's registered one when the challenge was issued.
    registered: bool,
    /// Discovery's candidate: recorded only if the enrollment proves everything else.
    discovered: Option<TpmRegistration>,
}

fn decode(what: &str, s: &str) -> Result<Vec<u8>, HttpError> {
    B64.decode(s.trim()).map_err(|_| HttpError::bad_request(format!("{what} is not standard base64")))
}

/// The nonce a credential request names (32 bytes, base64).
pub fn request_nonce(req: &TpmCredentialRequest) -> Result<[u8; 32], HttpError> {
    decode("nonce", &req.nonce)?
        .try_into()
        .map_err(|_| HttpError::bad_request("nonce must be 32 bytes, base64-encoded"))
}

/// Why a credential challenge was not issued.
pub enum NotIssued {
    /// The caller gets the bare refusal; the audit log gets `reason` under `subject`.
    Refused { subject: String, reason: String },
    /// A bad request or a store failure, answered as it is.
    Failed(HttpError),
}

impl NotIssued {
    fn refused(subject: &str, reason: impl Into<String>) -> Self {
        NotIssued::Refused { subject: subject.to_owned(), reason: reason.into() }
    }
}

impl From<HttpError> for NotIssued {
    fn from(e: HttpError) -> Self {
        NotIssued::Failed(e)
    }
}

impl From<ferry_core::CoreError> for NotIssued {
    fn from(e: ferry_core::CoreError) -> Self {
        NotIssued::Failed(e.into())
    }
}

impl From<ferry_store::StoreError> for NotIssued {
    fn from(e: ferry_store::StoreError) -> Self {
        NotIssued::Failed(e.into())
    }
}

/// The credential challenge for `POST /v1/enroll/tpm` (the caller uses the nonce up
/// when this fails): checks the EK and AK a node presents against its registration
/// (or discovery), and attaches what the enrollment needs to the nonce.
pub async fn challenge(
    store: &dyn Store,
    policy: &TpmPolicy,
    nonces: &NonceStore<PendingTpm>,
    req: &TpmCredentialRequest,
    nonce: &[u8; 32],
) -> Result<TpmCredentialChallenge, NotIssued> {
    let key: ferry_wg::PublicKey = req
        .public_key
        .trim()
        .parse()
        .map_err(|_| HttpError::bad_request("public_key is not a WireGuard public key"))?;
    let mac = MacAddr::parse(&req.mac)?;
    let ek =
        TpmPublic::parse(&decode("ek_public", &req.ek_public)?).map_err(|e| HttpError::bad_request(e.to_string()))?;
    let ak =
        TpmPublic::parse(&decode("ak_public", &req.ak_public)?).map_err(|e| HttpError::bad_request(e.to_string()))?;
    let certificate = req.ek_certificate.as_deref().map(|c| decode("ek_certificate", c)).transpose()?;

    if !nonces.is_live(nonce) {
        return Err(NotIssued::refused(&format!("mac/{mac}"), "tpm challenge: unknown, used or expired nonce"));
    }
    let Some(node) = store.node_by_mac(&mac).await? else {
        return Err(NotIssued::refused(&format!("mac/{mac}"), "tpm challenge: no node has this MAC"));
    };
    let subject = format!("node/{node}");
    let ek_id = match ek.check_endorsement_key().and_then(|()| EkIdentity::from_tpm_public(&ek)) {
        Ok(id) => id,
        Err(e) => return Err(NotIssued::refused(&subject, format!("tpm factor: {e}"))),
    };
    let fp = ek_id.fingerprint();
    if let Err(e) = ak.check_attestation_key() {
        return Err(NotIssued::refused(&subject, format!("tpm factor: {e} (ek {fp})")));
    }
    // An EK certificate, when sent and checkable, must verify and certify this EK.
    let certified = match (&certificate, &policy.ca) {
        (Some(der), Some(ca)) => match ca.verify_ek_certificate(der, ferry_store::now_secs()) {
            Ok(certified) if certified == ek_id => true,
            Ok(other) => {
                let why = format!("tpm factor: the EK certificate certifies {} (ek {fp})", other.fingerprint());
                return Err(NotIssued::refused(&subject, why));
            }
            Err(e) => return Err(NotIssued::refused(&subject, format!("tpm factor: {e} (ek {fp})"))),
        },
        _ => false,
    };

    let (merged, tag) = store.node_identity(&node).await?;
    let held = store.node_tpms(Some(&node)).await?.pop().map(|(_, r)| r);
    let held_registered = held.as_ref().filter(|r| r.state == TpmState::Registered);
    let required =
        merged.settings.identity_policy(tag.is_some(), held_registered.is_some()).requires(IdentityFactor::Tpm);
    let registered = held_registered.is_some_and(|r| r.registration.fingerprint == fp);
    let may_discover = required && policy.discovery;
    if let Some(r) = held_registered.filter(|_| !registered && !may_discover) {
        let why =
            format!("tpm factor: TPM {fp} is not the one registered for this node ({})", r.registration.fingerprint);
        return Err(NotIssued::refused(&subject, why));
    }
    let discovered = match (required && !registered, may_discover) {
        (false, _) => None,
        (true, false) => {
            let why = format!(
                "tpm factor: no TPM is registered for this node (it presented {fp}; ferry node set {node} --tpm-ek …)"
            );
            return Err(NotIssued::refused(&subject, why));
        }
        (true, true) if policy.ca.is_some() && !certified => {
            let why = format!(
                "tpm factor: TPM {fp} not held for approval: discovery with a CA bundle needs an EK certificate that verifies"
            );
            return Err(NotIssued::refused(&subject, why));
        }
        (true, true) => Some(registration(&ek_id, certificate.filter(|_| certified))),
    };

    let mut secret = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(secret.as_mut());
    let name = ak.name().map_err(|e| HttpError::bad_request(e.to_string()))?;
    let made = make_credential(&ek, &name, secret.as_ref(), &mut rand::rngs::OsRng)
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
    // Pinned and still-to-learn PCRs alike: the quote of the latter is what an admin learns.
    let pcrs: Vec<u8> = merged.settings.pcr_selection();
    let pending = PendingTpm {
        node: node.clone(),
        wg_key: key.0,
        ak,
        secret,
        pcrs: pcrs.clone(),
        fingerprint: fp.clone(),
        registered,
        discovered,
    };
    match nonces.attach(nonce, pending) {
        Ok(()) => {}
        Err(NonceError::AlreadyAttached) => {
            return Err(NotIssued::refused(&subject, "tpm challenge: one was already issued for this nonce"));
        }
        Err(_) => return Err(NotIssued::refused(&subject, "tpm challenge: the nonce expired meanwhile")),
    }
    tracing::debug!(%node, ek = %fp, "TPM credential challenge issued");
    Ok(TpmCredentialChallenge {
        node: node.to_string(),
        credential_blob: B64.encode(&made.id_object),
        encrypted_secret: B64.encode(&made.encrypted_secret),
        pcrs,
    })
}

/// Trust on first use, at enrollment, for a TPM that proved itself while every other
/// factor held: holds it pending unless the node holds another. Returns the refusal
/// reason (a discovered TPM identifies nothing until an admin approves it).
pub async fn discover(
    store: &dyn Store,
    node: &NodeName,
    candidate: &TpmRegistration,
    actor: &Actor,
) -> Result<String, HttpError> {
    let fp = &candidate.fingerprint;
    Ok(match store.record_pending_tpm(node, candidate, actor).await? {
        Discovery::Held => format!(
            "TPM {fp} is new; held pending (compare it with the node's own TPM, then: ferry node approve {node} \
             --ek-fingerprint {fp})"
        ),
        Discovery::AlreadyPending => format!("TPM {fp} is pending approval (ferry node tpm {node})"),
        Discovery::AlreadyRegistered => {
            format!("TPM {fp} was registered for this node after the challenge; enroll again")
        }
        Discovery::Conflict { held, state } => format!(
            "TPM {fp} conflicts with the {} TPM {held} of this node; nothing replaced (ferry node tpm {node})",
            state.as_str()
        ),
        Discovery::OtherNode(other) => format!("TPM {fp} is held for node {other}; one TPM identifies one node"),
    })
}

/// The verdict on an enrollment's TPM proof, discovery's candidate if the proof
/// verified for an EK the node has not registered, and the PCR values to record if a
/// quote of the node's registered TPM verified (whatever the PCR policy said of them).
pub struct Verdict {
    pub evidence: TpmEvidence,
    pub candidate: Option<TpmRegistration>,
    pub quoted: Option<Quoted>,
}

/// What a quote that verified cryptographically says: the EK whose credential its AK
/// activated, the PCR values it covers and which boot of the TPM it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted {
    pub ek_fingerprint: String,
    pub values: BTreeMap<u8, Vec<u8>>,
    pub reset_count: u32,
    pub restart_count: u32,
}

impl Quoted {
    /// The record `ferry node tpm learn` shows, with the merged PCR policy the node
    /// quoted under and where the enrollment came from.
    pub fn record(self, policy: &BTreeMap<String, String>, client: &str) -> PcrQuote {
        PcrQuote {
            ek_fingerprint: self.ek_fingerprint,
            bank: PCR_BANK.into(),
            values: self.values,
            policy: policy.clone(),
            reset_count: self.reset_count,
            restart_count: self.restart_count,
            client: client.into(),
            recorded_at: ferry_store::now_secs(),
        }
    }
}

/// The verdict on an enrollment's TPM proof, given what its nonce carried, the node's
/// merged settings (PCR policy) and its TPM record now: a registration revoked or
/// changed since the challenge is not honoured.
pub fn evidence(
    pending: Option<PendingTpm>,
    proof: Option<&TpmProof>,
    nonce: &[u8; 32],
    wg_key: &[u8; 32],
    node: &NodeName,
    settings: &Settings,
    held_now: Option<&TpmRecord>,
) -> Verdict {
    let verdict = |evidence| Verdict { evidence, candidate: None, quoted: None };
    let (pending, proof) = match (pending, proof) {
        (_, None) => return verdict(TpmEvidence::NotPresented),
        (None, Some(_)) => {
            return verdict(TpmEvidence::Invalid("a TPM proof without a TPM challenge for this nonce".into()))
        }
        (Some(p), Some(proof)) => (p, proof),
    };
    let fp = &pending.fingerprint;
    let (info, values) = match verify(&pending, proof, nonce, wg_key, node) {
        Ok(verified) => verified,
        Err(why) => return verdict(TpmEvidence::Invalid(format!("{why} (ek {fp})"))),
    };
    let registered_now = held_now.is_some_and(|r| r.state == TpmState::Registered && r.registration.fingerprint == *fp);
    let policy = check_pcrs(settings, &values, node);
    match (pending.registered, registered_now) {
        (true, true) => Verdict {
            evidence: match policy {
                Ok(()) => TpmEvidence::Valid,
                Err(why) => TpmEvidence::Invalid(format!("{why} (ek {fp})")),
            },
            candidate: None,
            // Only the node's registered TPM: a stranger's boot state is nothing to learn.
            quoted: Some(Quoted {
                ek_fingerprint: fp.clone(),
                values,
                reset_count: info.reset_count,
                restart_count: info.restart_count,
            }),
        },
        (true, false) => verdict(TpmEvidence::Invalid(format!(
            "TPM {fp} is no longer registered for this node: its registration changed or was cleared after the \
             credential challenge"
        ))),
        // An unregistered TPM is only a discovery candidate: it meets the pinned values, and
        // PCRs still to learn wait for its first boot as the node's registered TPM (learning
        // needs that boot's quote, so refusing here would leave the node stuck).
        (false, _) => match check_pcr_policy(&settings.pcr_policy(), &values).map_err(|d| pcr_refusal(&d, &values)) {
            Err(why) => verdict(TpmEvidence::Invalid(format!("{why} (ek {fp})"))),
            Ok(()) => Verdict {
                evidence: TpmEvidence::Unregistered(format!("TPM {fp} attested but is not registered for this node")),
                candidate: pending.discovered,
                quoted: None,
            },
        },
    }
}

/// The cryptographic checks: credential activated by this AK, quote signed by it over
/// this nonce, WireGuard key and node, covering exactly the PCRs asked for.
fn verify(
    pending: &PendingTpm,
    proof: &TpmProof,
    nonce: &[u8; 32],
    wg_key: &[u8; 32],
    node: &NodeName,
) -> Result<(QuoteInfo, BTreeMap<u8, Vec<u8>>), String> {
    if &pending.node != node {
        return Err(format!("the TPM challenge was issued for node {}", pending.node));
    }
    if !bool::from(pending.wg_key.ct_eq(wg_key)) {
        return Err("the WireGuard key is not the one the TPM challenge was issued for".into());
    }
    let secret = B64.decode(proof.secret.trim()).unwrap_or_default();
    if !bool::from(secret.as_slice().ct_eq(pending.secret.as_slice())) {
        return Err("credential activation failed: wrong secret (the AK is not in the EK's TPM)".into());
    }
    let attest = B64.decode(proof.attest.trim()).map_err(|_| "the quote is not base64".to_string())?;
    let signature = B64.decode(proof.signature.trim()).map_err(|_| "the quote signature is not base64".to_string())?;
    let mut values = BTreeMap::new();
    for (index, hex) in &proof.pcr_values {
        let value = ferry_core::model::decode_hex(hex).filter(|v| v.len() == 32);
        values.insert(*index, value.ok_or_else(|| format!("PCR {index}: not a SHA-256 value in hex"))?);
    }
    let expected = tpm_qualifying_data(nonce, wg_key, node);
    let info =
        verify_quote(&pending.ak, &attest, &signature, &expected, &pending.pcrs, &values).map_err(|e| e.to_string())?;
    Ok((info, values))
}

/// The PCR policy's verdict on verified values: PCRs selected but not learned yet refuse
/// (secure by default: no trust on first use), then every pinned value must match.
fn check_pcrs(settings: &Settings, quoted: &BTreeMap<u8, Vec<u8>>, node: &NodeName) -> Result<(), String> {
    let unlearned = settings.unlearned_pcrs();
    if !unlearned.is_empty() {
        let list: Vec<String> = unlearned.iter().map(u8::to_string).collect();
        return Err(format!(
            "PCR policy not learned yet: run ferry node tpm learn {node} (PCRs {} have no approved value; {})",
            list.join(", "),
            this_boot_quoted(quoted)
        ));
    }
    check_pcr_policy(&settings.pcr_policy(), quoted).map_err(|differ| pcr_refusal(&differ, quoted))
}

fn this_boot_quoted(quoted: &BTreeMap<u8, Vec<u8>>) -> String {
    format!("this boot quoted {}", ferry_store::describe_pcrs(quoted))
}

/// Names every PCR that differs and what this boot quoted for each PCR of the policy
/// (PCR values are not secret): what an admin compares with a known-good boot.
fn pcr_refusal(differ: &[u8], quoted: &BTreeMap<u8, Vec<u8>>) -> String {
    let list: Vec<String> = differ.iter().map(u8::to_string).collect();
    let what = match list.as_slice() {
        [one] => format!("PCR {one} differs"),
        many => format!("PCRs {} differ", many.join(", ")),
    };
    format!("{what} from the policy ({}; ferry node tpm learn shows them)", this_boot_quoted(quoted))
}

#[cfg(test)]
#[path = "tpm_tests.rs"]
mod tests;
