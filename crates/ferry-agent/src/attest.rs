//! The `tpm` factor in the state machine: `Challenged → Attested`.
//!
//! With a TPM configured (`ferry.tpm`, `--tpm`), between the nonce and the enrollment the
//! agent sends the EK (public part, certificate) and a fresh AK to `POST /v1/enroll/tpm`;
//! the server answers with a MakeCredential challenge bound to the AK's name and the PCRs
//! to quote. The agent activates the credential (which only the TPM holding both keys
//! can) and quotes the PCRs with qualifying data binding the nonce, its WireGuard key and
//! the node the server named; both go into the enrollment's `proofs.tpm`.
//!
//! The TPM sits behind [`TpmBackend`]: the real one ([`open`]) runs
//! [`crate::tpm::Tpm`] on a dedicated thread (tss-esapi's context is not `Send`), so the
//! EK primary is created once per run and the AK is reused across enrollment retries;
//! the unit tests use a fake.

use std::collections::BTreeMap;
use std::future::Future;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_api::enroll::{TpmCredentialChallenge, TpmCredentialRequest, TpmProof, TPM_CREDENTIAL_PATH};
use ferry_core::enroll::tpm_qualifying_data;
use ferry_core::NodeName;
use ferry_wg::PublicKey;

use crate::error::AgentError;
use crate::http::Transport;
use crate::machine::{Agent, State};
use crate::retry::Deadline;
use crate::tcti::Tcti;
use crate::tunnel::TunnelFactory;

/// PCRs a TPM 2.0 has (PC Client: 0-23).
pub const PCR_COUNT: u8 = 24;

/// What the credential request carries about the TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TpmIdentity {
    /// Marshalled `TPMT_PUBLIC` of the EK.
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER), if the TPM has one.
    pub ek_certificate: Option<Vec<u8>>,
    /// Marshalled `TPMT_PUBLIC` of the AK.
    pub ak_public: Vec<u8>,
}

/// The server's credential challenge, decoded, with the quote's qualifying data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialChallenge {
    pub credential_blob: Vec<u8>,
    pub encrypted_secret: Vec<u8>,
    pub qualifying: [u8; 32],
    pub pcrs: Vec<u8>,
}

/// The TPM's answer: the activated secret and the quote.
pub(crate) struct TpmAnswer {
    /// Never logged.
    pub secret: Vec<u8>,
    pub attest: Vec<u8>,
    pub signature: Vec<u8>,
    pub pcr_values: BTreeMap<u8, Vec<u8>>,
}

/// The evidence an enrollment carries: the proof, and the node name it is bound to.
pub(crate) struct TpmEvidence {
    pub node: NodeName,
    pub proof: TpmProof,
}

/// The agent's view of a TPM.
#[async_trait]
pub(crate) trait TpmBackend: Send {
    /// The EK and an AK; the AK is created on the first call and kept for [`Self::prove`].
    async fn identity(&mut self) -> Result<TpmIdentity, AgentError>;
    /// Activates the credential with the AK and quotes the PCRs.
    async fn prove(&mut self, challenge: CredentialChallenge) -> Result<TpmAnswer, AgentError>;
}

impl<T: Transport, F: TunnelFactory> Agent<T, F> {
    /// `Challenged → Attested`; `Start` after a back-off; `Failed` on refusal, a TPM
    /// failure or a malformed challenge.
    pub(crate) async fn attest(&mut self, nonce: String, nonce_bytes: Vec<u8>, server_key: Option<PublicKey>) -> State {
        let Some(mut tpm) = self.tpm.take() else {
            return State::Failed(AgentError::Tpm("no TPM is open".into()));
        };
        let next = self.attest_with(tpm.as_mut(), nonce, nonce_bytes, server_key).await;
        self.tpm = Some(tpm);
        next
    }

    async fn attest_with(
        &mut self,
        tpm: &mut dyn TpmBackend,
        nonce: String,
        nonce_bytes: Vec<u8>,
        server_key: Option<PublicKey>,
    ) -> State {
        let identity = match within(&self.deadline, "read the endorsement key", tpm.identity()).await {
            Ok(i) => i,
            Err(e) => return State::Failed(e),
        };
        let request = TpmCredentialRequest {
            mac: self.mac.to_string(),
            public_key: self.public_key.to_base64(),
            nonce: nonce.clone(),
            ek_public: STANDARD.encode(&identity.ek_public),
            ek_certificate: identity.ek_certificate.as_ref().map(|c| STANDARD.encode(c)),
            ak_public: STANDARD.encode(&identity.ak_public),
        };
        tracing::info!(
            mac = %self.mac,
            ek_certificate = identity.ek_certificate.is_some(),
            "asking {} for a TPM credential",
            self.server().base
        );
        let challenge: TpmCredentialChallenge =
            match self.post(TPM_CREDENTIAL_PATH, Some(&request), "TPM credential request").await {
                Ok(c) => c,
                Err(next) => return next,
            };
        let (node, challenge) = match decode(challenge, &nonce_bytes, &self.public_key.0) {
            Ok(decoded) => decoded,
            Err(e) => return State::Failed(e),
        };
        let pcrs = challenge.pcrs.clone();
        let answer = match within(&self.deadline, "activate the credential and quote", tpm.prove(challenge)).await {
            Ok(a) => a,
            Err(e) => return State::Failed(e),
        };
        tracing::info!(node = %node, pcrs = ?pcrs, "TPM credential activated, PCRs quoted");
        let proof = TpmProof {
            secret: STANDARD.encode(&answer.secret),
            attest: STANDARD.encode(&answer.attest),
            signature: STANDARD.encode(&answer.signature),
            pcr_values: answer.pcr_values.iter().map(|(&i, v)| (i, hex(v))).collect(),
        };
        State::Attested { nonce, nonce_bytes, server_key, evidence: Box::new(TpmEvidence { node, proof }) }
    }
}

/// Checks and decodes the server's challenge; computes the quote's qualifying data.
pub fn decode(
    c: TpmCredentialChallenge,
    nonce: &[u8],
    wg_public_key: &[u8; 32],
) -> Result<(NodeName, CredentialChallenge), AgentError> {
    let bad = |why: String| AgentError::Protocol(format!("the TPM credential challenge: {why}"));
    let node = NodeName::parse(&c.node).map_err(|e| bad(format!("invalid node name {:?}: {e}", c.node)))?;
    let b64 = |what: &str, s: &str| STANDARD.decode(s).map_err(|e| bad(format!("{what} is not base64: {e}")));
    if let Some(p) = c.pcrs.iter().find(|&&p| p >= PCR_COUNT) {
        return Err(bad(format!("PCR {p} does not exist (a TPM has PCRs 0-{})", PCR_COUNT - 1)));
    }
    let challenge = CredentialChallenge {
        credential_blob: b64("credential_blob", &c.credential_blob)?,
        encrypted_secret: b64("encrypted_secret", &c.encrypted_secret)?,
        qualifying: tpm_qualifying_data(nonce, wg_public_key, &node),
        pcrs: c.pcrs,
    };
    Ok((node, challenge))
}

/// Awaits a TPM step, bounded by the agent's `--timeout`.
async fn within<R>(
    deadline: &Deadline,
    what: &str,
    step: impl Future<Output = Result<R, AgentError>>,
) -> Result<R, AgentError> {
    tokio::time::timeout(deadline.remaining(), step).await.unwrap_or_else(|_| {
        Err(AgentError::Tpm(format!(
            "the TPM did not {what} within the --timeout of {} s: is the TPM busy or hung?",
            deadline.total().as_secs()
        )))
    })
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens the TPM behind `tcti` on its own thread.
#[cfg(feature = "tpm")]
pub(crate) async fn open(tcti: &Tcti) -> Result<Box<dyn TpmBackend>, AgentError> {
    Ok(Box::new(thread::TpmThread::open(tcti.clone()).await?))
}

/// Without the `tpm` feature, configuration already refuses `ferry.tpm`.
#[cfg(not(feature = "tpm"))]
pub(crate) async fn open(tcti: &Tcti) -> Result<Box<dyn TpmBackend>, AgentError> {
    Err(AgentError::Config(format!("cannot use the TPM at {tcti}: {}", crate::config::NO_TPM_SUPPORT)))
}

#[cfg(feature = "tpm")]
mod thread {
    use std::sync::mpsc;
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::sync::oneshot;

    use super::{CredentialChallenge, TpmAnswer, TpmBackend, TpmIdentity};
    use crate::error::AgentError;
    use crate::tcti::Tcti;
    use crate::tpm::{AttestationKey, Tpm, TpmError};

    type Job = Box<dyn FnOnce(&mut Tpm) + Send>;

    /// How long dropping a [`TpmThread`] waits for the thread to close the TPM.
    const CLOSE_WAIT: Duration = Duration::from_secs(5);

    /// A [`Tpm`] on a dedicated thread. Dropping it ends the thread, which flushes the EK
    /// and closes the TPM; the drop waits for that (up to [`CLOSE_WAIT`]), so a raw TPM
    /// is free for the next program as soon as the agent lets go of it.
    pub(crate) struct TpmThread {
        jobs: Option<mpsc::Sender<Job>>,
        closed: Option<mpsc::Receiver<()>>,
        identity: Option<(TpmIdentity, AttestationKey)>,
    }

    impl Drop for TpmThread {
        fn drop(&mut self) {
            drop(self.jobs.take());
            if let Some(closed) = self.closed.take() {
                if let Err(mpsc::RecvTimeoutError::Timeout) = closed.recv_timeout(CLOSE_WAIT) {
                    tracing::warn!("the TPM thread did not close the TPM within {} s", CLOSE_WAIT.as_secs());
                }
            }
        }
    }

    impl TpmThread {
        pub(crate) async fn open(tcti: Tcti) -> Result<Self, AgentError> {
            let (jobs, queue) = mpsc::channel::<Job>();
            let (closing, closed) = mpsc::channel::<()>();
            let (opened, open_result) = oneshot::channel();
            std::thread::Builder::new()
                .name("ferry-tpm".into())
                .spawn(move || {
                    match Tpm::open(tcti.as_str()) {
                        Ok(mut tpm) => {
                            let _ = opened.send(Ok(()));
                            while let Ok(job) = queue.recv() {
                                job(&mut tpm);
                            }
                        }
                        Err(e) => {
                            let _ = opened.send(Err(e));
                        }
                    }
                    let _ = closing.send(());
                })
                .map_err(|e| AgentError::io("cannot start the TPM thread", e))?;
            open_result.await.map_err(|_| stopped())??;
            Ok(TpmThread { jobs: Some(jobs), closed: Some(closed), identity: None })
        }

        /// Runs `f` on the TPM thread.
        async fn call<R: Send + 'static>(
            &mut self,
            f: impl FnOnce(&mut Tpm) -> Result<R, TpmError> + Send + 'static,
        ) -> Result<R, AgentError> {
            let (reply, answer) = oneshot::channel();
            self.jobs
                .as_ref()
                .ok_or_else(stopped)?
                .send(Box::new(move |tpm| {
                    let _ = reply.send(f(tpm));
                }))
                .map_err(|_| stopped())?;
            Ok(answer.await.map_err(|_| stopped())??)
        }
    }

    fn stopped() -> AgentError {
        AgentError::Tpm("the TPM thread stopped unexpectedly (see the errors above)".into())
    }

    #[async_trait]
    impl TpmBackend for TpmThread {
        async fn identity(&mut self) -> Result<TpmIdentity, AgentError> {
            if let Some((identity, _)) = &self.identity {
                return Ok(identity.clone());
            }
            let (ek, ak) = self.call(|tpm| Ok((tpm.endorsement()?, tpm.create_ak()?))).await?;
            let identity =
                TpmIdentity { ek_public: ek.public, ek_certificate: ek.certificate, ak_public: ak.public.clone() };
            self.identity = Some((identity.clone(), ak));
            Ok(identity)
        }

        async fn prove(&mut self, c: CredentialChallenge) -> Result<TpmAnswer, AgentError> {
            let Some((_, ak)) = self.identity.clone() else {
                return Err(AgentError::Tpm("no attestation key yet: read the identity first".into()));
            };
            self.call(move |tpm| {
                let secret = tpm.activate_credential(&ak, &c.credential_blob, &c.encrypted_secret)?;
                let quote = tpm.quote(&ak, &c.qualifying, &c.pcrs)?;
                Ok(TpmAnswer { secret, attest: quote.attest, signature: quote.signature, pcr_values: quote.pcr_values })
            })
            .await
        }
    }

    impl From<TpmError> for AgentError {
        fn from(e: TpmError) -> Self {
            match e {
                TpmError::Config(why) => AgentError::Config(why),
                other => AgentError::Tpm(other.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_checked() {
        let ok = TpmCredentialChallenge {
            node: "n1".into(),
            credential_blob: STANDARD.encode([1, 2]),
            encrypted_secret: STANDARD.encode([3]),
            pcrs: vec![0, 7, 23],
        };
        let (node, c) = decode(ok.clone(), &[9; 32], &[5; 32]).expect("valid");
        assert_eq!(node.as_str(), "n1");
        assert_eq!((c.credential_blob, c.encrypted_secret), (vec![1, 2], vec![3]));
        assert_eq!(c.qualifying, tpm_qualifying_data(&[9; 32], &[5; 32], &node));
        for bad in [
            TpmCredentialChallenge { node: "Bad Name".into(), ..ok.clone() },
            TpmCredentialChallenge { pcrs: vec![24], ..ok.clone() },
            TpmCredentialChallenge { credential_blob: "%%".into(), ..ok.clone() },
            TpmCredentialChallenge { encrypted_secret: "%%".into(), ..ok },
        ] {
            let err = decode(bad, &[9; 32], &[5; 32]).expect_err("invalid");
            assert_eq!(err.exit_code(), 1, "{err}");
            assert!(err.to_string().contains("TPM credential challenge"), "{err}");
        }
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
