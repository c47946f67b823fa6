//! The phone-home report: instance id and hostname from meta-data, SSH host public keys.

use std::io::Read;
use std::path::Path;

use ferry_api::enroll::PhoneHome;

/// Largest SSH public key file read (an RSA-16384 key is about 2.8 KiB).
const MAX_KEY_FILE: u64 = 16 * 1024;

/// Builds the report. `hostname` falls back to meta-data's `local-hostname` when the
/// kernel's hostname is not set yet (as in an initramfs).
pub fn build(meta_data: &[u8], kernel_hostname: Option<String>, ssh_dir: &Path) -> PhoneHome {
    let mut report = PhoneHome {
        instance_id: meta_value(meta_data, "instance-id"),
        hostname: kernel_hostname.or_else(|| meta_value(meta_data, "local-hostname")),
        ..PhoneHome::default()
    };
    for (kind, slot) in [
        ("dsa", &mut report.pub_key_dsa),
        ("rsa", &mut report.pub_key_rsa),
        ("ecdsa", &mut report.pub_key_ecdsa),
        ("ed25519", &mut report.pub_key_ed25519),
    ] {
        *slot = read_key(&ssh_dir.join(format!("ssh_host_{kind}_key.pub")));
    }
    report
}

/// When the node has no SSH host key of its own yet (an initramfs), the public keys
/// its cloud-config installs (`ssh_keys: {ed25519_public: ...}`): the keys the booted
/// OS will present. Keys already read from disk win.
pub fn fill_keys_from_user_data(report: &mut PhoneHome, user_data: &[u8]) {
    if [&report.pub_key_dsa, &report.pub_key_rsa, &report.pub_key_ecdsa, &report.pub_key_ed25519]
        .iter()
        .any(|k| k.is_some())
    {
        return;
    }
    let text = String::from_utf8_lossy(user_data);
    if !text.starts_with("#cloud-config") {
        return;
    }
    // The top-level `ssh_keys:` block: the indented lines that follow it.
    let block = text
        .lines()
        .skip_while(|l| l.trim_end() != "ssh_keys:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with([' ', '\t']));
    for line in block {
        let line = line.trim();
        for (kind, slot) in [
            ("dsa", &mut report.pub_key_dsa),
            ("rsa", &mut report.pub_key_rsa),
            ("ecdsa", &mut report.pub_key_ecdsa),
            ("ed25519", &mut report.pub_key_ed25519),
        ] {
            let Some(value) = line.strip_prefix(kind).and_then(|r| r.strip_prefix("_public:")) else { continue };
            let key = strip_quotes(value.trim());
            if key.starts_with("ssh-") || key.starts_with("ecdsa-") {
                *slot = Some(key.to_string());
            }
        }
    }
}

fn read_key(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(MAX_KEY_FILE).read_to_string(&mut text).ok()?;
    let key = text.trim();
    (!key.is_empty()).then(|| key.to_string())
}

/// The node's hostname, unless the kernel still has none.
pub fn kernel_hostname(path: &Path) -> Option<String> {
    let name = std::fs::read_to_string(path).ok()?;
    let name = name.trim();
    (!matches!(name, "" | "(none)" | "localhost" | "localhost.localdomain")).then(|| name.to_string())
}

/// A top-level scalar of meta-data, which is YAML (`key: value`) or JSON.
pub fn meta_value(meta: &[u8], key: &str) -> Option<String> {
    let text = String::from_utf8_lossy(meta);
    if text.trim_start().starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        return match value.get(key)? {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
    }
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let value = rest.split(" #").next().unwrap_or("").trim();
        let value = strip_quotes(value);
        let complex = value.is_empty() || value.starts_with(['|', '>', '{', '[', '&', '*', '!']);
        (!complex).then(|| value.to_string())
    })
}

fn strip_quotes(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_data_values() {
        let yaml = b"# ferry\ninstance-id: i-n001-42\nlocal-hostname: 'n001'\nnested:\n  instance-id: no\n";
        assert_eq!(meta_value(yaml, "instance-id").as_deref(), Some("i-n001-42"));
        assert_eq!(meta_value(yaml, "local-hostname").as_deref(), Some("n001"));
        assert_eq!(meta_value(b"instance-id: \"x y\" # comment\n", "instance-id").as_deref(), Some("x y"));
        assert_eq!(meta_value(b"instance-idx: 1\n", "instance-id"), None);
        assert_eq!(meta_value(b"instance-id: |\n  multi\n", "instance-id"), None);
        assert_eq!(
            meta_value(br#"{"instance-id": "j-1", "local-hostname": 7}"#, "instance-id").as_deref(),
            Some("j-1")
        );
        assert_eq!(meta_value(br#"{"local-hostname": 7}"#, "local-hostname").as_deref(), Some("7"));
        assert_eq!(meta_value(b"{broken", "instance-id"), None);
        assert_eq!(meta_value(b"\xff\xfe", "instance-id"), None);
    }

    #[test]
    fn host_keys_from_the_cloud_config() {
        let ud = b"#cloud-config\nhostname: n1\nssh_keys:\n  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n    b3Blbn\n    -----END OPENSSH PRIVATE KEY-----\n  ed25519_public: ssh-ed25519 AAAAC3Nz n1\n  rsa_public: \"ssh-rsa AAAAB3 n1\"\nusers:\n  - name: admin\n    ssh_authorized_keys: [ssh-ed25519 AAAAuser]\n";
        let mut r = PhoneHome::default();
        fill_keys_from_user_data(&mut r, ud);
        assert_eq!(r.pub_key_ed25519.as_deref(), Some("ssh-ed25519 AAAAC3Nz n1"));
        assert_eq!(r.pub_key_rsa.as_deref(), Some("ssh-rsa AAAAB3 n1"));
        assert_eq!(r.pub_key_ecdsa, None, "the users' keys are not host keys");
        // Keys on disk win; no cloud-config, or no ssh_keys block: nothing.
        let mut on_disk = PhoneHome { pub_key_ecdsa: Some("ecdsa-sha2-nistp256 AAAA".into()), ..PhoneHome::default() };
        fill_keys_from_user_data(&mut on_disk, ud);
        assert_eq!(on_disk.pub_key_ed25519, None);
        for other in [
            &b"#!/bin/sh\nssh_keys:\n  ed25519_public: ssh-ed25519 A\n"[..],
            b"#cloud-config\nusers: []\n  ed25519_public: ssh-ed25519 A\n",
        ] {
            let mut r = PhoneHome::default();
            fill_keys_from_user_data(&mut r, other);
            assert_eq!(r.pub_key_ed25519, None);
        }
    }

    #[test]
    fn hostnames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("hostname");
        std::fs::write(&p, "(none)\n").expect("write");
        assert_eq!(kernel_hostname(&p), None);
        std::fs::write(&p, "n001\n").expect("write");
        assert_eq!(kernel_hostname(&p).as_deref(), Some("n001"));
        assert_eq!(kernel_hostname(&dir.path().join("missing")), None);
    }

    #[test]
    fn report_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ssh_host_ed25519_key.pub"), "ssh-ed25519 AAAAC3Nz root@n001\n").expect("w");
        std::fs::write(dir.path().join("ssh_host_rsa_key.pub"), "ssh-rsa AAAAB3Nz root@n001\n").expect("w");
        std::fs::write(dir.path().join("ssh_host_ed25519_key"), "PRIVATE").expect("w");
        std::fs::write(dir.path().join("ssh_host_ecdsa_key.pub"), "  \n").expect("w");
        let r = build(b"instance-id: i-1\nlocal-hostname: n001\n", None, dir.path());
        assert_eq!(r.instance_id.as_deref(), Some("i-1"));
        assert_eq!(r.hostname.as_deref(), Some("n001"));
        assert_eq!(r.pub_key_ed25519.as_deref(), Some("ssh-ed25519 AAAAC3Nz root@n001"));
        assert_eq!(r.pub_key_rsa.as_deref(), Some("ssh-rsa AAAAB3Nz root@n001"));
        assert_eq!(r.pub_key_ecdsa, None);
        assert_eq!(r.pub_key_dsa, None);
        let json = serde_json::to_string(&r).expect("json");
        assert!(!json.contains("PRIVATE"), "{json}");
        let r = build(b"", Some("node-a".into()), &dir.path().join("none"));
        assert_eq!((r.instance_id, r.hostname.as_deref(), r.pub_key_rsa), (None, Some("node-a"), None));
    }
}
