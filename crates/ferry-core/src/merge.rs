//! Warewulf-style merging with provenance.
//!
//! Rules: profiles apply in the node's order (a profile's own parents first), later beats
//! earlier, the node beats every profile; lists append (without repeating an entry);
//! maps merge by key; a list entry or map key `~x` removes `x` inherited so far.
//! Merging walks the JSON form of [`Settings`], so every field, present and future,
//! follows the same rules and reports where its value came from.

use crate::model::{Node, Profile, Settings};
use crate::{CoreError, ProfileName};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Where a merged value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Source {
    Profile(ProfileName),
    Node,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Profile(p) => write!(f, "profile {p}"),
            Source::Node => f.write_str("node"),
        }
    }
}

/// One merged value: a scalar, or one element of a list, with its dotted field path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedField {
    pub field: String,
    pub value: Value,
    pub source: Source,
}

/// A node's effective settings and the provenance of each value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Merged {
    pub profiles: Vec<ProfileName>,
    pub settings: Settings,
    pub fields: Vec<MergedField>,
}

/// The profiles that apply, in application order: depth-first, a profile's parents
/// before itself, each profile once (its first position wins).
pub fn resolve_profiles<'a>(
    roots: &[ProfileName],
    all: &'a BTreeMap<ProfileName, Profile>,
) -> Result<Vec<&'a Profile>, CoreError> {
    fn visit<'a>(
        name: &ProfileName,
        all: &'a BTreeMap<ProfileName, Profile>,
        stack: &mut Vec<ProfileName>,
        out: &mut Vec<&'a Profile>,
    ) -> Result<(), CoreError> {
        if let Some(pos) = stack.iter().position(|p| p == name) {
            let mut cycle: Vec<String> = stack[pos..].iter().map(|p| p.to_string()).collect();
            cycle.push(name.to_string());
            return Err(CoreError::ProfileCycle(cycle.join(" -> ")));
        }
        let profile = all.get(name).ok_or_else(|| CoreError::UnknownProfile(name.to_string()))?;
        if out.iter().any(|p| &p.name == name) {
            return Ok(());
        }
        stack.push(name.clone());
        for parent in &profile.profiles {
            visit(parent, all, stack, out)?;
        }
        stack.pop();
        out.push(profile);
        Ok(())
    }
    let mut out = Vec::new();
    for root in roots {
        visit(root, all, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// Checks that every profile's parents exist and that no profile inherits from itself.
pub fn check_profile_graph(all: &BTreeMap<ProfileName, Profile>) -> Result<(), CoreError> {
    for name in all.keys() {
        resolve_profiles(std::slice::from_ref(name), all)?;
    }
    Ok(())
}

/// Merges a node with its profiles.
pub fn merge_node(node: &Node, all: &BTreeMap<ProfileName, Profile>) -> Result<Merged, CoreError> {
    let layers = resolve_profiles(&node.profiles, all)?;
    let mut tree = Tree::Map(BTreeMap::new());
    for p in &layers {
        tree.apply(to_json(&p.settings), &Source::Profile(p.name.clone()));
    }
    tree.apply(to_json(&node.settings), &Source::Node);
    let mut fields = Vec::new();
    tree.flatten("", &mut fields);
    let settings = serde_json::from_value(tree.into_value()).map_err(|e| {
        // Layers are validated on write, so this means stored data is inconsistent.
        CoreError::invalid("merged settings", node.name.to_string(), e.to_string())
    })?;
    Ok(Merged { profiles: layers.iter().map(|p| p.name.clone()).collect(), settings, fields })
}

fn to_json(s: &Settings) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// JSON with provenance at the leaves.
enum Tree {
    Scalar(Value, Source),
    List(Vec<(Value, Source)>),
    Map(BTreeMap<String, Tree>),
}

impl Tree {
    fn apply(&mut self, layer: Value, source: &Source) {
        let (Tree::Map(map), Value::Object(obj)) = (self, layer) else {
            return;
        };
        for (key, value) in obj {
            if let Some(removed) = key.strip_prefix('~') {
                map.remove(removed);
                continue;
            }
            match value {
                Value::Object(inner) => {
                    let slot = map.entry(key).or_insert_with(|| Tree::Map(BTreeMap::new()));
                    if !matches!(slot, Tree::Map(_)) {
                        *slot = Tree::Map(BTreeMap::new());
                    }
                    slot.apply(Value::Object(inner), source);
                }
                Value::Array(items) => {
                    let slot = map.entry(key).or_insert_with(|| Tree::List(Vec::new()));
                    if !matches!(slot, Tree::List(_)) {
                        *slot = Tree::List(Vec::new());
                    }
                    if let Tree::List(list) = slot {
                        for item in items {
                            match item.as_str().and_then(|s| s.strip_prefix('~')) {
                                Some(removed) => list.retain(|(v, _)| v.as_str() != Some(removed)),
                                None if list.iter().any(|(v, _)| *v == item) => {}
                                None => list.push((item, source.clone())),
                            }
                        }
                    }
                }
                Value::Null => {}
                scalar => {
                    map.insert(key, Tree::Scalar(scalar, source.clone()));
                }
            }
        }
    }

    fn flatten(&self, path: &str, out: &mut Vec<MergedField>) {
        match self {
            Tree::Scalar(v, s) => out.push(MergedField { field: path.to_owned(), value: v.clone(), source: s.clone() }),
            Tree::List(items) => out.extend(items.iter().map(|(v, s)| MergedField {
                field: path.to_owned(),
                value: v.clone(),
                source: s.clone(),
            })),
            Tree::Map(m) => {
                for (k, t) in m {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    t.flatten(&p, out);
                }
            }
        }
    }

    fn into_value(self) -> Value {
        match self {
            Tree::Scalar(v, _) => v,
            Tree::List(items) => Value::Array(items.into_iter().map(|(v, _)| v).collect()),
            Tree::Map(m) => Value::Object(m.into_iter().map(|(k, t)| (k, t.into_value())).collect::<Map<_, _>>()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile(name: &str, parents: &[&str], settings: Value) -> (ProfileName, Profile) {
        let p = Profile {
            name: ProfileName::parse(name).unwrap(),
            profiles: parents.iter().map(|p| ProfileName::parse(p).unwrap()).collect(),
            settings: serde_json::from_value(settings).unwrap(),
        };
        (p.name.clone(), p)
    }

    fn node(profiles: &[&str], settings: Value) -> Node {
        Node {
            name: crate::NodeName::parse("n001").unwrap(),
            profiles: profiles.iter().map(|p| ProfileName::parse(p).unwrap()).collect(),
            settings: serde_json::from_value(settings).unwrap(),
        }
    }

    #[test]
    fn later_beats_earlier_and_node_beats_all() {
        let all = BTreeMap::from([
            profile("base", &[], json!({"image": "rocky9", "kernel": "6.1", "comment": "base"})),
            profile("gpu", &[], json!({"image": "rocky9-cuda"})),
        ]);
        let m = merge_node(&node(&["base", "gpu"], json!({"kernel": "6.6"})), &all).unwrap();
        assert_eq!(m.settings.image.as_deref(), Some("rocky9-cuda"));
        assert_eq!(m.settings.kernel.as_deref(), Some("6.6"));
        assert_eq!(m.settings.comment.as_deref(), Some("base"));
        let src = |f: &str| m.fields.iter().find(|x| x.field == f).unwrap().source.to_string();
        assert_eq!(src("image"), "profile gpu");
        assert_eq!(src("kernel"), "node");
        assert_eq!(src("comment"), "profile base");
        // Order matters: reversing the profiles flips the winner.
        let m = merge_node(&node(&["gpu", "base"], json!({})), &all).unwrap();
        assert_eq!(m.settings.image.as_deref(), Some("rocky9"));
    }

    #[test]
    fn lists_append_and_tilde_removes() {
        let all = BTreeMap::from([
            profile(
                "base",
                &[],
                json!({"kernel_args": ["quiet", "console=tty0"], "identity": ["network", "asset-tag"]}),
            ),
            profile("serial", &["base"], json!({"kernel_args": ["~console=tty0", "console=ttyS0"]})),
        ]);
        let m = merge_node(
            &node(&["serial"], json!({"kernel_args": ["quiet", "debug"], "identity": ["~network", "tpm"]})),
            &all,
        )
        .unwrap();
        assert_eq!(m.settings.kernel_args, ["quiet", "console=ttyS0", "debug"]);
        assert_eq!(m.settings.identity, ["asset-tag", "tpm"]);
        let srcs: Vec<String> =
            m.fields.iter().filter(|f| f.field == "kernel_args").map(|f| f.source.to_string()).collect();
        assert_eq!(srcs, ["profile base", "profile serial", "node"]);
    }

    #[test]
    fn maps_merge_by_key_and_tilde_key_removes() {
        let all = BTreeMap::from([profile(
            "base",
            &[],
            json!({"tags": {"rack": "r1", "room": "a"}, "interfaces": {"eth0": {"mtu": 9000, "netmask": "255.255.255.0"}, "ib0": {"mtu": 2044}}}),
        )]);
        let n = node(
            &["base"],
            json!({"tags": {"rack": "r7", "~room": ""}, "interfaces": {"eth0": {"ipv4": "10.0.0.5"}, "~ib0": {}}}),
        );
        let m = merge_node(&n, &all).unwrap();
        assert_eq!(m.settings.tags, BTreeMap::from([("rack".to_string(), "r7".to_string())]));
        let eth0 = &m.settings.interfaces["eth0"];
        assert_eq!((eth0.mtu, eth0.ipv4.map(|i| i.to_string())), (Some(9000), Some("10.0.0.5".into())));
        assert!(!m.settings.interfaces.contains_key("ib0"));
        let f = m.fields.iter().find(|f| f.field == "interfaces.eth0.mtu").unwrap();
        assert_eq!(f.source.to_string(), "profile base");
    }

    #[test]
    fn parents_apply_before_children_once() {
        let all = BTreeMap::from([
            profile("a", &[], json!({"image": "a", "comment": "a"})),
            profile("b", &["a"], json!({"image": "b"})),
            profile("c", &["a"], json!({"comment": "c"})),
        ]);
        let m = merge_node(&node(&["b", "c"], json!({})), &all).unwrap();
        assert_eq!(m.profiles.iter().map(|p| p.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!((m.settings.image.as_deref(), m.settings.comment.as_deref()), (Some("b"), Some("c")));
    }

    #[test]
    fn cycles_and_unknown_profiles_are_errors() {
        let all = BTreeMap::from([
            profile("a", &["c"], json!({})),
            profile("b", &["a"], json!({})),
            profile("c", &["b"], json!({})),
        ]);
        let e = check_profile_graph(&all).unwrap_err();
        assert!(matches!(e, CoreError::ProfileCycle(_)), "{e}");
        assert!(e.to_string().contains("a -> c -> b -> a"), "{e}");
        let all = BTreeMap::from([profile("self", &["self"], json!({}))]);
        assert!(check_profile_graph(&all).is_err());
        let all = BTreeMap::from([profile("a", &["ghost"], json!({}))]);
        assert_eq!(check_profile_graph(&all).unwrap_err(), CoreError::UnknownProfile("ghost".into()));
        assert!(merge_node(&node(&["missing"], json!({})), &BTreeMap::new()).is_err());
    }
}
