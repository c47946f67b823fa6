//! The TPM factor's verdicts (`tpm.rs`).

use super::*;

#[test]
fn fingerprints_are_normalized_or_refused() {
    let hex = "AB".repeat(32);
    assert_eq!(normalize_fingerprint(&format!(" sha256:{hex}\n")), Some(format!("sha256:{}", "ab".repeat(32))));
    for bad in [hex.clone(), format!("sha1:{hex}"), format!("sha256:{}", &hex[2..]), format!("sha256:{}zz", &hex[4..])]
    {
        assert_eq!(normalize_fingerprint(&bad), None, "{bad}");
    }
}
