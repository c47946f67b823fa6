//! The node agent's kernel command line (`/proc/cmdline`, which came from the boot
//! loader, i.e. from an iPXE or GRUB script fetched over plain HTTP):
//! `ferry_agent::cmdline::parse` on the bytes decoded exactly as `FerryParams::read` does
//! (lossy UTF-8), `FerryParams::from_params`, then the parsers `Config::build` applies to
//! the values: the pinned WireGuard key, the node name and the TPM's TCTI string.
//! (`ServerUrl::parse` and the `ferry.tls=` pin parser live in the agent's private
//! `config` module and are not reached; see docs/fuzzing.md.)
#![no_main]

use ferry_agent::cmdline::{parse, FerryParams};
use ferry_agent::tcti::Tcti;
use ferry_core::NodeName;
use ferry_wg::PublicKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let params = parse(&line);
    for p in &params {
        // Quotes group words and are removed; the name ends at the first '='.
        assert!(!p.name.contains('"') && !p.value.as_deref().unwrap_or("").contains('"'), "{p:?}");
        assert!(!p.name.contains('='), "{p:?}");
        assert!(p.value.is_some() || (!p.name.is_empty() && p.name != "--"), "{p:?}");
    }
    let ferry = FerryParams::from_params(&params);
    for s in &ferry.servers {
        assert!(!s.is_empty() && s.trim() == s && !s.contains(','), "{s:?}");
    }
    if let Some(key) = &ferry.pubkey {
        let _ = key.parse::<PublicKey>();
    }
    if let Some(node) = &ferry.node {
        let _ = NodeName::parse(node);
    }
    if let Some(tcti) = &ferry.tpm {
        if let Ok(t) = Tcti::parse(tcti) {
            let _ = (t.to_string(), t.device_path());
        }
    }
});
