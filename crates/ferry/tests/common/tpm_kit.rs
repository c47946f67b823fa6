//! The TPM test kit shared by `tpm.rs` and `tpm_discovery.rs`: swtpm nodes, their
//! endorsement, and the protocol step by step as an attacker (or a careful node) runs
//! it. Included by `#[path]` from those two files only (it needs their `swtpm` module).

// Each including test uses a part of the kit.
#![allow(dead_code)]

use crate::common::cluster::Cluster;
use crate::common::raw::in_netns;
use crate::swtpm::{LocalCa, Swtpm};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ferry_agent::tpm::{AttestationKey, Endorsement, Tpm};
use ferry_api::enroll::{TpmCredentialChallenge, TpmProof};
use ferry_core::enroll::tpm_qualifying_data;
use ferry_core::NodeName;
use std::path::Path;

/// As root, a scratch directory and the local CA that manufactures the lab's TPMs.
pub fn tpm_lab() -> (tempfile::TempDir, LocalCa) {
    crate::common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new(&dir.path().join("ca"));
    (dir, ca)
}

/// A TPM manufactured by `ca` and running in node namespace `ns`.
pub fn node_tpm(dir: &Path, ca: &LocalCa, ns: &str) -> (Swtpm, String) {
    let mut tpm = Swtpm::manufacture(dir, ca);
    let tcti = in_netns(ns, || tpm.start());
    (tpm, tcti)
}

/// Reads a TPM's endorsement from inside its namespace.
pub fn endorsement(ns: &str, tcti: &str) -> Endorsement {
    in_netns(ns, || Tpm::open(tcti).expect("open TPM").endorsement().expect("endorsement"))
}

pub fn pem(ek: &Endorsement) -> String {
    let public = ferry_attest::TpmPublic::parse(&ek.public).expect("EK public");
    let id = ferry_attest::EkIdentity::from_tpm_public(&public).expect("EK identity");
    let b64 = B64.encode(id.spki_der());
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
}

pub fn fingerprint(ek: &Endorsement) -> String {
    let public = ferry_attest::TpmPublic::parse(&ek.public).unwrap();
    ferry_attest::EkIdentity::from_tpm_public(&public).unwrap().fingerprint()
}

/// A JSON POST to the provisioning listener, from the current (namespaced) thread.
pub fn post(path: &str, body: &serde_json::Value) -> (u16, String) {
    let reply = crate::common::raw::post(path, "", &body.to_string());
    (reply.status, reply.body)
}

/// The attacker's (and a careful node's) view of the protocol, step by step.
pub struct Session {
    pub mac: String,
    pub nonce: Vec<u8>,
    pub private: ferry_wg::PrivateKey,
    pub key: ferry_wg::PublicKey,
    /// The server key the challenge named.
    pub server_key: ferry_wg::PublicKey,
}

impl Session {
    pub fn start(mac: &str) -> Session {
        let (status, body) = post("/v1/enroll/challenge", &serde_json::json!({}));
        assert_eq!(status, 200, "challenge: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let nonce = B64.decode(v["nonce"].as_str().unwrap()).unwrap();
        let server_key = v["server_public_key"].as_str().unwrap().parse().unwrap();
        let private = ferry_wg::PrivateKey::generate();
        Session { mac: mac.into(), nonce, key: private.public_key(), private, server_key }
    }

    /// The same session with another WireGuard key.
    pub fn with_key(self, private: ferry_wg::PrivateKey) -> Session {
        Session { key: private.public_key(), private, ..self }
    }

    /// The asset-tag proof (v2) an agent holding `tag` would send for `node`.
    pub fn tag_proof(&self, tag: &str, node: &str) -> String {
        let node = NodeName::parse(node).unwrap();
        let shared = self.private.shared_secret(&self.server_key).unwrap();
        let ctx = ferry_core::enroll::ProofContext {
            nonce: &self.nonce,
            wg_public_key: &self.key.0,
            node: &node,
            server_public_key: &self.server_key.0,
        };
        B64.encode(ferry_core::enroll::asset_tag_proof(tag.as_bytes(), &shared, &ctx))
    }

    pub fn credential(&self, ek: &Endorsement, ak: &AttestationKey) -> Result<TpmCredentialChallenge, (u16, String)> {
        let req = serde_json::json!({
            "mac": self.mac,
            "public_key": self.key.to_base64(),
            "nonce": B64.encode(&self.nonce),
            "ek_public": B64.encode(&ek.public),
            "ek_certificate": ek.certificate.as_ref().map(|c| B64.encode(c)),
            "ak_public": B64.encode(&ak.public),
        });
        match post("/v1/enroll/tpm", &req) {
            (200, body) => Ok(serde_json::from_str(&body).unwrap()),
            other => Err(other),
        }
    }

    pub fn qualifying(&self, node: &str, key: &ferry_wg::PublicKey) -> [u8; 32] {
        tpm_qualifying_data(&self.nonce, &key.0, &NodeName::parse(node).unwrap())
    }

    pub fn enroll(&self, proof: &TpmProof) -> (u16, String) {
        self.enroll_with_tag(proof, None)
    }

    /// Enrolls with a TPM proof and, given `(tag, node)`, an asset-tag proof.
    pub fn enroll_with_tag(&self, proof: &TpmProof, tag: Option<(&str, &str)>) -> (u16, String) {
        let req = serde_json::json!({
            "mac": self.mac,
            "public_key": self.key.to_base64(),
            "nonce": B64.encode(&self.nonce),
            "proofs": {"tpm": proof, "asset_tag_v2": tag.map(|(t, n)| self.tag_proof(t, n))},
        });
        post("/v1/enroll", &req)
    }
}

/// TPM2_ActivateCredential on the server's challenge.
pub fn activate(tpm: &mut Tpm, ak: &AttestationKey, ch: &TpmCredentialChallenge) -> Vec<u8> {
    let blob = B64.decode(&ch.credential_blob).unwrap();
    let secret = B64.decode(&ch.encrypted_secret).unwrap();
    tpm.activate_credential(ak, &blob, &secret).expect("activate the credential")
}

pub fn proof(secret: &[u8], quote: &ferry_agent::tpm::Quote) -> TpmProof {
    TpmProof {
        secret: B64.encode(secret),
        attest: B64.encode(&quote.attest),
        signature: B64.encode(&quote.signature),
        pcr_values: quote.pcr_values.iter().map(|(i, v)| (*i, ferry_agent::tpm::hex(v))).collect(),
    }
}

pub fn tpm_config(ca: &LocalCa, discovery: bool) -> String {
    format!("[tpm]\nek_ca_bundle = \"{}\"\ndiscovery = {discovery}\n", ca.bundle().display())
}

pub fn agent_with_tpm(c: &Cluster, i: usize, tcti: &str) -> std::process::Output {
    c.agent(i, "fetch").args(["--tpm", tcti]).output().expect("agent")
}
