//! SSH host identity, the rules the server, the agent and the CLI share: which names a
//! node's host certificate vouches for (always from the inventory, never from what a
//! node asks), and the text that makes OpenSSH trust ferry's certificate authority —
//! `@cert-authority` lines for known_hosts, the sshd and ssh_config drop-ins. Pure: no
//! key is made, parsed or checked here.

use crate::{CoreError, NodeName, Settings};
use std::collections::BTreeSet;

/// Where a node's own SSH client finds the CA lines and the revoked keys ferry gave it
/// (named by [`SSH_CONFIG_DROP_IN`], so the image's files stay untouched).
pub const NODE_KNOWN_HOSTS_FILE: &str = "/etc/ssh/ferry_known_hosts";
pub const NODE_REVOKED_KEYS_FILE: &str = "/etc/ssh/ferry_revoked_keys";
/// The user CAs the node's sshd trusts (written only when the cluster has one).
pub const NODE_USER_CA_KEYS_FILE: &str = "/etc/ssh/ferry_user_ca_keys";
/// The drop-ins' file names (Debian and RHEL include `*.conf` from these directories).
pub const SSHD_DROP_IN_NAME: &str = "sshd_config.d/ferry-host-certificates.conf";
pub const SSH_DROP_IN_NAME: &str = "ssh_config.d/ferry-known-hosts.conf";

/// The node's SSH client: trust the CA lines ferry delivered (besides the usual files)
/// and refuse the host keys ferry revoked.
pub const SSH_CONFIG_DROP_IN: &str = "# ferry: host keys certified by the cluster's SSH CA, and its revocations\n\
    GlobalKnownHostsFile /etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2 /etc/ssh/ferry_known_hosts\n\
    RevokedHostKeys /etc/ssh/ferry_revoked_keys\n";

/// The host key types ferry certifies, by the name in `/etc/ssh/ssh_host_<TYPE>_key`.
pub const HOST_KEY_TYPES: [&str; 3] = ["ed25519", "ecdsa", "rsa"];

/// Most host keys one request may submit (one per type, with room for spares).
pub const MAX_HOST_KEYS_PER_REQUEST: usize = 8;

/// A DNS domain (`cluster.example`): labels of 1 to 63 letters, digits and `-` (not at
/// either end), at most 253 characters in all.
pub fn check_domain(domain: &str) -> Result<(), CoreError> {
    let why = "a DNS domain: labels of letters, digits and '-' separated by '.', at most 253 characters";
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Err(CoreError::invalid("domain", domain.chars().take(64).collect::<String>(), why));
    }
    Ok(())
}

/// `NAME.DOMAIN` when the node's merged settings have a domain.
pub fn fqdn(name: &NodeName, settings: &Settings) -> Option<String> {
    settings.domain.as_ref().map(|d| format!("{name}.{d}"))
}

/// The principals of a node's host certificate: its name, its FQDN, and the addresses of
/// its inventory interfaces — all from the inventory.
pub fn host_principals(name: &NodeName, settings: &Settings) -> Vec<String> {
    let mut out = vec![name.to_string()];
    out.extend(fqdn(name, settings));
    let mut addresses = BTreeSet::new();
    for iface in settings.interfaces.values() {
        addresses.extend(iface.ipv4.map(|a| a.to_string()));
        addresses.extend(iface.ipv6.map(|a| a.to_string()));
    }
    out.extend(addresses);
    out
}

/// The known_hosts host patterns that cover these nodes: `*.DOMAIN` for every domain, and
/// each node's name and addresses (sorted, each once). A client then trusts the CA for the
/// cluster's names only, so a CA key that leaked could not vouch for other hosts.
pub fn known_host_patterns<'a>(nodes: impl IntoIterator<Item = (&'a NodeName, &'a Settings)>) -> Vec<String> {
    let mut domains = BTreeSet::new();
    let mut rest = BTreeSet::new();
    for (name, settings) in nodes {
        domains.extend(settings.domain.iter().map(|d| format!("*.{d}")));
        let principals = host_principals(name, settings);
        rest.extend(principals.into_iter().filter(|p| !p.contains('.') || p.parse::<std::net::IpAddr>().is_ok()));
    }
    domains.into_iter().chain(rest).collect()
}

/// Checks host patterns an admin gave (`*.cluster.example`, `n*`, `10.1.*`): no
/// whitespace, control characters, `#` or `@`, which would break the known_hosts line.
pub fn check_host_pattern(pattern: &str) -> Result<(), CoreError> {
    let bad = |c: char| c.is_whitespace() || c.is_control() || matches!(c, '#' | '@' | ',');
    if pattern.is_empty() || pattern.len() > 255 || pattern.chars().any(bad) {
        return Err(CoreError::invalid(
            "host pattern",
            pattern.chars().take(64).collect::<String>(),
            "a known_hosts pattern: 1 to 255 characters, no spaces, ',', '#' or '@' (e.g. *.cluster.example)",
        ));
    }
    Ok(())
}

/// `@cert-authority PATTERNS CA-KEY`: known_hosts trusts host certificates this CA
/// signed for hosts matching the patterns.
pub fn cert_authority_line(patterns: &[String], ca_public_key: &str) -> String {
    format!("@cert-authority {} {}", patterns.join(","), ca_public_key.trim())
}

/// `@revoked * KEY`: known_hosts refuses this key (and every certificate of it) for any host.
pub fn revoked_line(public_key: &str) -> String {
    format!("@revoked * {}", public_key.trim())
}

/// The sshd drop-in that presents these certificates (paths as sshd sees them), and
/// trusts the cluster's user CAs ([`NODE_USER_CA_KEYS_FILE`]) when it has any.
pub fn sshd_drop_in(certificate_paths: &[String], trust_user_ca: bool) -> String {
    let mut out = String::from("# ferry: host certificates issued through this node's tunnel at boot\n");
    for p in certificate_paths {
        out.push_str(&format!("HostCertificate {p}\n"));
    }
    if trust_user_ca {
        out.push_str(&sshd_user_ca_line());
    }
    out
}

/// sshd's line that accepts user certificates of ferry's user CAs (the login name must be
/// one of the certificate's principals).
pub fn sshd_user_ca_line() -> String {
    format!("TrustedUserCAKeys {NODE_USER_CA_KEYS_FILE}\n")
}

/// Longest validity of a user certificate: they stand in for authorized_keys and
/// should be short-lived (no revocation list for them yet).
pub const MAX_USER_CERTIFICATE_SECS: u64 = 7 * 86_400;

/// A login name a user certificate may name: 1 to 32 of `a-z 0-9 _ - .`, starting with
/// a letter or `_` (what useradd accepts by default).
pub fn check_login_name(name: &str) -> Result<(), CoreError> {
    let first_ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
    let rest_ok = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.'));
    if name.len() > 32 || !first_ok || !rest_ok {
        return Err(CoreError::invalid(
            "login name",
            name.chars().take(64).collect::<String>(),
            "a user name on the nodes: 1 to 32 of a-z, 0-9, '_', '-', '.', starting with a letter or '_'",
        ));
    }
    Ok(())
}

/// A user certificate's key ID: who asked for it (the admin token's actor) and when.
pub fn user_certificate_key_id(actor: &str, issued: &str) -> String {
    format!("ferry user {actor} at {issued}")
}

/// The certificate's key ID: the node, the boot (its tunnel, which is made anew each
/// boot) and the key type, as `ssh-keygen -L` and sshd's logs show it.
pub fn host_certificate_key_id(node: &NodeName, boot: &str, key_type: &str) -> String {
    format!("ferry host {node} boot {boot} key {key_type}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(v: serde_json::Value) -> Settings {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn principals_are_the_name_fqdn_and_inventory_addresses() {
        let n = NodeName::parse("n001").unwrap();
        let s = settings(json!({
            "domain": "hpc.example",
            "interfaces": {"eth0": {"ipv4": "10.0.1.1"}, "ib0": {"ipv4": "10.1.1.1", "ipv6": "fd00::1"}, "x": {}},
        }));
        assert_eq!(host_principals(&n, &s), ["n001", "n001.hpc.example", "10.0.1.1", "10.1.1.1", "fd00::1"]);
        assert_eq!(host_principals(&n, &Settings::default()), ["n001"]);
        assert_eq!(fqdn(&n, &s).as_deref(), Some("n001.hpc.example"));
    }

    #[test]
    fn patterns_cover_each_domain_once_and_every_name_and_address() {
        let (a, b, c) = (NodeName::parse("a1").unwrap(), NodeName::parse("b1").unwrap(), NodeName::parse("c").unwrap());
        let sa = settings(json!({"domain": "x.example", "interfaces": {"eth0": {"ipv4": "10.0.0.1"}}}));
        let sb = settings(json!({"domain": "x.example"}));
        let sc = Settings::default();
        let p = known_host_patterns([(&a, &sa), (&b, &sb), (&c, &sc)]);
        assert_eq!(p, ["*.x.example", "10.0.0.1", "a1", "b1", "c"]);
        let line = cert_authority_line(&p, "ssh-ed25519 AAAAC3 ferry-host-ca-1\n");
        assert_eq!(line, "@cert-authority *.x.example,10.0.0.1,a1,b1,c ssh-ed25519 AAAAC3 ferry-host-ca-1");
        assert_eq!(revoked_line(" ssh-ed25519 AAAAK n1 "), "@revoked * ssh-ed25519 AAAAK n1");
    }

    #[test]
    fn domains_and_patterns_are_checked() {
        let long = "a.".repeat(100);
        for ok in ["example", "hpc.example", "a-b.c9.example", long.trim_end_matches('.')] {
            assert!(check_domain(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".example", "a..b", "-a.example", "a-.example", "a b", "a_b.example", &"x".repeat(64)] {
            assert!(check_domain(bad).is_err(), "{bad:?}");
        }
        assert!(check_host_pattern("*.cluster.example").is_ok() && check_host_pattern("10.1.*").is_ok());
        for bad in ["", "a b", "a,b", "#x", "@revoked", "a\nb"] {
            assert!(check_host_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn drop_ins_and_key_ids() {
        let d = sshd_drop_in(&["/etc/ssh/ssh_host_ed25519_key-cert.pub".into()], false);
        assert!(d.ends_with("\nHostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub\n"), "{d}");
        let d = sshd_drop_in(&[], true);
        assert!(d.ends_with("\nTrustedUserCAKeys /etc/ssh/ferry_user_ca_keys\n"), "{d}");
        for ok in ["root", "hpcadmin", "_svc", "a.b-c_1"] {
            assert!(check_login_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Root", "1x", "-x", "a b", "a,b", &"x".repeat(33)] {
            assert!(check_login_name(bad).is_err(), "{bad:?}");
        }
        assert!(
            SSH_CONFIG_DROP_IN.contains(NODE_KNOWN_HOSTS_FILE) && SSH_CONFIG_DROP_IN.contains(NODE_REVOKED_KEYS_FILE)
        );
        let id = host_certificate_key_id(&NodeName::parse("n1").unwrap(), "2026-01-01T00:00:00Z", "ed25519");
        assert_eq!(id, "ferry host n1 boot 2026-01-01T00:00:00Z key ed25519");
    }
}
