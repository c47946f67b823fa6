//! Settings as the admin API receives them: a JSON `ferry_core::Settings` (a node's or a
//! profile's own layer) and `Settings::validate` for both layer kinds, what the server
//! derives from settings (PCR policy, identity policy, addresses, primary interface), a
//! `SettingsPatch` applied with `patch::apply` (node/profile `set`/`unset`), and the
//! store's round trip: settings are kept as JSON, so what serialises must read back.
#![no_main]

use ferry_core::model::LayerKind;
use ferry_core::patch::{apply, SettingsPatch};
use ferry_core::Settings;
use libfuzzer_sys::fuzz_target;

fn derived(s: &Settings) {
    let _ = s.pcr_policy();
    for (tag, tpm) in [(true, false), (false, false), (false, true)] {
        let policy = s.identity_policy(tag, tpm);
        let _ = (policy.is_weak(), policy.lacks_opt_in());
    }
    let _ = s.unique_addresses();
    let _ = s.primary_interface();
}

fn round_trip(s: &Settings) {
    let json = serde_json::to_string(s).expect("settings serialise");
    let back: Settings = serde_json::from_str(&json).expect("stored settings read back");
    for kind in [LayerKind::Node, LayerKind::Profile] {
        if s.validate(kind).is_ok() {
            assert!(back.validate(kind).is_ok(), "valid settings no longer valid after a round trip: {json}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = serde_json::from_slice::<Settings>(data) {
        for kind in [LayerKind::Node, LayerKind::Profile] {
            if let Err(e) = s.validate(kind) {
                drop(e.to_string());
            }
        }
        derived(&s);
        round_trip(&s);
        let patch = SettingsPatch { set: s.clone(), unset: Vec::new() };
        if let Ok(out) = apply(&Settings::default(), &patch, LayerKind::Node) {
            round_trip(&out);
        }
    }
    if let Ok(patch) = serde_json::from_slice::<SettingsPatch>(data) {
        let layer = patch.set.clone();
        for kind in [LayerKind::Node, LayerKind::Profile] {
            if let Ok(out) = apply(&layer, &patch, kind) {
                assert!(out.validate(kind).is_ok());
                derived(&out);
                round_trip(&out);
            }
        }
    }
});
