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
use ferry_attest::{check_pcr_policy, make_credential, verify_quote, CaBundle, EkIdentity, TpmPublic};
use ferry_core::enroll::tpm_qualifying_data;
use ferry_core::identity::TpmEvidence;
use ferry_core::{IdentityFactor, MacAddr, NodeName};
use ferry_store::{Actor, Discovery, Store, TpmRecord, TpmRegistration, TpmState};
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
    let pcrs: Vec<u8> = merged.settings.pcr_policy().keys().copied().collect();
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

/// The verdict on an enrollment's TPM proof, and discovery's candidate if the proof
/// verified for an EK the node has not registered.
pub struct Verdict {
    pub evidence: TpmEvidence,
    pub candidate: Option<TpmRegistration>,
}

/// The verdict on an enrollment's TPM proof, given what its nonce carried and the
/// node's TPM record now: a registration revoked or changed since the challenge is
/// not honoured.
pub fn evidence(
    pending: Option<PendingTpm>,
    proof: Option<&TpmProof>,
    nonce: &[u8; 32],
    wg_key: &[u8; 32],
    node: &NodeName,
    pcr_policy: &BTreeMap<u8, Vec<u8>>,
    held_now: Option<&TpmRecord>,
) -> Verdict {
    let verdict = |evidence| Verdict { evidence, candidate: None };
    let (pending, proof) = match (pending, proof) {
        (_, None) => return verdict(TpmEvidence::NotPresented),
        (None, Some(_)) => {
            return verdict(TpmEvidence::Invalid("a TPM proof without a TPM challenge for this nonce".into()))
        }
        (Some(p), Some(proof)) => (p, proof),
    };
    let fp = &pending.fingerprint;
    if let Err(why) = check(&pending, proof, nonce, wg_key, node, pcr_policy) {
        return verdict(TpmEvidence::Invalid(format!("{why} (ek {fp})")));
    }
    let registered_now = held_now.is_some_and(|r| r.state == TpmState::Registered && r.registration.fingerprint == *fp);
    match (pending.registered, registered_now) {
        (true, true) => verdict(TpmEvidence::Valid),
        (true, false) => verdict(TpmEvidence::Invalid(format!(
            "TPM {fp} is no longer registered for this node: its registration changed or was cleared after the \
             credential challenge"
        ))),
        (false, _) => Verdict {
            evidence: TpmEvidence::Unregistered(format!("TPM {fp} attested but is not registered for this node")),
            candidate: pending.discovered,
        },
    }
}

fn check(
    pending: &PendingTpm,
    proof: &TpmProof,
    nonce: &[u8; 32],
    wg_key: &[u8; 32],
    node: &NodeName,
    pcr_policy: &BTreeMap<u8, Vec<u8>>,
) -> Result<(), String> {
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
    verify_quote(&pending.ak, &attest, &signature, &expected, &pending.pcrs, &values).map_err(|e| e.to_string())?;
    check_pcr_policy(pcr_policy, &values).map_err(|differ| pcr_refusal(&differ, &values))
}

/// Names every PCR that differs and what this boot quoted for each PCR of the policy
/// (PCR values are not secret): what an admin compares with a known-good boot.
fn pcr_refusal(differ: &[u8], quoted: &BTreeMap<u8, Vec<u8>>) -> String {
    let list: Vec<String> = differ.iter().map(u8::to_string).collect();
    let what = match list.as_slice() {
        [one] => format!("PCR {one} differs"),
        many => format!("PCRs {} differ", many.join(", ")),
    };
    let values: Vec<String> = quoted.iter().map(|(i, v)| format!("{i}={}", ferry_core::wgkey::hex_encode(v))).collect();
    format!("{what} from the policy (this boot quoted {})", values.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalized_or_refused() {
        let hex = "AB".repeat(32);
        assert_eq!(normalize_fingerprint(&format!(" sha256:{hex}\n")), Some(format!("sha256:{}", "ab".repeat(32))));
        for bad in
            [hex.clone(), format!("sha1:{hex}"), format!("sha256:{}", &hex[2..]), format!("sha256:{}zz", &hex[4..])]
        {
            assert_eq!(normalize_fingerprint(&bad), None, "{bad}");
        }
    }
}
