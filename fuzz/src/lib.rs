//! Fixtures shared by the fuzz targets (see `docs/fuzzing.md`).

use std::sync::OnceLock;

use ferry_attest::{CaBundle, TpmPublic};

/// swtpm's EK and AK (`TPM2B_PUBLIC`, as tpm2-tools writes them), the EK certificate and
/// the CAs that issued it: the same fixtures as ferry-attest's unit tests.
pub mod fixtures {
    pub const EK_PUB: &[u8] = include_bytes!("../../crates/ferry-attest/testdata/ek.pub");
    pub const AK_PUB: &[u8] = include_bytes!("../../crates/ferry-attest/testdata/ak.pub");
    pub const EK_DER: &[u8] = include_bytes!("../../crates/ferry-attest/testdata/ek.der");
    pub const CA_ISSUER_PEM: &[u8] = include_bytes!("../../crates/ferry-attest/testdata/ca-issuer.pem");
    pub const CA_ROOT_PEM: &[u8] = include_bytes!("../../crates/ferry-attest/testdata/ca-root.pem");
}

/// The clock for certificate checks: fixed (2030, inside the fixtures' validity) so that
/// a crash input does the same thing on every run.
pub const NOW: i64 = 1_900_000_000;

/// The swtpm attestation key, parsed once.
pub fn ak() -> &'static TpmPublic {
    static AK: OnceLock<TpmPublic> = OnceLock::new();
    AK.get_or_init(|| {
        let inner = ferry_attest::public::strip_tpm2b(fixtures::AK_PUB).expect("AK fixture");
        TpmPublic::parse(inner).expect("AK fixture")
    })
}

/// The swtpm endorsement key, parsed once.
pub fn ek() -> &'static TpmPublic {
    static EK: OnceLock<TpmPublic> = OnceLock::new();
    EK.get_or_init(|| {
        let inner = ferry_attest::public::strip_tpm2b(fixtures::EK_PUB).expect("EK fixture");
        TpmPublic::parse(inner).expect("EK fixture")
    })
}

/// A server's `[tpm] ek_ca_bundle`: the root and the intermediate that signed the EK
/// certificate fixture.
pub fn ca_bundle() -> &'static CaBundle {
    static CA: OnceLock<CaBundle> = OnceLock::new();
    CA.get_or_init(|| {
        CaBundle::from_pem(&[fixtures::CA_ROOT_PEM, fixtures::CA_ISSUER_PEM].concat()).expect("CA fixtures")
    })
}

/// A deterministic RNG for MakeCredential (the server uses `OsRng`): a crash input must
/// replay exactly.
pub fn rng() -> rand::rngs::StdRng {
    rand::SeedableRng::seed_from_u64(0x6665_7272_79)
}
