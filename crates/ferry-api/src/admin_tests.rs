//! The admin API's response shapes, pinned: admins' scripts read these (field names,
//! types and the order the server sends them in), so each is compared with the exact
//! JSON the server has always produced, and read back.

use super::*;
use serde::de::DeserializeOwned;

/// `value` serialises to exactly `json`, and `json` reads back to `value`.
fn pinned<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T, json: &str) {
    assert_eq!(serde_json::to_string(&value).unwrap(), json);
    assert_eq!(serde_json::from_str::<T>(json).unwrap(), value);
}

fn n1() -> NodeName {
    NodeName::parse("n1").unwrap()
}

#[test]
fn status() {
    pinned(Status { nodes: 2, profiles: 1, version: "0.1.0".into() }, r#"{"nodes":2,"profiles":1,"version":"0.1.0"}"#);
}

#[test]
fn server_info() {
    let info = ServerInfo {
        data_dir: "/var/lib/ferry".into(),
        provisioning_tls_pin: None,
        public_key: "S3rv3r=".into(),
        public_url: Some("http://10.0.0.1:8470".into()),
        server_address: "100.64.0.1".into(),
        server_id: "s1".into(),
        tunnel_network: "100.64.0.0/16".into(),
        setup: None,
    };
    pinned(
        info,
        r#"{"data_dir":"/var/lib/ferry","provisioning_tls_pin":null,"public_key":"S3rv3r=","public_url":"http://10.0.0.1:8470","server_address":"100.64.0.1","server_id":"s1","tunnel_network":"100.64.0.0/16"}"#,
    );
}

#[test]
fn tunnel_view() {
    let t = TunnelView {
        node: n1(),
        address: "100.64.0.2".into(),
        public_key: "K3y=".into(),
        age_secs: 3,
        expires_in_secs: 597,
        last_handshake: None,
        on_device: true,
        server: "s1".into(),
        mine: true,
    };
    pinned(
        t,
        r#"{"node":"n1","address":"100.64.0.2","public_key":"K3y=","age_secs":3,"expires_in_secs":597,"last_handshake":null,"on_device":true,"server":"s1","mine":true}"#,
    );
}

#[test]
fn boot_info_and_known_hosts() {
    let boot = BootInfo {
        node: n1(),
        booted_at: "2026-01-01T00:00:00Z".into(),
        address: "100.64.0.2".into(),
        instance_id: Some("n1".into()),
        hostname: None,
        fqdn: Some("n1.cluster".into()),
        boot_count: 1,
        host_keys: vec!["ssh-ed25519 AAAA root@n1".into()],
    };
    pinned(
        Some(boot.clone()),
        r#"{"node":"n1","booted_at":"2026-01-01T00:00:00Z","address":"100.64.0.2","instance_id":"n1","hostname":null,"fqdn":"n1.cluster","boot_count":1,"host_keys":["ssh-ed25519 AAAA root@n1"]}"#,
    );
    // An older server's answer (no fqdn) still reads.
    let old = r#"{"node":"n1","booted_at":"2026-01-01T00:00:00Z","address":"100.64.0.2","instance_id":"n1","hostname":null,"boot_count":1,"host_keys":["ssh-ed25519 AAAA root@n1"]}"#;
    assert_eq!(serde_json::from_str::<BootInfo>(old).unwrap(), BootInfo { fqdn: None, ..boot });
    pinned(None::<BootInfo>, "null");
    let hosts = vec![KnownHost {
        node: n1(),
        fqdn: Some("n1.cluster".into()),
        addresses: vec!["10.0.0.11".into()],
        key: "ssh-ed25519 AAAA root@n1".into(),
    }];
    pinned(hosts, r#"[{"node":"n1","fqdn":"n1.cluster","addresses":["10.0.0.11"],"key":"ssh-ed25519 AAAA root@n1"}]"#);
}

#[test]
fn audit_entry() {
    let e = AuditEntry {
        id: 7,
        at: "2026-01-01T00:00:00Z".into(),
        actor: "uid:0".into(),
        action: "node.add".into(),
        subject: "node/n1".into(),
        detail: String::new(),
    };
    pinned(
        e,
        r#"{"id":7,"at":"2026-01-01T00:00:00Z","actor":"uid:0","action":"node.add","subject":"node/n1","detail":""}"#,
    );
}

#[test]
fn tokens() {
    let made = TokenCreated {
        name: "ci".into(),
        role: ferry_core::access::Role::Viewer,
        token: Secret::new("ferry_x".into()),
    };
    assert!(!format!("{made:?}").contains("ferry_x"), "a new token never reaches a log through Debug");
    pinned(made, r#"{"name":"ci","role":"viewer","token":"ferry_x"}"#);
    let listed = TokenInfo {
        name: "ci".into(),
        role: ferry_core::access::Role::Viewer,
        created_at: "2026-01-01T00:00:00Z".into(),
        expires_at: None,
        state: "active".into(),
    };
    pinned(
        listed,
        r#"{"name":"ci","role":"viewer","created_at":"2026-01-01T00:00:00Z","expires_at":null,"state":"active"}"#,
    );
    // What `ferry token create` has always sent.
    let create: TokenCreate = serde_json::from_str(r#"{"expires_in_secs":null,"name":"ci","role":"viewer"}"#).unwrap();
    assert_eq!(create, TokenCreate { name: "ci".into(), role: "viewer".into(), expires_in_secs: None });
}

#[test]
fn listings() {
    let secret = SecretView { name: "munge.key".into(), scope: "global".into(), size: 1024, updated_at: "t".into() };
    let json = r#"{"name":"munge.key","scope":"global","size":1024,"updated_at":"t"}"#;
    pinned(secret, json);
    let tpm = TpmView {
        node: n1(),
        state: "pending".into(),
        fingerprint: "sha256:ab".into(),
        certified: false,
        updated_at: "t".into(),
        conflict: None,
    };
    let json = r#"{"node":"n1","state":"pending","fingerprint":"sha256:ab","certified":false,"updated_at":"t"}"#;
    assert_eq!(serde_json::to_string(&tpm).unwrap(), json, "no conflict: no field");
    let server = ServerView {
        id: "s1".into(),
        endpoint: "10.0.0.1:51820".into(),
        public_key: "K=".into(),
        sealing_key_id: "00ff".into(),
        started_at: "t".into(),
        heartbeat_age_secs: 2,
        alive: true,
        active_tunnels: 0,
        this: true,
    };
    let json = r#"{"id":"s1","endpoint":"10.0.0.1:51820","public_key":"K=","sealing_key_id":"00ff","started_at":"t","heartbeat_age_secs":2,"alive":true,"active_tunnels":0,"this":true}"#;
    assert_eq!(serde_json::to_string(&server).unwrap(), json);
    assert_eq!(serde_json::to_string(&Changed { changed: 1 }).unwrap(), r#"{"changed":1}"#);
}
