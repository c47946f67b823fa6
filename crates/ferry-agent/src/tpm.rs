//! The TPM side of the `tpm` enrollment factor, on `tss-esapi`.
//!
//! Each step is a separate call so tests can mix them (the endorsement of one TPM with
//! an attestation key of another, a replayed quote, ...):
//!
//! - [`Tpm::endorsement`]: the RSA 2048 endorsement key (default EK template) and its
//!   certificate from NV index `0x01c00002`, if the TPM has one;
//! - [`Tpm::create_ak`]: a fresh attestation key under the EK (RSA 2048, restricted,
//!   RSASSA SHA-256, name algorithm SHA-256);
//! - [`Tpm::activate_credential`]: TPM2_ActivateCredential with the AK, the EK authorized
//!   by a policy session doing PolicySecret(endorsement);
//! - [`Tpm::quote`]: TPM2_Quote with the AK over SHA-256 bank PCRs, and their values;
//! - [`Tpm::extend_pcr`]: extends a SHA-256 bank PCR (tests use it to change PCR 7).
//!
//! **No resource manager needed.** Every transient object and session a step creates is
//! flushed when the step ends, on success and on error; the EK primary is created once per
//! [`Tpm`] and flushed when it is dropped. [`Tpm::open`] first flushes transient objects
//! and sessions a crashed earlier run may have left in the TPM — so do not share a raw TPM
//! (`device:/dev/tpm0`, a `swtpm` socket) with another program while the agent runs;
//! `/dev/tpmrm0` isolates every client and shows it none of the others' handles.
//!
//! Secrets (the activated credential) and the AK's private blob are never logged.

use std::collections::BTreeMap;
use std::convert::TryFrom;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::{ak, ek, AsymmetricAlgorithmSelection, DefaultKey};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::tss::{TPM2_LOADED_SESSION_FIRST, TPM2_POLICY_SESSION_FIRST, TPM2_TRANSIENT_FIRST};
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, PcrHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Attest, AttestInfo, CapabilityData, Data, Digest, DigestValues, EncryptedSecret, IdObject, PcrSelectionList,
    PcrSelectionListBuilder, PcrSlot, Private, Public, Signature, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, TctiNameConf};

pub use crate::attest::{hex, PCR_COUNT};
use crate::tcti::Tcti;

/// NV index of the RSA 2048 EK certificate (TCG EK Credential Profile).
pub const RSA_EK_CERTIFICATE_NV_INDEX: u32 = 0x01c0_0002;
/// `TPM_ALG_SHA256`, the first two bytes of a SHA-256 object name.
const NAME_ALG_SHA256: [u8; 2] = [0x00, 0x0b];
/// How often a quote is retaken when a PCR changes between the quote and the read.
const QUOTE_ATTEMPTS: usize = 3;

/// Why a TPM step failed. Messages say what to check.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string is invalid.
    #[error("{0}")]
    Config(String),
    /// The TPM could not be opened.
    #[error("cannot open the TPM at {tcti}: {source} ({hint})")]
    Open { tcti: String, source: tss_esapi::Error, hint: String },
    /// A TPM command failed.
    #[error("TPM: cannot {what}: {source}{hint}")]
    Command { what: &'static str, source: tss_esapi::Error, hint: &'static str },
    /// An input or a TPM answer is not what it must be.
    #[error("TPM: {0}")]
    Invalid(String),
}

/// Maps a tss-esapi error to [`TpmError::Command`].
fn failed(what: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Command { what, source, hint: "" }
}

/// The endorsement key's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endorsement {
    /// The marshalled `TPMT_PUBLIC` of the RSA 2048 EK.
    pub public: Vec<u8>,
    /// The EK certificate (DER) from NV index `0x01c00002`, when the TPM has one.
    pub certificate: Option<Vec<u8>>,
}

/// An attestation key created under the EK, as data: it is loaded for each use.
#[derive(Clone, PartialEq, Eq)]
pub struct AttestationKey {
    /// The marshalled `TPMT_PUBLIC`.
    pub public: Vec<u8>,
    /// The `TPM2B_PRIVATE` contents (without the size prefix), wrapped by the EK: only
    /// this TPM can load it. Never logged.
    pub private: Vec<u8>,
    /// The TPM name: `0x000b || SHA-256(public)`; MakeCredential binds to it.
    pub name: Vec<u8>,
}

impl fmt::Debug for AttestationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestationKey")
            .field("name", &hex(&self.name))
            .field("public", &format_args!("{} bytes", self.public.len()))
            .field("private", &"(redacted)")
            .finish()
    }
}

/// A quote and the values of the PCRs it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The marshalled `TPMS_ATTEST`, exactly as signed.
    pub attest: Vec<u8>,
    /// The raw RSASSA-PKCS1-v1_5 SHA-256 signature over `attest`.
    pub signature: Vec<u8>,
    /// PCR index → SHA-256 bank value, for every quoted PCR.
    pub pcr_values: BTreeMap<u8, Vec<u8>>,
}

/// The name of an object whose name algorithm is SHA-256, from its marshalled `TPMT_PUBLIC`.
pub fn object_name(public: &[u8]) -> Vec<u8> {
    let mut name = NAME_ALG_SHA256.to_vec();
    name.extend_from_slice(&Sha256::digest(public));
    name
}

/// The quote's PCR digest: SHA-256 over the values in index order.
pub fn pcr_digest(values: &BTreeMap<u8, Vec<u8>>) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in values.values() {
        h.update(v);
    }
    h.finalize().into()
}

/// An open TPM. Not `Send` (tss-esapi's context is not): use it from one thread.
pub struct Tpm {
    ctx: Context,
    tcti: Tcti,
    /// The EK primary, created on first use and flushed on drop.
    ek: Option<KeyHandle>,
}

impl fmt::Debug for Tpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tpm").field("tcti", &self.tcti.as_str()).finish_non_exhaustive()
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        if let Some(ek) = self.ek.take() {
            flush(&mut self.ctx, ek.into(), "endorsement key");
        }
    }
}

impl Tpm {
    /// Opens the TPM behind `tcti` (see [`crate::tcti`] for the accepted forms) and
    /// flushes transient objects and sessions left by an earlier run.
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let began = Instant::now();
        let tcti = Tcti::parse(tcti).map_err(TpmError::Config)?;
        let open_err = |source| TpmError::Open { tcti: tcti.to_string(), source, hint: open_hint(&tcti) };
        let conf = TctiNameConf::from_str(tcti.as_str()).map_err(open_err)?;
        let ctx = Context::new(conf).map_err(open_err)?;
        let mut tpm = Tpm { ctx, tcti, ek: None };
        tpm.flush_leftovers()?;
        tracing::debug!(tcti = %tpm.tcti, ms = began.elapsed().as_millis(), "opened the TPM");
        Ok(tpm)
    }

    /// The TCTI this TPM was opened with (normalized).
    pub fn tcti(&self) -> &str {
        self.tcti.as_str()
    }

    /// The EK's public part and certificate.
    pub fn endorsement(&mut self) -> Result<Endorsement, TpmError> {
        let ek = self.ek()?;
        let (public, _, _) = self.ctx.read_public(ek).map_err(failed("read the endorsement key"))?;
        let public = public.marshall().map_err(failed("marshal the endorsement key"))?;
        let certificate = self.ek_certificate()?;
        Ok(Endorsement { public, certificate })
    }

    /// Creates a fresh attestation key under the EK (not left loaded).
    pub fn create_ak(&mut self) -> Result<AttestationKey, TpmError> {
        let ek = self.ek()?;
        let began = Instant::now();
        let created = ak::create_ak_2(
            &mut self.ctx,
            ek,
            HashingAlgorithm::Sha256,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            SignatureSchemeAlgorithm::RsaSsa,
            None,
            DefaultKey,
        )
        .map_err(failed("create an attestation key"))?;
        let public = created.out_public.marshall().map_err(failed("marshal the attestation key"))?;
        tracing::debug!(ms = began.elapsed().as_millis(), "created an attestation key");
        Ok(AttestationKey { name: object_name(&public), private: created.out_private.value().to_vec(), public })
    }

    /// TPM2_ActivateCredential: recovers the secret of a credential made (MakeCredential)
    /// for this TPM's EK and `ak`'s name. `credential_blob` and `encrypted_secret` are
    /// the `TPM2B_ID_OBJECT` and `TPM2B_ENCRYPTED_SECRET` contents without size prefix.
    pub fn activate_credential(
        &mut self,
        ak: &AttestationKey,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let blob = IdObject::try_from(credential_blob.to_vec())
            .map_err(|e| TpmError::Invalid(format!("the credential blob is not a TPM2B_ID_OBJECT: {e}")))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(|e| TpmError::Invalid(format!("the encrypted secret is not a TPM2B_ENCRYPTED_SECRET: {e}")))?;
        let ek = self.ek()?;
        let began = Instant::now();
        let ak_handle = self.load_ak(ak)?;
        let result = with_flushed(&mut self.ctx, ak_handle.into(), "attestation key", |ctx| {
            let session = endorsement_policy_session(ctx)?;
            with_flushed(ctx, SessionHandle::from(session).into(), "policy session", |ctx| {
                ctx.execute_with_sessions((Some(AuthSession::Password), Some(session), None), |ctx| {
                    ctx.activate_credential(ak_handle, ek, blob, secret)
                })
                .map_err(|source| TpmError::Command {
                    what: "activate the credential",
                    source,
                    hint: " (was the credential made for this TPM's endorsement key and this attestation \
                           key's name?)",
                })
            })
        })?;
        tracing::debug!(ms = began.elapsed().as_millis(), "activated the credential");
        Ok(result.value().to_vec())
    }

    /// TPM2_Quote with `ak` over the SHA-256 bank PCRs `pcrs` (any order, duplicates
    /// ignored; may be empty), with `qualifying` as the qualifying data, and the values of
    /// those PCRs. A PCR that changes between the quote and the read is noticed (the values
    /// must hash to the quoted digest) and the quote taken again.
    pub fn quote(&mut self, ak: &AttestationKey, qualifying: &[u8; 32], pcrs: &[u8]) -> Result<Quote, TpmError> {
        let selection = pcr_selection(pcrs)?;
        let began = Instant::now();
        let ak_handle = self.load_ak(ak)?;
        let result = with_flushed(&mut self.ctx, ak_handle.into(), "attestation key", |ctx| {
            let data = Data::try_from(qualifying.to_vec()).map_err(failed("build the qualifying data"))?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (attest, signature) = ctx
                    .execute_with_nullauth_session(|ctx| {
                        ctx.quote(ak_handle, data.clone(), SignatureScheme::Null, selection.clone())
                    })
                    .map_err(failed("quote the PCRs"))?;
                let pcr_values = read_pcrs(ctx, pcrs)?;
                if quoted_digest(&attest)? == pcr_digest(&pcr_values) {
                    return Ok(Quote {
                        attest: attest.marshall().map_err(failed("marshal the quote"))?,
                        signature: rsassa_bytes(signature)?,
                        pcr_values,
                    });
                }
                if attempt == QUOTE_ATTEMPTS {
                    return Err(TpmError::Invalid(format!(
                        "the PCRs kept changing while they were quoted ({QUOTE_ATTEMPTS} attempts): is something \
                         extending PCRs {pcrs:?} right now?"
                    )));
                }
                tracing::info!("a PCR changed between the quote and reading it; quoting again");
            }
        });
        tracing::debug!(ms = began.elapsed().as_millis(), pcrs = ?pcrs, "quoted");
        result
    }

    /// The SHA-256 bank values of `pcrs`.
    pub fn read_pcrs(&mut self, pcrs: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, TpmError> {
        read_pcrs(&mut self.ctx, pcrs)
    }

    /// Extends SHA-256 bank PCR `index` with SHA-256(`data`) (TPM2_PCR_Extend).
    pub fn extend_pcr(&mut self, index: u8, data: &[u8]) -> Result<(), TpmError> {
        check_pcr(index)?;
        let handle = PcrHandle::try_from(ObjectHandle::from(u32::from(index))).map_err(failed("name the PCR"))?;
        let mut digests = DigestValues::new();
        let digest = Digest::try_from(Sha256::digest(data).to_vec()).map_err(failed("hash the event"))?;
        digests.set(HashingAlgorithm::Sha256, digest);
        self.ctx.execute_with_nullauth_session(|ctx| ctx.pcr_extend(handle, digests)).map_err(failed("extend the PCR"))
    }

    /// The EK handle, creating the primary on first use (slow: an RSA key from the seed).
    fn ek(&mut self) -> Result<KeyHandle, TpmError> {
        if let Some(ek) = self.ek {
            return Ok(ek);
        }
        let began = Instant::now();
        let ek =
            ek::create_ek_object_2(&mut self.ctx, AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048), DefaultKey)
                .map_err(|source| TpmError::Command {
                what: "create the endorsement key",
                source,
                hint: " (if the TPM is out of object memory, another program holds objects on a raw TPM: \
                       use device:/dev/tpmrm0)",
            })?;
        tracing::debug!(ms = began.elapsed().as_millis(), "created the endorsement key");
        self.ek = Some(ek);
        Ok(ek)
    }

    fn ek_certificate(&mut self) -> Result<Option<Vec<u8>>, TpmError> {
        let (data, _) = self
            .ctx
            .execute_without_session(|ctx| ctx.get_capability(CapabilityType::Handles, RSA_EK_CERTIFICATE_NV_INDEX, 1))
            .map_err(failed("list NV indices"))?;
        let present = matches!(&data, CapabilityData::Handles(list)
            if list.first().is_some_and(|h| u32::from(*h) == RSA_EK_CERTIFICATE_NV_INDEX));
        if !present {
            tracing::debug!("the TPM has no RSA EK certificate");
            return Ok(None);
        }
        ek::retrieve_ek_pubcert(&mut self.ctx, AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048))
            .map(Some)
            .map_err(failed("read the EK certificate from NV index 0x01c00002"))
    }

    /// Loads `ak` under the EK; the caller flushes it.
    fn load_ak(&mut self, ak: &AttestationKey) -> Result<KeyHandle, TpmError> {
        let ek = self.ek()?;
        let public = Public::unmarshall(&ak.public)
            .map_err(|e| TpmError::Invalid(format!("the attestation key's public part is not a TPMT_PUBLIC: {e}")))?;
        let private = Private::try_from(ak.private.clone())
            .map_err(|e| TpmError::Invalid(format!("the attestation key's private blob is invalid: {e}")))?;
        ak::load_ak(&mut self.ctx, ek, None, private, public).map_err(|source| TpmError::Command {
            what: "load the attestation key",
            source,
            hint: " (an attestation key loads only in the TPM that created it)",
        })
    }

    /// Flushes every transient object and session in the TPM. Through a resource
    /// manager there are none of ours to see; on a raw TPM these are leftovers of a run
    /// that crashed before flushing.
    fn flush_leftovers(&mut self) -> Result<(), TpmError> {
        // Saved sessions are listed from POLICY_SESSION_FIRST but may come back as 0x02xxxxxx.
        const FLUSHABLE: [u32; 3] =
            [TPM2_TRANSIENT_FIRST >> 24, TPM2_LOADED_SESSION_FIRST >> 24, TPM2_POLICY_SESSION_FIRST >> 24];
        let mut leftovers = Vec::new();
        for first in [TPM2_TRANSIENT_FIRST, TPM2_LOADED_SESSION_FIRST, TPM2_POLICY_SESSION_FIRST] {
            let (data, _) = self
                .ctx
                .execute_without_session(|ctx| ctx.get_capability(CapabilityType::Handles, first, 64))
                .map_err(failed("list the handles in use"))?;
            if let CapabilityData::Handles(list) = data {
                leftovers.extend(list.iter().copied().filter(|h| FLUSHABLE.contains(&(u32::from(*h) >> 24))));
            }
        }
        for handle in leftovers {
            let raw = u32::from(handle);
            tracing::info!(handle = format_args!("{raw:#010x}"), "flushing a handle left in the TPM by an earlier run");
            match self.ctx.execute_without_session(|ctx| ctx.tr_from_tpm_public(handle)) {
                Ok(object) => flush(&mut self.ctx, object, "leftover handle"),
                Err(e) => tracing::warn!(handle = format_args!("{raw:#010x}"), "cannot flush: {e}"),
            }
        }
        Ok(())
    }
}

/// Starts a policy session satisfied by PolicySecret(endorsement hierarchy, empty auth),
/// which the default EK template's policy requires. The caller flushes it.
fn endorsement_policy_session(ctx: &mut Context) -> Result<AuthSession, TpmError> {
    let session = ctx
        .execute_without_session(|ctx| {
            ctx.start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::Null,
                HashingAlgorithm::Sha256,
            )
        })
        .map_err(failed("start a policy session"))?
        .ok_or_else(|| TpmError::Invalid("the TPM started no policy session".into()))?;
    let (attributes, mask) = SessionAttributesBuilder::new().with_continue_session(true).build();
    let satisfied = ctx.tr_sess_set_attributes(session, attributes, mask).and_then(|()| {
        let policy = PolicySession::try_from(session)?;
        ctx.execute_with_nullauth_session(|ctx| {
            ctx.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Default::default(),
                Default::default(),
                Default::default(),
                None,
            )
        })
    });
    if let Err(source) = satisfied {
        flush(ctx, SessionHandle::from(session).into(), "policy session");
        return Err(TpmError::Command {
            what: "authorize the endorsement key (PolicySecret)",
            source,
            hint: " (is the endorsement hierarchy's password set? ferry expects it empty)",
        });
    }
    Ok(session)
}

/// Runs `f`, then flushes `handle` whatever `f` returned.
fn with_flushed<T>(
    ctx: &mut Context,
    handle: ObjectHandle,
    what: &str,
    f: impl FnOnce(&mut Context) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let result = f(ctx);
    flush(ctx, handle, what);
    result
}

fn flush(ctx: &mut Context, handle: ObjectHandle, what: &str) {
    if let Err(e) = ctx.execute_without_session(|ctx| ctx.flush_context(handle)) {
        tracing::warn!("cannot flush the {what} from the TPM: {e}");
    }
}

fn check_pcr(index: u8) -> Result<(), TpmError> {
    if index < PCR_COUNT {
        Ok(())
    } else {
        Err(TpmError::Invalid(format!("PCR {index} does not exist (a TPM has PCRs 0-{})", PCR_COUNT - 1)))
    }
}

/// The PCRs sorted, without duplicates, each with its slot.
fn pcr_slots(pcrs: &[u8]) -> Result<Vec<(u8, PcrSlot)>, TpmError> {
    let mut pcrs = pcrs.to_vec();
    pcrs.sort_unstable();
    pcrs.dedup();
    pcrs.into_iter()
        .map(|i| {
            check_pcr(i)?;
            Ok((i, PcrSlot::try_from(1u32 << i).map_err(failed("name the PCR"))?))
        })
        .collect()
}

/// The SHA-256 selection of `pcrs`; no PCRs is an empty list (TPML_PCR_SELECTION count 0).
fn pcr_selection(pcrs: &[u8]) -> Result<PcrSelectionList, TpmError> {
    let slots: Vec<PcrSlot> = pcr_slots(pcrs)?.into_iter().map(|(_, slot)| slot).collect();
    let builder = PcrSelectionListBuilder::new();
    let builder = if slots.is_empty() { builder } else { builder.with_selection(HashingAlgorithm::Sha256, &slots) };
    builder.build().map_err(failed("build the PCR selection"))
}

fn read_pcrs(ctx: &mut Context, pcrs: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, TpmError> {
    let slots = pcr_slots(pcrs)?;
    if slots.is_empty() {
        return Ok(BTreeMap::new());
    }
    let selection = pcr_selection(pcrs)?;
    let data = ctx
        .execute_without_session(|ctx| tss_esapi::abstraction::pcr::read_all(ctx, selection))
        .map_err(failed("read the PCRs"))?;
    let bank = data
        .pcr_bank(HashingAlgorithm::Sha256)
        .ok_or_else(|| TpmError::Invalid("the TPM has no active SHA-256 PCR bank".into()))?;
    slots
        .into_iter()
        .map(|(index, slot)| match bank.get_digest(slot) {
            Some(digest) => Ok((index, digest.value().to_vec())),
            None => Err(TpmError::Invalid(format!("the TPM returned no SHA-256 value for PCR {index}"))),
        })
        .collect()
}

fn quoted_digest(attest: &Attest) -> Result<Vec<u8>, TpmError> {
    match attest.attested() {
        AttestInfo::Quote { info } => Ok(info.pcr_digest().value().to_vec()),
        _ => Err(TpmError::Invalid("TPM2_Quote returned something other than a quote".into())),
    }
}

fn rsassa_bytes(signature: Signature) -> Result<Vec<u8>, TpmError> {
    match signature {
        Signature::RsaSsa(s) if s.hashing_algorithm() == HashingAlgorithm::Sha256 => Ok(s.signature().value().to_vec()),
        other => Err(TpmError::Invalid(format!(
            "the quote is signed with {:?}, not RSASSA SHA-256: is the attestation key an RSASSA key?",
            other.algorithm()
        ))),
    }
}

fn open_hint(tcti: &Tcti) -> String {
    match tcti.device_path() {
        Some(path) => format!(
            "does {path} exist? is the tpm_crb or tpm_tis module loaded? pass ferry.tpm=device:/dev/tpm0 for \
             the raw device, or ferry.tpm=swtpm:host=H,port=P for a software TPM; libtss2-tcti-device must \
             be installed"
        ),
        None => format!(
            "is the TPM simulator running and listening there? the matching libtss2-tcti library \
             (libtss2-tcti-{}) must be installed",
            tcti.as_str().split(':').next().unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_digests() {
        let name = object_name(b"abc");
        assert_eq!(name.len(), 34);
        assert_eq!(hex(&name[..2]), "000b");
        assert_eq!(hex(&name[2..6]), "ba7816bf");
        assert_eq!(
            hex(&pcr_digest(&BTreeMap::new())),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let values = BTreeMap::from([(7u8, vec![1u8; 32]), (0, vec![0; 32])]);
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update([1u8; 32]);
        assert_eq!(pcr_digest(&values).to_vec(), h.finalize().to_vec());
    }

    #[test]
    fn pcr_selections() {
        assert!(pcr_selection(&[]).expect("empty").is_empty());
        let sel = pcr_selection(&[7, 0, 7]).expect("valid");
        assert_eq!(sel.get_selections().len(), 1);
        assert_eq!(sel.get_selections()[0].selected(), vec![PcrSlot::Slot0, PcrSlot::Slot7]);
        assert!(pcr_selection(&[24]).is_err());
    }

    #[test]
    fn bad_tcti_is_a_config_error() {
        let err = Tpm::open("tpm0").expect_err("invalid");
        assert!(matches!(err, TpmError::Config(_)), "{err}");
    }

    #[test]
    fn missing_device_says_what_to_check() {
        let err = Tpm::open("device:/nonexistent/tpm").expect_err("no device");
        let msg = err.to_string();
        assert!(msg.contains("cannot open the TPM at device:/nonexistent/tpm"), "{msg}");
        assert!(msg.contains("tpm_crb") && msg.contains("ferry.tpm="), "{msg}");
    }

    #[test]
    fn debug_redacts_the_private_blob() {
        let ak = AttestationKey { public: vec![1; 10], private: vec![0xab; 40], name: object_name(&[1; 10]) };
        let shown = format!("{ak:?}");
        assert!(!shown.contains("171") && !shown.contains("abab"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
