//! `ferry_attest::quote::parse_quote`: the `TPMS_ATTEST` of a node's TPM2_Quote
//! (base64-decoded from the enrollment's TPM proof). The server parses it only after the
//! AK's signature verified, but the parser must not trust the bytes either way.
#![no_main]

use ferry_attest::quote::{parse_quote, PCR_SELECT_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = parse_quote(data) {
        assert!(q.selection.len() <= 16);
        // No TPM selects beyond PCR_SELECT_MAX bytes, so no index wraps past 255.
        let bits = 8 * u16::from(PCR_SELECT_MAX);
        assert!(q.selection.iter().all(|(_, idx)| idx.iter().all(|i| u16::from(*i) < bits)), "{:?}", q.selection);
        assert!(q.extra_data.len() < data.len() && q.pcr_digest.len() < data.len());
    }
});
