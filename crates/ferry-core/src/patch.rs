//! Changes to one layer (`node set` / `node unset`, `profile set` / `profile unset`).
//!
//! `set` replaces scalars and lists and merges maps by key (so `--tag rack=r1` keeps the
//! other tags); `unset` removes fields by path. Unsets apply first, so one patch can
//! clear a map and refill it.

use crate::model::{LayerKind, Settings};
use crate::CoreError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A field path as an administrator writes it, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A path inside [`Settings`], e.g. `["interfaces", "eth0", "mtu"]`.
    Settings(Vec<String>),
    /// The node's profile list.
    Profiles,
    /// The node's asset tag (a secret kept outside the settings).
    AssetTag,
}

const INTERFACE_FIELDS: &[&str] =
    &["mac", "ipv4", "netmask", "gateway", "ipv6", "ipv6_prefix", "vlan", "mtu", "primary"];
const SCALARS: &[&str] =
    &["comment", "image", "domain", "kernel", "kernel_args", "root", "identity", "tunnel_ttl_secs", "boot_asset_gate"];

/// The field names `unset` accepts, for help texts.
pub const FIELD_HELP: &str = "comment, image, domain, kernel, kernel-args, root, identity, tunnel-ttl, tags, tag.KEY, \
    netdev.NAME, netdev.NAME.FIELD (mac, ipv4, netmask, gateway, ipv6, ipv6-prefix, vlan, mtu, primary), \
    meta-data, meta-data.KEY, user-data, vendor-data, network-config, boot-asset-gate, tpm-pcrs, tpm-pcr.INDEX, \
    profiles, asset-tag";

/// Resolves `kernel-args`, `tag.rack`, `netdev.eth0.mtu`, `meta-data.region`, … to a
/// canonical field, or says which names exist.
pub fn parse_field(input: &str) -> Result<Field, CoreError> {
    let unknown = || CoreError::UnknownField(input.to_owned());
    let norm = input.trim().replace('-', "_");
    let mut parts: Vec<String> = norm.split('.').map(str::to_owned).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(unknown());
    }
    // Map keys and interface names keep their original spelling (dashes included).
    let original: Vec<&str> = input.trim().split('.').collect();
    let head = parts[0].clone();
    let path: Vec<String> = match head.as_str() {
        "profiles" | "profile" if parts.len() == 1 => return Ok(Field::Profiles),
        "asset_tag" | "asset" if parts.len() == 1 => return Ok(Field::AssetTag),
        "tunnel_ttl" | "tunnel_ttl_secs" | "ttl" if parts.len() == 1 => vec!["tunnel_ttl_secs".into()],
        s if SCALARS.contains(&s) && parts.len() == 1 => parts,
        "tag" | "tags" if parts.len() <= 2 => {
            let mut p = vec!["tags".to_owned()];
            p.extend(original.get(1).map(|s| s.to_string()));
            p
        }
        "tpm_pcr" | "tpm_pcrs" if parts.len() <= 2 => {
            let mut p = vec!["tpm_pcrs".to_owned()];
            p.extend(original.get(1).map(|s| s.to_string()));
            p
        }
        "netdev" | "interface" | "interfaces" if (2..=3).contains(&parts.len()) => {
            if let Some(f) = parts.get(2) {
                if !INTERFACE_FIELDS.contains(&f.as_str()) {
                    return Err(unknown());
                }
            }
            parts[0] = "interfaces".into();
            parts[1] = original[1].to_owned();
            parts
        }
        "meta_data" | "user_data" | "vendor_data" | "network_config" => {
            let mut p = vec!["cloud_init".to_owned(), head.clone()];
            match (head.as_str(), original.get(1)) {
                (_, None) if parts.len() == 1 => {}
                ("meta_data", Some(k)) if parts.len() == 2 => p.push(k.to_string()),
                _ => return Err(unknown()),
            }
            p
        }
        _ => return Err(unknown()),
    };
    Ok(Field::Settings(path))
}

/// A change to one layer's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettingsPatch {
    pub set: Settings,
    /// Paths inside the settings, canonical form (see [`parse_field`]).
    pub unset: Vec<Vec<String>>,
}

impl SettingsPatch {
    pub fn is_empty(&self) -> bool {
        self.set == Settings::default() && self.unset.is_empty()
    }
}

/// Applies a patch to a layer and validates the result.
pub fn apply(layer: &Settings, patch: &SettingsPatch, kind: LayerKind) -> Result<Settings, CoreError> {
    patch.set.validate(kind)?;
    let mut doc = serde_json::to_value(layer).unwrap_or(Value::Null);
    for path in &patch.unset {
        remove_path(&mut doc, path);
    }
    let set = serde_json::to_value(&patch.set).unwrap_or(Value::Null);
    overlay(&mut doc, set);
    let out: Settings = serde_json::from_value(doc).map_err(|e| CoreError::invalid("settings", "", e.to_string()))?;
    out.validate(kind)?;
    Ok(out)
}

fn remove_path(doc: &mut Value, path: &[String]) {
    match path {
        [] => {}
        [last] => {
            if let Value::Object(m) = doc {
                m.remove(last);
            }
        }
        [first, rest @ ..] => {
            if let Some(child) = doc.get_mut(first) {
                remove_path(child, rest);
            }
        }
    }
}

/// Objects merge by key; everything else (scalars, lists) is replaced.
fn overlay(doc: &mut Value, set: Value) {
    match (doc, set) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                match d.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => overlay(existing, v),
                    _ => {
                        d.insert(k, v);
                    }
                }
            }
        }
        (d, s) => *d = s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(v: Value) -> Settings {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn field_names() {
        let f = |s: &str| parse_field(s).unwrap();
        assert_eq!(f("kernel-args"), Field::Settings(vec!["kernel_args".into()]));
        assert_eq!(f("tag.rack-row"), Field::Settings(vec!["tags".into(), "rack-row".into()]));
        assert_eq!(
            f("netdev.eth-0.ipv6-prefix"),
            Field::Settings(vec!["interfaces".into(), "eth-0".into(), "ipv6_prefix".into()])
        );
        assert_eq!(
            f("meta-data.region"),
            Field::Settings(vec!["cloud_init".into(), "meta_data".into(), "region".into()])
        );
        assert_eq!(f("tunnel-ttl"), Field::Settings(vec!["tunnel_ttl_secs".into()]));
        assert_eq!(f("asset-tag"), Field::AssetTag);
        assert_eq!(f("profiles"), Field::Profiles);
        for bad in ["colour", "netdev.eth0.speed", "user-data.x", "tag.a.b", "", "comment.x", "netdev", "tag..x"] {
            assert!(parse_field(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn set_merges_maps_and_replaces_lists() {
        let layer = settings(
            json!({"kernel_args": ["a"], "tags": {"x": "1"}, "interfaces": {"eth0": {"mtu": 1500, "ipv4": "10.0.0.1"}}}),
        );
        let patch = SettingsPatch {
            set: settings(json!({"kernel_args": ["b"], "tags": {"y": "2"}, "interfaces": {"eth0": {"mtu": 9000}}})),
            unset: vec![],
        };
        let out = apply(&layer, &patch, LayerKind::Node).unwrap();
        assert_eq!(out.kernel_args, ["b"]);
        assert_eq!(out.tags.len(), 2);
        assert_eq!(out.interfaces["eth0"].mtu, Some(9000));
        assert!(out.interfaces["eth0"].ipv4.is_some());
    }

    #[test]
    fn unset_removes_paths_first() {
        let layer =
            settings(json!({"comment": "c", "tags": {"x": "1", "y": "2"}, "interfaces": {"eth0": {"mtu": 1500}}}));
        let unset = ["comment", "tag.x", "netdev.eth0.mtu"]
            .iter()
            .map(|f| match parse_field(f).unwrap() {
                Field::Settings(p) => p,
                _ => unreachable!(),
            })
            .collect();
        let out = apply(&layer, &SettingsPatch { set: Settings::default(), unset }, LayerKind::Node).unwrap();
        assert_eq!(out.comment, None);
        assert_eq!(out.tags.keys().collect::<Vec<_>>(), ["y"]);
        assert_eq!(out.interfaces["eth0"].mtu, None);
    }

    #[test]
    fn invalid_results_are_rejected() {
        let layer = settings(json!({"interfaces": {"eth0": {"primary": true}}}));
        let patch = SettingsPatch { set: settings(json!({"interfaces": {"ib0": {"primary": true}}})), unset: vec![] };
        assert!(apply(&layer, &patch, LayerKind::Node).is_err(), "two primaries");
    }
}
