//! The inventory model. `Settings` is what both a profile and a node may carry; a node's
//! effective settings are its profiles' settings merged in order, then its own
//! (see [`crate::merge`]).

use crate::net::{check_interface_name, check_netmask, MacAddr};
use crate::{CoreError, NodeName, ProfileName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Largest template or document a profile/node may carry (user-data, vendor-data,
/// network-config). cloud-init documents are small; this stops accidental binaries.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Bounds for a tunnel's time to live, in seconds.
pub const TUNNEL_TTL_RANGE: std::ops::RangeInclusive<u64> = 5..=86_400;

/// How the node's root file system is provided. SELinux needs `tmpfs`: ramfs has no
/// extended attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootMode {
    Initramfs,
    Ramfs,
    Tmpfs,
}

impl std::str::FromStr for RootMode {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| CoreError::invalid("root", s, "expected initramfs, ramfs or tmpfs"))
    }
}

/// A factor a node must prove at enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityFactor {
    Network,
    AssetTag,
    Tpm,
}

impl std::fmt::Display for IdentityFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdentityFactor::Network => "network",
            IdentityFactor::AssetTag => "asset-tag",
            IdentityFactor::Tpm => "tpm",
        })
    }
}

impl std::str::FromStr for IdentityFactor {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| CoreError::invalid("identity factor", s, "expected network, asset-tag or tpm"))
    }
}

/// One network interface. Every field is optional so that a profile can carry the
/// shared parts (netmask, gateway, MTU) and the node the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Interface {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netmask: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_prefix: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<bool>,
}

/// cloud-init material. Templates are rendered per node at delivery time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudInit {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta_data: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
}

impl CloudInit {
    fn is_empty(&self) -> bool {
        *self == CloudInit::default()
    }
}

/// What a profile or a node sets. In a *layer* (one profile's or one node's own
/// settings) list entries and map keys written `~x` remove `x` inherited from earlier
/// layers; in merged settings no `~` remains.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The DNS domain of the node's name: its FQDN is `NAME.DOMAIN` (SSH host
    /// certificates name it; see [`crate::ssh`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// A kernel version (`6.1.0-28-amd64`) or an absolute path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<RootMode>,
    /// Factors (`network`, `asset-tag`, `tpm`; `~x` in a layer removes one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identity: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub interfaces: BTreeMap<String, Interface>,
    #[serde(skip_serializing_if = "CloudInit::is_empty")]
    pub cloud_init: CloudInit,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_ttl_secs: Option<u64>,
    /// Warewulf-compatible gating: boot artifacts only for a request carrying the node's
    /// asset tag (iPXE `${asset}`). Weak (the tag travels in clear); secrets never come
    /// from images anyway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_asset_gate: Option<bool>,
    /// The `tpm` factor's PCR policy: SHA-256 bank index (`"7"`) → expected value (hex),
    /// or [`PCR_TO_LEARN`]: quote it, no value approved yet (enrollment is refused until
    /// `ferry node tpm learn` pins one). Empty: the TPM proves identity only.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tpm_pcrs: BTreeMap<String, String>,
}

/// A profile: named settings, optionally inheriting from parent profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: ProfileName,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<ProfileName>,
    #[serde(default)]
    pub settings: Settings,
}

/// A node: its ordered profiles and its own settings. The asset tag is not here: it is
/// a secret the store keeps sealed and only reports as set or unset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: NodeName,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<ProfileName>,
    #[serde(default)]
    pub settings: Settings,
}

/// Which kind of layer is being validated: profiles may not carry per-node identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Profile,
    Node,
}

fn check_text(kind: &'static str, s: &str, max: usize) -> Result<(), CoreError> {
    if s.len() > max {
        return Err(CoreError::invalid(kind, truncate(s), format!("longer than {max} bytes")));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
        return Err(CoreError::invalid(kind, truncate(s), "contains control characters"));
    }
    Ok(())
}

/// A single-line token that ends up in kernel command lines and boot scripts, where a
/// space, quote or newline would inject something else.
fn check_token(kind: &'static str, s: &str) -> Result<(), CoreError> {
    if s.is_empty() || s.len() > 512 {
        return Err(CoreError::invalid(kind, truncate(s), "must be 1 to 512 characters"));
    }
    if let Some(c) =
        s.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '`' | '$' | '\\' | ';'))
    {
        return Err(CoreError::invalid(kind, s, format!("character {c:?} not allowed")));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A map key (tag, meta-data): printable, no '~' except the leading removal marker.
fn check_key(kind: &'static str, key: &str) -> Result<(), CoreError> {
    let bare = key.strip_prefix('~').unwrap_or(key);
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    if bare.is_empty() || bare.len() > 128 || !bare.chars().all(ok) {
        return Err(CoreError::invalid(
            kind,
            key,
            "keys are 1 to 128 characters of letters, digits, '-', '_', '.', '/'",
        ));
    }
    Ok(())
}

impl Interface {
    fn validate(&self, name: &str, layer: LayerKind) -> Result<(), CoreError> {
        check_interface_name(name)?;
        if let Some(mask) = self.netmask {
            check_netmask(mask)?;
        }
        if let Some(p) = self.ipv6_prefix {
            if p > 128 {
                return Err(CoreError::invalid("IPv6 prefix", p.to_string(), "must be 0 to 128"));
            }
        }
        if let Some(v) = self.vlan {
            if !(1..=4094).contains(&v) {
                return Err(CoreError::invalid("VLAN", v.to_string(), "must be 1 to 4094"));
            }
        }
        if let Some(m) = self.mtu {
            if !(576..=65_535).contains(&m) {
                return Err(CoreError::invalid("MTU", m.to_string(), "must be 576 to 65535"));
            }
        }
        if layer == LayerKind::Profile && (self.mac.is_some() || self.ipv4.is_some() || self.ipv6.is_some()) {
            return Err(CoreError::invalid(
                "profile interface",
                name,
                "MAC and IP addresses identify one node: set them on the node, not a profile",
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// Validates one layer (a profile's or node's own settings).
    pub fn validate(&self, layer: LayerKind) -> Result<(), CoreError> {
        if let Some(c) = &self.comment {
            check_text("comment", c, 1024)?;
            if c.contains('\n') {
                return Err(CoreError::invalid("comment", truncate(c), "must be one line"));
            }
        }
        if let Some(i) = &self.image {
            check_image_name(i)?;
        }
        if let Some(d) = &self.domain {
            crate::ssh::check_domain(d)?;
        }
        if let Some(k) = &self.kernel {
            check_token("kernel", k)?;
        }
        for a in &self.kernel_args {
            check_token("kernel argument", a)?;
        }
        for f in &self.identity {
            f.strip_prefix('~').unwrap_or(f).parse::<IdentityFactor>()?;
        }
        for (k, v) in &self.tags {
            check_key("tag", k)?;
            check_text("tag value", v, 1024)?;
        }
        for (k, v) in &self.tpm_pcrs {
            let index = k.strip_prefix('~').unwrap_or(k);
            if !matches!(index.parse::<u8>(), Ok(i) if i < 24 && i.to_string() == index) {
                return Err(CoreError::invalid("TPM PCR index", k, "must be 0 to 23"));
            }
            let sha256_hex = v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
            if !k.starts_with('~') && !sha256_hex && v != PCR_TO_LEARN {
                return Err(CoreError::invalid(
                    "TPM PCR value",
                    truncate(v),
                    "must be a SHA-256 value: 64 hex digits (tpm2_pcrread sha256:7), or `learn` to quote it and \
                     pin the value later with ferry node tpm learn",
                ));
            }
        }
        let mut primaries = 0;
        for (name, iface) in &self.interfaces {
            match name.strip_prefix('~') {
                Some(bare) => check_interface_name(bare)?,
                None => iface.validate(name, layer)?,
            }
            primaries += usize::from(iface.primary == Some(true));
        }
        if primaries > 1 {
            return Err(CoreError::invalid("interfaces", "primary", "at most one interface may be primary"));
        }
        for k in self.cloud_init.meta_data.keys() {
            check_key("meta-data key", k)?;
        }
        let meta_len = serde_json::to_string(&self.cloud_init.meta_data).map(|s| s.len()).unwrap_or(usize::MAX);
        if meta_len > MAX_DOCUMENT_BYTES {
            return Err(CoreError::invalid("meta-data", "", format!("longer than {MAX_DOCUMENT_BYTES} bytes")));
        }
        for (kind, doc) in [
            ("user-data", &self.cloud_init.user_data),
            ("vendor-data", &self.cloud_init.vendor_data),
            ("network-config", &self.cloud_init.network_config),
        ] {
            if let Some(d) = doc {
                check_text(kind, d, MAX_DOCUMENT_BYTES)?;
            }
        }
        if let Some(ttl) = self.tunnel_ttl_secs {
            if !TUNNEL_TTL_RANGE.contains(&ttl) {
                return Err(CoreError::invalid(
                    "tunnel TTL",
                    format!("{ttl}s"),
                    format!("must be {} to {} seconds", TUNNEL_TTL_RANGE.start(), TUNNEL_TTL_RANGE.end()),
                ));
            }
        }
        Ok(())
    }

    /// The addresses that identify this node and must be unique across all nodes.
    pub fn unique_addresses(&self) -> Vec<(AddressKind, String)> {
        let mut out = Vec::new();
        for iface in self.interfaces.values() {
            if let Some(m) = iface.mac {
                out.push((AddressKind::Mac, m.to_string()));
            }
            if let Some(ip) = iface.ipv4 {
                out.push((AddressKind::Ip, ip.to_string()));
            }
            if let Some(ip) = iface.ipv6 {
                out.push((AddressKind::Ip, ip.to_string()));
            }
        }
        out
    }

    /// The primary interface: the one marked primary, else the first by name.
    pub fn primary_interface(&self) -> Option<(&str, &Interface)> {
        self.interfaces
            .iter()
            .find(|(_, i)| i.primary == Some(true))
            .or_else(|| self.interfaces.iter().next())
            .map(|(n, i)| (n.as_str(), i))
    }

    /// The merged PCR policy's pinned values, index → expected SHA-256 value (PCRs still
    /// to learn are not in it: see [`Settings::unlearned_pcrs`]).
    pub fn pcr_policy(&self) -> BTreeMap<u8, Vec<u8>> {
        self.tpm_pcrs
            .iter()
            .filter(|(_, v)| v.as_str() != PCR_TO_LEARN)
            .filter_map(|(k, v)| Some((k.parse().ok()?, decode_hex(v)?)))
            .collect()
    }

    /// Every PCR the merged policy selects (pinned or to learn): what a quote covers.
    pub fn pcr_selection(&self) -> Vec<u8> {
        let mut all: Vec<u8> = self.tpm_pcrs.keys().filter_map(|k| k.parse().ok()).collect();
        all.sort_unstable();
        all
    }

    /// The PCRs the merged policy selects with no value approved yet ([`PCR_TO_LEARN`]).
    pub fn unlearned_pcrs(&self) -> Vec<u8> {
        let mut to_learn: Vec<u8> = self
            .tpm_pcrs
            .iter()
            .filter(|(_, v)| v.as_str() == PCR_TO_LEARN)
            .filter_map(|(k, _)| k.parse().ok())
            .collect();
        to_learn.sort_unstable();
        to_learn
    }

    /// The identity policy in effect (of merged settings), with ferry's default when
    /// none is configured (see [`crate::identity::Policy::new`]).
    pub fn identity_policy(&self, has_asset_tag: bool, has_registered_tpm: bool) -> crate::identity::Policy {
        crate::identity::Policy::new(&self.identity, has_asset_tag, has_registered_tpm)
    }
}

/// The value of a selected PCR whose expected value is not known yet (`--tpm-pcr 7`,
/// `--tpm-pcrs 4,7`): the TPM quotes it, the server records the verified values, and
/// enrollment is refused until an admin approves them (`ferry node tpm learn`).
pub const PCR_TO_LEARN: &str = "learn";

/// Most bytes a template secret may hold (a munge key is 1 KiB, a TLS key a few).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// A secret's name: what templates pass to `secret()`.
pub fn check_secret_name(name: &str) -> Result<(), CoreError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CoreError::invalid(
            "secret name",
            truncate(name),
            "1 to 128 characters: letters, digits, '.', '_', '-', starting with a letter or digit",
        ))
    }
}

/// Even-length hex (either case) to bytes.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    // from_str_radix alone would take "+f" as a pair.
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Which unique index an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKind {
    Mac,
    Ip,
}

impl AddressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressKind::Mac => "mac",
            AddressKind::Ip => "ip",
        }
    }
}

/// Checks that no address appears twice within one node (two interfaces, same MAC).
pub fn check_node_addresses(node: &Node) -> Result<(), CoreError> {
    let mut seen = std::collections::HashSet::new();
    for (kind, value) in node.settings.unique_addresses() {
        if !seen.insert((kind, value.clone())) {
            return Err(CoreError::invalid(
                if kind == AddressKind::Mac { "MAC address" } else { "IP address" },
                value,
                format!("used twice on node {}", node.name),
            ));
        }
    }
    Ok(())
}

/// Checks an image name: it becomes a URL path segment and a file-system name.
pub fn check_image_name(s: &str) -> Result<(), CoreError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if s.is_empty() || s.len() > 64 || !s.chars().all(ok) || s.starts_with('.') {
        return Err(CoreError::invalid(
            "image name",
            s,
            "must be 1 to 64 characters of letters, digits, '.', '_', '-', not starting with '.'",
        ));
    }
    Ok(())
}

/// Checks an asset tag before it is sealed. The error never contains the value: it is
/// a secret, and errors end up in terminals and logs.
pub fn check_asset_tag(tag: &str) -> Result<(), CoreError> {
    if tag.is_empty() || tag.len() > 256 {
        return Err(CoreError::invalid("asset tag", "<redacted>", "must be 1 to 256 bytes"));
    }
    if tag.chars().any(|c| c.is_control()) {
        return Err(CoreError::invalid("asset tag", "<redacted>", "must not contain control characters or newlines"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(json: serde_json::Value) -> Interface {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn validation_rejects_bad_values() {
        let mut s = Settings { kernel_args: vec!["console=ttyS0".into()], ..Default::default() };
        assert!(s.validate(LayerKind::Node).is_ok());
        s.kernel_args = vec!["a b".into()];
        assert!(s.validate(LayerKind::Node).is_err());
        let s = Settings { identity: vec!["fingerprint".into()], ..Default::default() };
        assert!(s.validate(LayerKind::Node).is_err());
        let mut s = Settings::default();
        s.interfaces.insert("eth0".into(), iface(serde_json::json!({"mtu": 10})));
        assert!(s.validate(LayerKind::Node).is_err());
        let mut s = Settings::default();
        s.interfaces.insert("eth0".into(), iface(serde_json::json!({"mac": "52:54:00:00:00:01"})));
        assert!(s.validate(LayerKind::Node).is_ok());
        assert!(s.validate(LayerKind::Profile).is_err(), "profiles must not carry MACs");
        let s = Settings { tunnel_ttl_secs: Some(4), ..Default::default() };
        assert!(s.validate(LayerKind::Node).is_err());
        assert!(serde_json::from_value::<Interface>(serde_json::json!({"mac": "nope"})).is_err());
        assert!(serde_json::from_value::<Settings>(serde_json::json!({"colour": "red"})).is_err());
    }

    #[test]
    fn pcr_policy_is_validated_and_decoded() {
        let pcrs = |k: &str, v: &str| Settings {
            tpm_pcrs: [(k.to_owned(), v.to_owned())].into_iter().collect(),
            ..Default::default()
        };
        let good = pcrs("7", &"ab".repeat(32));
        assert!(good.validate(LayerKind::Profile).is_ok());
        assert_eq!(good.pcr_policy(), BTreeMap::from([(7u8, vec![0xab; 32])]));
        assert!(pcrs("~7", "").validate(LayerKind::Profile).is_ok(), "removing an inherited PCR");
        for (k, v) in [("24", "00".repeat(32)), ("07", "00".repeat(32)), ("x", "00".repeat(32)), ("7", "00".into())] {
            assert!(pcrs(k, &v).validate(LayerKind::Node).is_err(), "{k}={v}");
        }
        assert!(pcrs("7", &"zz".repeat(32)).validate(LayerKind::Node).is_err());
        // Selected, to learn: quoted, never part of the pinned values.
        let to_learn = pcrs("8", PCR_TO_LEARN);
        assert!(to_learn.validate(LayerKind::Profile).is_ok());
        assert_eq!(
            (to_learn.pcr_policy(), to_learn.pcr_selection(), to_learn.unlearned_pcrs()),
            (BTreeMap::new(), vec![8], vec![8])
        );
        assert!(pcrs("8", "learned").validate(LayerKind::Node).is_err());
        assert_eq!(decode_hex("0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("é1"), None);
        assert_eq!(decode_hex("+f"), None);
    }

    #[test]
    fn decode_hex_takes_hex_digits_only() {
        // u8::from_str_radix alone accepts a leading '+' in each pair.
        for bad in ["+f", "+0+0", "0a+f", " f", "0x", "-f"] {
            assert_eq!(decode_hex(bad), None, "{bad:?}");
        }
        assert_eq!(decode_hex(""), Some(vec![]));
        assert_eq!(decode_hex("00ff7F"), Some(vec![0, 0xff, 0x7f]));
    }

    #[test]
    fn secret_names() {
        for good in ["munge.key", "a", "ssh_host-key.2"] {
            assert!(check_secret_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a b", "x/y", "é", &"a".repeat(129), "{{x}}"] {
            assert!(check_secret_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_defaults() {
        let s = Settings::default();
        assert_eq!(s.identity_policy(false, false).factors, [IdentityFactor::Network]);
        assert_eq!(s.identity_policy(true, false).factors, [IdentityFactor::Network, IdentityFactor::AssetTag]);
        let s = Settings { identity: vec!["tpm".into()], ..Default::default() };
        assert_eq!(s.identity_policy(true, false).factors, [IdentityFactor::Tpm]);
    }

    #[test]
    fn duplicate_address_within_node() {
        let mut node = Node { name: NodeName::parse("n1").unwrap(), profiles: vec![], settings: Settings::default() };
        node.settings.interfaces.insert("eth0".into(), iface(serde_json::json!({"ipv4": "10.0.0.1"})));
        node.settings.interfaces.insert("ib0".into(), iface(serde_json::json!({"ipv4": "10.0.0.1"})));
        assert!(check_node_addresses(&node).is_err());
    }
}
