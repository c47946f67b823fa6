//! Server-side TPM 2.0 attestation, without a TPM and without I/O: parse what a node's
//! TPM produced, make a credential only that TPM can activate, verify its quote, and
//! check its endorsement key against the inventory and a CA bundle.
//!
//! Scope: RSA 2048 endorsement keys with the default EK template (what every TPM ships
//! and what `tpm2_createek -G rsa` makes) and RSA attestation keys signing with
//! RSASSA-PKCS1-v1_5 SHA-256; quotes over the SHA-256 PCR bank.

mod wire;

pub mod credential;
pub mod ek;
pub mod public;
pub mod quote;

pub use credential::{make_credential, Credential};
pub use ek::{CaBundle, EkIdentity};
pub use public::TpmPublic;
pub use quote::{check_pcr_policy, verify_quote, QuoteError, QuoteInfo};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("unsupported {0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
}

impl AttestError {
    pub(crate) fn malformed(what: &'static str, why: impl Into<String>) -> Self {
        AttestError::Malformed { what, why: why.into() }
    }
}

/// TPM_ALG_ID values used here (TPM 2.0 Part 2, table 9).
pub mod alg {
    pub const RSA: u16 = 0x0001;
    pub const AES: u16 = 0x0006;
    pub const SHA256: u16 = 0x000B;
    pub const ECC: u16 = 0x0023;
    pub const NULL: u16 = 0x0010;
    pub const RSASSA: u16 = 0x0014;
    pub const CFB: u16 = 0x0043;
}

/// A file of `testdata/`, found through the `CARGO_MANIFEST_DIR` cargo gives the running
/// test (a test binary reused from a shared target directory may have been compiled in
/// another checkout, whose path `env!` would have baked in).
#[cfg(test)]
pub(crate) fn testdata(name: &str) -> Vec<u8> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let path = format!("{dir}/testdata/{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("test fixture {path}: {e}"))
}
