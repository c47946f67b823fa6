//! Every `ferry ... list [--json]`: one table row per item for people, the items as JSON
//! for scripts.

use crate::output::{identity, join, json, json_sorted, secret_state, table, text};
use ferry_api::admin::{AuditEntry, NodeView, ProfileView, SecretView, ServerView, TokenInfo, TpmView, TunnelView};
use ferry_api::image::{Artifact, ImageRecord};
use serde::Serialize;

/// An item of a listing.
pub trait Listing: Serialize {
    const HEADER: &'static [&'static str];
    /// `--json` sorts every object's keys (see [`json_sorted`]).
    const SORTED_JSON: bool = false;
    fn row(&self) -> Vec<String>;
}

pub fn listing<T: Listing>(items: &[T], as_json: bool) -> String {
    match (as_json, T::SORTED_JSON) {
        (true, true) => json_sorted(&items),
        (true, false) => json(&items),
        (false, _) => table(T::HEADER, items.iter().map(T::row).collect()),
    }
}

/// Absent: `-`.
fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".into())
}

impl Listing for NodeView {
    const HEADER: &'static [&'static str] = &["name", "profiles", "mac", "ipv4", "asset tag", "identity", "comment"];
    fn row(&self) -> Vec<String> {
        let primary = self.settings.primary_interface();
        let mac = primary.and_then(|(_, i)| i.mac).map(|m| m.to_string());
        let ip = primary.and_then(|(_, i)| i.ipv4).map(|a| a.to_string());
        vec![
            self.name.to_string(),
            join(&self.profiles),
            or_dash(mac),
            or_dash(ip),
            secret_state(self.asset_tag),
            identity(&self.identity),
            self.settings.comment.clone().unwrap_or_default(),
        ]
    }
}

impl Listing for ProfileView {
    const HEADER: &'static [&'static str] = &["name", "parents", "nodes", "comment"];
    fn row(&self) -> Vec<String> {
        let comment = self.settings.comment.clone().unwrap_or_default();
        vec![self.name.to_string(), join(&self.profiles), self.nodes.to_string(), comment]
    }
}

impl Listing for TunnelView {
    const HEADER: &'static [&'static str] = &["node", "address", "age", "last handshake", "expires in", "server"];
    const SORTED_JSON: bool = true;
    fn row(&self) -> Vec<String> {
        let handshake = match (self.mine, &self.last_handshake) {
            (false, _) => "(other server)".to_owned(),
            (true, at) => at.clone().unwrap_or_else(|| "never".into()),
        };
        let (age, expires) = (format!("{}s", self.age_secs), format!("{}s", self.expires_in_secs));
        vec![self.node.to_string(), text(&self.address), age, handshake, expires, text(&self.server)]
    }
}

impl Listing for AuditEntry {
    const HEADER: &'static [&'static str] = &["time", "actor", "action", "subject", "detail"];
    const SORTED_JSON: bool = true;
    fn row(&self) -> Vec<String> {
        vec![self.at.clone(), self.actor.clone(), self.action.clone(), self.subject.clone(), self.detail.clone()]
    }
}

impl Listing for ServerView {
    const HEADER: &'static [&'static str] =
        &["server", "liveness", "heartbeat", "tunnels", "endpoint", "public key", "sealing key", "started"];
    fn row(&self) -> Vec<String> {
        let liveness = match (self.alive, self.this) {
            (true, true) => "alive (this)".to_owned(),
            (true, false) => "alive".to_owned(),
            (false, _) => format!("LOST ({} s silent)", self.heartbeat_age_secs),
        };
        let sealing_key = Some(self.sealing_key_id.clone()).filter(|id| !id.is_empty());
        vec![
            self.id.clone(),
            liveness,
            format!("{}s", self.heartbeat_age_secs),
            self.active_tunnels.to_string(),
            self.endpoint.clone(),
            self.public_key.clone(),
            or_dash(sealing_key),
            self.started_at.clone(),
        ]
    }
}

impl Listing for TpmView {
    const HEADER: &'static [&'static str] = &["node", "state", "ek fingerprint", "certificate", "updated", "conflict"];
    fn row(&self) -> Vec<String> {
        let certified = if self.certified { "yes" } else { "no" };
        let conflict = self.conflict.as_ref().map(|fp| format!("CONFLICT: {fp} refused"));
        vec![
            self.node.to_string(),
            self.state.clone(),
            self.fingerprint.clone(),
            certified.into(),
            self.updated_at.clone(),
            or_dash(conflict),
        ]
    }
}

impl Listing for ImageRecord {
    const HEADER: &'static [&'static str] = &["name", "kernel", "initrd", "rootfs (zstd)", "created"];
    fn row(&self) -> Vec<String> {
        let mib = |a: &Artifact| format!("{:.1} MiB", a.size as f64 / 1048576.0);
        let rootfs = self.rootfs_zst.as_ref().map(mib);
        vec![self.name.clone(), mib(&self.kernel), mib(&self.initrd), or_dash(rootfs), self.created_at.clone()]
    }
}

impl Listing for SecretView {
    const HEADER: &'static [&'static str] = &["name", "scope", "bytes", "updated"];
    fn row(&self) -> Vec<String> {
        vec![self.name.clone(), self.scope.clone(), self.size.to_string(), self.updated_at.clone()]
    }
}

impl Listing for TokenInfo {
    const HEADER: &'static [&'static str] = &["name", "role", "state", "expires"];
    const SORTED_JSON: bool = true;
    fn row(&self) -> Vec<String> {
        vec![self.name.clone(), self.role.to_string(), self.state.clone(), or_dash(self.expires_at.clone())]
    }
}

/// `ferry known-hosts`: one known_hosts line per reported key, for the node's name and
/// its inventory addresses (ssh checks the key under the name or address it connects
/// to).
pub fn known_hosts_lines(keys: &[ferry_api::admin::KnownHost], nodes: &[ferry_api::admin::NodeView]) -> Vec<String> {
    keys.iter()
        .map(|(node, key)| {
            let mut names = vec![node.to_string()];
            if let Some(view) = nodes.iter().find(|n| &n.name == node) {
                for iface in view.settings.interfaces.values() {
                    names.extend(iface.ipv4.map(|a| a.to_string()));
                    names.extend(iface.ipv6.map(|a| a.to_string()));
                }
            }
            format!("{} {key}", names.join(","))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::NodeName;

    fn tunnel() -> TunnelView {
        TunnelView {
            node: NodeName::parse("n1").unwrap(),
            address: "100.64.0.2".into(),
            public_key: "K=".into(),
            age_secs: 3,
            expires_in_secs: 597,
            last_handshake: None,
            on_device: true,
            server: "s1".into(),
            mine: true,
        }
    }

    /// Scripts see the keys in the order each command has always printed them.
    #[test]
    fn json_keeps_each_listings_key_order() {
        let tunnels = listing(&[tunnel()], true);
        assert!(tunnels.starts_with("[\n  {\n    \"address\": \"100.64.0.2\",\n    \"age_secs\": 3,"), "{tunnels}");
        let secret = SecretView { name: "k".into(), scope: "global".into(), size: 1, updated_at: "t".into() };
        let secrets = listing(&[secret], true);
        assert!(secrets.starts_with("[\n  {\n    \"name\": \"k\",\n    \"scope\""), "{secrets}");
        assert_eq!(listing::<TokenInfo>(&[], true), "[]");
    }

    #[test]
    fn rows_fill_every_column() {
        let table = listing(&[tunnel()], false);
        let row = table.lines().nth(1).unwrap();
        assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["n1", "100.64.0.2", "3s", "never", "597s", "s1"]);
        let other = TunnelView { mine: false, last_handshake: Some("t".into()), ..tunnel() };
        assert!(listing(&[other], false).contains("(other server)"));
    }

    #[test]
    fn known_hosts_name_the_node_and_its_addresses() {
        let node: ferry_api::admin::NodeView = serde_json::from_value(serde_json::json!({
            "name": "n1", "profiles": [], "asset_tag": "unset", "revision": 1, "updated_at": "",
            "identity": {"factors": ["network"], "explicit": true, "weak": true, "refused": false},
            "settings": {"interfaces": {"eth0": {"ipv4": "10.0.0.5", "ipv6": "fd00::5"}, "ib0": {"ipv4": "10.1.0.5"}}}
        }))
        .unwrap();
        let keys = [
            (NodeName::parse("n1").unwrap(), "ssh-ed25519 AAAA root@n1".to_string()),
            (NodeName::parse("gone").unwrap(), "ssh-rsa BBBB".to_string()),
        ];
        let lines = known_hosts_lines(&keys, &[node]);
        assert_eq!(lines, ["n1,10.0.0.5,fd00::5,10.1.0.5 ssh-ed25519 AAAA root@n1", "gone ssh-rsa BBBB"]);
    }
}
