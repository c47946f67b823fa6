//! `ferry_core::patch::parse_field`: the field names of `ferry node unset` /
//! `ferry profile unset` (`kernel-args`, `tag.rack`, `netdev.eth0.mtu`, ...), then the
//! resolved path used as an `unset` in `patch::apply` on a layer that has every field.
#![no_main]

use ferry_core::model::LayerKind;
use ferry_core::patch::{apply, parse_field, Field, SettingsPatch};
use ferry_core::Settings;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const TOP_LEVEL: &[&str] = &[
    "comment", "image", "kernel", "kernel_args", "root", "identity", "tags", "interfaces", "cloud_init",
    "tunnel_ttl_secs", "boot_asset_gate", "tpm_pcrs",
];

fn full_layer() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| {
        serde_json::from_str(include_str!("../seeds/settings/node-full.json")).expect("seed settings parse")
    })
}

fuzz_target!(|data: &[u8]| {
    // Arguments arrive through clap, which refuses arguments that are not UTF-8.
    let Ok(input) = std::str::from_utf8(data) else { return };
    match parse_field(input) {
        Ok(Field::Settings(path)) => {
            assert!(!path.is_empty() && path.len() <= 3, "{path:?}");
            assert!(TOP_LEVEL.contains(&path[0].as_str()), "{input:?} resolved to {path:?}");
            let patch = SettingsPatch { set: Settings::default(), unset: vec![path] };
            let out = apply(full_layer(), &patch, LayerKind::Node).expect("unsetting a field keeps a valid layer valid");
            let _ = out;
        }
        Ok(Field::Profiles | Field::AssetTag) => {}
        Err(e) => drop(e.to_string()),
    }
});
