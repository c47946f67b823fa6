//! `ferry_attest::quote::parse_quote`: the `TPMS_ATTEST` of a node's TPM2_Quote
//! (base64-decoded from the enrollment's TPM proof). The server parses it only after the
//! AK's signature verified, but the parser must not trust the bytes either way.
#![no_main]

use ferry_attest::quote::parse_quote;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = parse_quote(data) {
        assert!(q.selection.len() <= 16);
        assert!(q.extra_data.len() < data.len() && q.pcr_digest.len() < data.len());
    }
});
