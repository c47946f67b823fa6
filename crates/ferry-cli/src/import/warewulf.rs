//! Warewulf 4's `nodes.conf` as ferry profiles and nodes (`ferry import warewulf`).
//!
//! The file (Warewulf's `NodesYaml`): `nodeprofiles` and `nodes`, each a map of name to
//! the same fields — `profiles`, `comment`, `image name` (`container name` before 4.6),
//! `kernel: {version, args}` (args a list, or one string in older files; also the old
//! top-level `kernel args` / `kernel version` / `kernel override`), `root`, `tags`
//! (`keys` in old files), `network devices: {NAME: {device, hwaddr, ipaddr, netmask,
//! gateway, ipaddr6, prefixlen6, gateway6, mtu, ...}}`, `primary network`, and for nodes
//! `asset key`. Warewulf merges them as ferry does (profiles depth-first, parents first,
//! later wins, lists append), so each maps onto ferry's own layer.
//!
//! What ferry has no equivalent for (IPMI, overlays, iPXE templates, disks, ...) is
//! listed in [`Plan::skipped`] by field name, never silently dropped and never with its
//! value (an IPMI password must not reach a terminal). Asset keys become sealed asset
//! tags and are never printed.

use anyhow::{anyhow, bail, Context};
use ferry_api::admin::{NewNode, NewProfile};
use ferry_api::Secret;
use ferry_core::model::LayerKind;
use ferry_core::{Interface, MacAddr, NodeName, ProfileName, RootMode, Settings};
use std::collections::BTreeMap;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::{Yaml, YamlLoader};

/// A larger nodes.conf is not one (10,000 nodes take about 3 MB).
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;
/// Deepest nesting of maps and lists; nodes.conf needs 5.
const MAX_DEPTH: usize = 32;

/// What the file becomes.
#[derive(Debug, Default)]
pub struct Plan {
    pub profiles: Vec<NewProfile>,
    pub nodes: Vec<NewNode>,
    /// Fields not imported: ferry has no equivalent.
    pub skipped: Vec<Skipped>,
    /// What the admin should know about what was imported.
    pub notes: Vec<String>,
}

/// One field not imported, and why (never its value).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// `profile default`, `node n1`, or `file`.
    pub owner: String,
    /// The field's path: `ipmi.password`, `network devices.default.type`.
    pub field: String,
    pub why: &'static str,
}

const IPMI: &str = "IPMI: ferry does not manage BMCs";
const OVERLAY: &str = "overlays: ferry renders cloud-init user-data/vendor-data templates instead";
const IPXE: &str = "ferry writes its own iPXE and GRUB scripts";
const INIT: &str = "ferry's initramfs switches to the image's own init";
const STORAGE: &str = "disks, file systems and resources: describe them in cloud-init user-data";
const NO_EQUIVALENT: &str = "no ferry equivalent";
const UNKNOWN: &str = "not a Warewulf 4 field this importer knows";

/// Converts the text of a nodes.conf.
pub fn convert(text: &str) -> anyhow::Result<Plan> {
    if text.len() > MAX_FILE_BYTES {
        bail!("the file is larger than {} MiB: not a nodes.conf", MAX_FILE_BYTES >> 20);
    }
    check_structure(text)?;
    let docs = YamlLoader::load_from_str(text).map_err(|e| anyhow!("not valid YAML: {e}"))?;
    let [doc] = docs.as_slice() else { bail!("expected one YAML document, found {}", docs.len()) };
    let top = doc.as_hash().ok_or_else(|| anyhow!("expected a mapping with nodeprofiles and nodes"))?;
    let mut plan = Plan::default();
    let (mut profiles, mut nodes) = (Vec::new(), Vec::new());
    for (key, value) in top {
        match key.as_str() {
            Some("nodeprofiles") => profiles = entries(value, Kind::Profile, &mut plan)?,
            Some("nodes") => nodes = entries(value, Kind::Node, &mut plan)?,
            // The file format's version, not a setting.
            Some("WW_INTERNAL") => {}
            other => {
                skip(&mut plan, "file", &scalar_text(key).or(other.map(str::to_owned)).unwrap_or_default(), UNKNOWN)
            }
        }
    }
    let devices = device_names(profiles.iter().chain(&nodes))?;
    for e in profiles {
        let (name, profiles, settings, _) = e.finish(&devices, &mut plan)?;
        plan.profiles.push(NewProfile { name: ProfileName::parse(&name)?, profiles, settings });
    }
    for e in nodes {
        let (name, profiles, settings, asset_tag) = e.finish(&devices, &mut plan)?;
        plan.nodes.push(NewNode { name: NodeName::parse(&name)?, profiles, settings, asset_tag });
    }
    check_unique_addresses(&plan.nodes)?;
    identity_notes(&mut plan);
    plan.skipped.sort();
    Ok(plan)
}

/// Refuses aliases (an alias is expanded by copying: a few lines could make gigabytes)
/// and absurd nesting, before the document is built.
fn check_structure(text: &str) -> anyhow::Result<()> {
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| anyhow!("not valid YAML: {e}"))?;
        match event {
            Event::Alias(_) => bail!(
                "line {}: YAML aliases (*name) are not supported in nodes.conf (Warewulf never writes them): \
                 write the values out",
                mark.line()
            ),
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    bail!("line {}: nested more than {MAX_DEPTH} levels deep: not a nodes.conf", mark.line());
                }
            }
            Event::MappingEnd | Event::SequenceEnd => depth = depth.saturating_sub(1),
            Event::StreamEnd => return Ok(()),
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Profile,
    Node,
}

/// One profile or node as read, before its networks are named.
#[derive(Debug)]
struct Entry {
    kind: Kind,
    /// The ferry name (lower case, first label of a dotted Warewulf node name).
    name: String,
    profiles: Vec<ProfileName>,
    settings: Settings,
    asset_key: Option<Secret>,
    /// Warewulf network name → its fields (`device` resolved later).
    networks: BTreeMap<String, Network>,
    primary_network: Option<String>,
}

#[derive(Debug, Default)]
struct Network {
    device: Option<String>,
    interface: Interface,
}

impl Entry {
    fn owner(&self) -> String {
        match self.kind {
            Kind::Profile => format!("profile {}", self.name),
            Kind::Node => format!("node {}", self.name),
        }
    }

    /// The ferry layer: networks become interfaces under their device names.
    fn finish(
        mut self,
        devices: &BTreeMap<String, String>,
        plan: &mut Plan,
    ) -> anyhow::Result<(String, Vec<ProfileName>, Settings, Option<Secret>)> {
        let owner = self.owner();
        for (network, mut n) in std::mem::take(&mut self.networks) {
            let device = devices.get(&network).cloned().unwrap_or_else(|| network.clone());
            if self.primary_network.as_deref() == Some(network.as_str()) {
                n.interface.primary = Some(true);
            }
            if self.kind == Kind::Profile {
                // MACs and IPs identify one node: ferry keeps them on nodes only.
                for (field, set) in [
                    ("hwaddr", n.interface.mac.take().is_some()),
                    ("ipaddr", n.interface.ipv4.take().is_some()),
                    ("ipaddr6", n.interface.ipv6.take().is_some()),
                ] {
                    if set {
                        let why = "a MAC or IP address on a profile: ferry keeps them on nodes only";
                        skip(plan, &owner, &format!("network devices.{network}.{field}"), why);
                    }
                }
            }
            if self.settings.interfaces.insert(device.clone(), n.interface).is_some() {
                bail!("{owner}: two networks use device {device}: ferry names each interface by its device");
            }
        }
        let layer = if self.kind == Kind::Profile { LayerKind::Profile } else { LayerKind::Node };
        self.settings.validate(layer).with_context(|| owner.clone())?;
        Ok((self.name, self.profiles, self.settings, self.asset_key))
    }
}

/// Every entry of `nodeprofiles` or `nodes`.
fn entries(value: &Yaml, kind: Kind, plan: &mut Plan) -> anyhow::Result<Vec<Entry>> {
    let section = if kind == Kind::Profile { "nodeprofiles" } else { "nodes" };
    let map = match value {
        Yaml::Null => return Ok(Vec::new()),
        Yaml::Hash(h) => h,
        _ => bail!("{section} must be a mapping of names to settings"),
    };
    let mut out: Vec<Entry> = Vec::new();
    for (key, fields) in map {
        let raw = scalar_text(key).ok_or_else(|| anyhow!("{section}: a name that is not text"))?;
        let name = ferry_name(&raw, kind, plan)?;
        if out.iter().any(|e| e.name == name) {
            bail!("{section}: {raw} and another entry both become {name} in ferry");
        }
        let mut entry = Entry {
            kind,
            name,
            profiles: Vec::new(),
            settings: Settings::default(),
            asset_key: None,
            networks: BTreeMap::new(),
            primary_network: None,
        };
        match fields {
            Yaml::Hash(h) => {
                for (k, v) in h {
                    let field = scalar_text(k).unwrap_or_default();
                    read_field(&mut entry, &field, v, plan).with_context(|| format!("{}: {field}", entry.owner()))?;
                }
            }
            Yaml::Null => {}
            _ => bail!("{section}: {raw} must be a mapping of fields"),
        }
        out.push(entry);
    }
    Ok(out)
}

/// A Warewulf name as a ferry name: lower case; a node `n1.cluster` is node `n1`.
fn ferry_name(raw: &str, kind: Kind, plan: &mut Plan) -> anyhow::Result<String> {
    let lower = raw.to_ascii_lowercase();
    let name = match kind {
        Kind::Node => lower.split('.').next().unwrap_or_default().to_owned(),
        Kind::Profile => lower,
    };
    let valid = match kind {
        Kind::Node => NodeName::parse(&name).map(|_| ()),
        Kind::Profile => ProfileName::parse(&name).map(|_| ()),
    };
    valid.with_context(|| {
        format!("{raw}: cannot be a ferry {} name", if kind == Kind::Node { "node" } else { "profile" })
    })?;
    if name != raw {
        plan.notes.push(format!("{raw} is imported as {name} (ferry names are lower-case host names)"));
    }
    Ok(name)
}

fn read_field(e: &mut Entry, field: &str, v: &Yaml, plan: &mut Plan) -> anyhow::Result<()> {
    let owner = e.owner();
    let s = &mut e.settings;
    match field {
        "comment" => s.comment = text(v)?,
        "profiles" => {
            for p in strings(v)? {
                if p.starts_with('~') {
                    skip(
                        plan,
                        &owner,
                        &format!("profiles.{p}"),
                        "a negated profile: ferry lists the profiles a node has",
                    );
                } else {
                    e.profiles.push(ProfileName::parse(&p.to_ascii_lowercase())?);
                }
            }
        }
        "image name" => s.image = text(v)?,
        "container name" if s.image.is_none() => s.image = text(v)?,
        "container name" => skip(plan, &owner, field, "image name is set too, and wins"),
        "kernel" => {
            for (k, kv) in hash(v)? {
                match scalar_text(k).as_deref() {
                    Some("version" | "override") => s.kernel = text(kv)?,
                    Some("args") => s.kernel_args.extend(kernel_args(kv)?),
                    other => skip(plan, &owner, &format!("kernel.{}", other.unwrap_or_default()), UNKNOWN),
                }
            }
        }
        "kernel version" | "kernel override" => s.kernel = text(v)?,
        "kernel args" => s.kernel_args.extend(kernel_args(v)?),
        "root" => match text(v)?.map(|r| r.parse::<RootMode>()) {
            Some(Ok(root)) => s.root = Some(root),
            Some(Err(_)) => skip(plan, &owner, field, "ferry boots initramfs, ramfs or tmpfs roots only"),
            None => {}
        },
        "tags" | "keys" => {
            for (k, tv) in hash(v)? {
                let key = scalar_text(k).ok_or_else(|| anyhow!("a tag name that is not text"))?;
                if let Some(value) = scalar_text(tv) {
                    s.tags.insert(key, value);
                }
            }
        }
        "asset key" if e.kind == Kind::Node => e.asset_key = text(v)?.map(Secret::new),
        "asset key" => skip(plan, &owner, field, "an asset tag identifies one node: set it per node"),
        "network devices" => {
            for (k, nv) in hash(v)? {
                let network = scalar_text(k).ok_or_else(|| anyhow!("a network name that is not text"))?;
                let n = read_network(nv, &owner, &network, plan).with_context(|| format!("network {network}"))?;
                e.networks.insert(network, n);
            }
        }
        "primary network" => e.primary_network = text(v)?,
        "ipmi" => match v {
            Yaml::Hash(h) => {
                for k in h.keys() {
                    skip(plan, &owner, &format!("ipmi.{}", scalar_text(k).unwrap_or_default()), IPMI);
                }
            }
            _ => skip(plan, &owner, field, IPMI),
        },
        f if f.starts_with("ipmi ") => skip(plan, &owner, f, IPMI),
        "runtime overlay" | "system overlay" => skip(plan, &owner, field, OVERLAY),
        "ipxe template" => skip(plan, &owner, field, IPXE),
        "init" => skip(plan, &owner, field, INIT),
        "disks" | "filesystems" | "resources" => skip(plan, &owner, field, STORAGE),
        "cluster name" | "discoverable" | "disabled" => skip(plan, &owner, field, NO_EQUIVALENT),
        _ => skip(plan, &owner, field, UNKNOWN),
    }
    Ok(())
}

fn read_network(v: &Yaml, owner: &str, network: &str, plan: &mut Plan) -> anyhow::Result<Network> {
    let mut n = Network::default();
    let i = &mut n.interface;
    let mut gateway6 = None;
    for (k, fv) in hash(v)? {
        let field = scalar_text(k).unwrap_or_default();
        let parse_err = || format!("{field}: not a valid value");
        match field.as_str() {
            "device" => n.device = text(fv)?,
            "hwaddr" => i.mac = text(fv)?.map(|m| MacAddr::parse(&m)).transpose()?,
            "ipaddr" => i.ipv4 = text(fv)?.map(|a| a.parse()).transpose().with_context(parse_err)?,
            "netmask" => i.netmask = text(fv)?.map(|a| a.parse()).transpose().with_context(parse_err)?,
            "gateway" => i.gateway = text(fv)?.map(|a| a.parse()).transpose().with_context(parse_err)?,
            "ipaddr6" | "ip6addr" => {
                if let Some(a) = text(fv)? {
                    let (addr, prefix) = a.split_once('/').map_or((a.as_str(), None), |(a, p)| (a, Some(p)));
                    i.ipv6 = Some(addr.parse().with_context(parse_err)?);
                    if let Some(p) = prefix {
                        i.ipv6_prefix = Some(p.parse().with_context(parse_err)?);
                    }
                }
            }
            "prefixlen6" | "prefix" => {
                i.ipv6_prefix = text(fv)?.map(|p| p.parse()).transpose().with_context(parse_err)?
            }
            "gateway6" => {
                gateway6 = text(fv)?.map(|a| a.parse::<std::net::IpAddr>()).transpose().with_context(parse_err)?
            }
            "mtu" => i.mtu = text(fv)?.map(|m| m.parse()).transpose().with_context(parse_err)?,
            "primary" => i.primary = text(fv)?.map(|p| matches!(p.as_str(), "true" | "yes" | "1")).filter(|p| *p),
            "type" | "onboot" | "tags" | "default" | "ipcidr" => {
                skip(plan, owner, &format!("network devices.{network}.{field}"), NO_EQUIVALENT)
            }
            _ => skip(plan, owner, &format!("network devices.{network}.{field}"), UNKNOWN),
        }
    }
    match (gateway6, i.gateway) {
        (Some(g6), None) => i.gateway = Some(g6),
        (Some(_), Some(_)) => skip(
            plan,
            owner,
            &format!("network devices.{network}.gateway6"),
            "one gateway per interface in ferry: the IPv4 one is kept",
        ),
        (None, _) => {}
    }
    Ok(n)
}

/// Each Warewulf network name's device, the same in every profile and node: ferry keys
/// an interface by its device name, and an interface set partly on a profile and partly
/// on a node must have one name. A network without a device keeps its own name.
fn device_names<'a>(entries: impl Iterator<Item = &'a Entry>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut seen: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for e in entries {
        for (network, n) in &e.networks {
            if let Some(device) = &n.device {
                seen.entry(network.clone()).or_default().entry(device.clone()).or_insert_with(|| e.owner());
            }
        }
    }
    let mut out = BTreeMap::new();
    for (network, devices) in seen {
        if devices.len() > 1 {
            let uses: Vec<String> = devices.iter().map(|(d, owner)| format!("{d} ({owner})")).collect();
            bail!(
                "network {network} is device {} in nodes.conf: ferry names an interface by its device in every \
                 profile and node; give the network one device (or two network names). Nothing was imported",
                uses.join(" and ")
            );
        }
        out.insert(network, devices.into_keys().next().unwrap_or_default());
    }
    Ok(out)
}

/// Warewulf accepts two nodes with one MAC or IP; ferry does not. Said before anything is
/// sent, with the Warewulf network names.
fn check_unique_addresses(nodes: &[NewNode]) -> anyhow::Result<()> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut clashes = Vec::new();
    for n in nodes {
        for (device, i) in &n.settings.interfaces {
            let addresses = [
                i.mac.map(|m| ("MAC", m.to_string())),
                i.ipv4.map(|a| ("IP", a.to_string())),
                i.ipv6.map(|a| ("IP", a.to_string())),
            ];
            for (what, value) in addresses.into_iter().flatten() {
                let here = format!("node {} ({device})", n.name);
                if let Some(first) = seen.insert(format!("{what} {value}"), here.clone()) {
                    clashes.push(format!("{what} {value}: {first} and {here}"));
                }
            }
        }
    }
    if !clashes.is_empty() {
        bail!(
            "duplicate addresses in nodes.conf (Warewulf accepts them, ferry does not: each node needs its own); \
             nothing was imported:\n  {}",
            clashes.join("\n  ")
        );
    }
    Ok(())
}

/// Which nodes will be refused at enrollment (no asset key: network position alone) and
/// which asset keys are easy to guess. Neither prints a key.
fn identity_notes(plan: &mut Plan) {
    let untagged: Vec<String> =
        plan.nodes.iter().filter(|n| n.asset_tag.is_none()).map(|n| n.name.to_string()).collect();
    if !untagged.is_empty() {
        plan.notes.push(format!(
            "{} node(s) have no asset key ({}): ferry refuses their enrollment until they get an asset tag or a \
             TPM, or you accept network position alone with `ferry node set NODES --identity network` (weak)",
            untagged.len(),
            abbreviate(&untagged)
        ));
    }
    let weak: Vec<String> = plan
        .nodes
        .iter()
        .filter(|n| {
            n.asset_tag.as_ref().is_some_and(|t| ferry_core::identity::asset_tag_weakness(t.expose()).is_some())
        })
        .map(|n| n.name.to_string())
        .collect();
    if !weak.is_empty() {
        plan.notes.push(format!(
            "{} asset key(s) are short or easy to guess ({}): prefer random tags of 16 or more characters, or \
             add the tpm factor",
            weak.len(),
            abbreviate(&weak)
        ));
    }
}

/// At most five names, then how many more.
fn abbreviate(names: &[String]) -> String {
    match names.len() {
        0..=5 => names.join(", "),
        n => format!("{}, and {} more", names[..5].join(", "), n - 5),
    }
}

fn skip(plan: &mut Plan, owner: &str, field: &str, why: &'static str) {
    plan.skipped.push(Skipped { owner: owner.to_owned(), field: field.to_owned(), why });
}

/// A scalar as text (numbers and booleans as written); `None` for maps, lists and null.
fn scalar_text(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A scalar field: `None` when null or empty (Warewulf writes `""` for unset).
fn text(v: &Yaml) -> anyhow::Result<Option<String>> {
    match v {
        Yaml::Null => Ok(None),
        Yaml::Hash(_) | Yaml::Array(_) => bail!("expected a single value"),
        v => Ok(scalar_text(v).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())),
    }
}

/// A list of scalars, or one comma-separated string (older files).
fn strings(v: &Yaml) -> anyhow::Result<Vec<String>> {
    match v {
        Yaml::Array(items) => items.iter().map(|i| text(i).map(Option::unwrap_or_default)).collect(),
        v => Ok(text(v)?.map(|s| s.split(',').map(|p| p.trim().to_owned()).collect()).unwrap_or_default()),
    }
    .map(|list: Vec<String>| list.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Kernel arguments: a list (4.6), or one string as on a command line (older files).
fn kernel_args(v: &Yaml) -> anyhow::Result<Vec<String>> {
    match v {
        Yaml::Array(items) => {
            Ok(items.iter().filter_map(|i| text(i).transpose()).collect::<anyhow::Result<Vec<_>>>()?)
        }
        v => Ok(text(v)?.map(|s| s.split_whitespace().map(str::to_owned).collect()).unwrap_or_default()),
    }
}

fn hash(v: &Yaml) -> anyhow::Result<Vec<(&Yaml, &Yaml)>> {
    match v {
        Yaml::Hash(h) => Ok(h.iter().collect()),
        Yaml::Null => Ok(Vec::new()),
        _ => bail!("expected a mapping"),
    }
}

#[cfg(test)]
#[path = "warewulf_tests.rs"]
mod tests;
