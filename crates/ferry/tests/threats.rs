//! The threat suite (PRODUCT.md invariants 9-11): what a provisioning-network attacker
//! sends, byte for byte, and the proof that each attempt gets a clear refusal and
//! changes nothing — no tunnel, no device peer, no nonce left behind, no address taken,
//! no admin change without the right token. (Floods and slow clients: limits.rs; TPM
//! forgeries: tpm.rs; enrollment hijack, replay and phone-home for another node:
//! bootstrap.rs; secret values in no log, audit, metrics or admin output: secrets.rs.)

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::cluster::Cluster;
use common::eventually;
use common::raw::{challenge, in_netns, post, post_bytes};
use common::TestServer;

/// Limits high enough that the per-source rate limit never hides what is tested here.
const UNLIMITED: &str = "enroll_rate_per_source = 100000\nenroll_burst_per_source = 100000\n";

fn enroll_body(mac: &str, key: &str, nonce: &str) -> String {
    serde_json::json!({"mac": mac, "public_key": key, "nonce": nonce}).to_string()
}

fn fresh_key() -> String {
    ferry_wg::PrivateKey::generate().public_key().to_base64()
}

#[test]
fn malformed_bodies_are_clear_errors_and_change_nothing() {
    common::require_root();
    let c = Cluster::with_provisioning(1, UNLIMITED);
    c.add_nodes(&["--identity", "network"]);
    let n = &c.nodes[0];
    let audit_before = c.server.json(&["audit", "--limit", "100000", "--json"]).as_array().unwrap().len();
    let results = in_netns(&n.ns.name, || {
        let nonce = challenge().json()["nonce"].as_str().unwrap().to_owned();
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("bad base64 key", enroll_body(&n.mac, "not*base64", &nonce).into_bytes()),
            ("31-byte key", enroll_body(&n.mac, &B64.encode([7u8; 31]), &nonce).into_bytes()),
            ("bad MAC", enroll_body("52:54:00:zz:00:01", &fresh_key(), &nonce).into_bytes()),
            ("bad nonce", enroll_body(&n.mac, &fresh_key(), "AAAA").into_bytes()),
            ("invalid UTF-8", b"{\"mac\": \"\xff\xfe\", \"public_key\": \"x\", \"nonce\": \"y\"}".to_vec()),
            ("deep JSON", deep.into_bytes()),
            ("unknown field", br#"{"mac":"52:54:00:00:01:01","public_key":"x","nonce":"y","admin":true}"#.to_vec()),
            ("not JSON", b"mac=52:54:00:00:01:01".to_vec()),
            ("empty", Vec::new()),
            ("oversized", vec![b' '; 17 * 1024]),
        ];
        let mut out = Vec::new();
        for (what, body) in cases {
            let r = post_bytes("/v1/enroll", "", &body);
            out.push((what, r.status, r.body.clone()));
            let t = post_bytes("/v1/enroll/tpm", "", &body);
            out.push((what, t.status, t.body.clone()));
        }
        // The nonce survived all of it (malformed requests never reach the nonce), and
        // the node still enrolls with it: nothing was consumed or changed.
        let good = post("/v1/enroll", "", &enroll_body(&n.mac, &fresh_key(), &nonce));
        (out, good.status)
    });
    let (cases, good) = results;
    for (what, status, body) in &cases {
        assert!(
            (400..500).contains(status) && *status != 401,
            "{what}: a clear 4xx, not a refusal or a crash: {status} {body}"
        );
        if *status != 413 {
            assert!(body.contains("\"error\""), "{what}: a JSON error that says what is wrong: {body}");
        }
    }
    assert!(cases.iter().any(|(w, s, _)| *w == "oversized" && *s == 413), "{cases:?}");
    let audit_after = c.server.json(&["audit", "--limit", "100000", "--json"]).as_array().unwrap().len();
    let audit = c.server.ok(&["audit", "--limit", "10"]);
    assert_eq!(audit_after, audit_before + 2, "malformed requests write no audit rows (2 are the good one's): {audit}");
    assert!(!audit.contains("enroll.refused"), "{audit}");
    assert_eq!(good, 200, "the untouched nonce still enrolls the node");
    c.server.ok(&["tunnel", "revoke", "n1"]);
    eventually(10, "the tunnel to go", || c.server.wg_peers().is_empty());
    c.server.assert_nothing_granted();
}

#[test]
fn oversized_request_heads_are_refused() {
    common::require_root();
    let c = Cluster::with_provisioning(1, UNLIMITED);
    let (big, normal) = in_netns(&c.nodes[0].ns.name, || {
        let huge = format!("X-Padding: {}\r\n", "a".repeat(100 * 1024));
        let big = post("/v1/enroll/challenge", &huge, "").status;
        (big, challenge().status)
    });
    assert_eq!(big, 431, "a 100 KiB header is refused");
    assert_eq!(normal, 200, "and the server serves the next request");
}

#[test]
fn a_challenge_flood_holds_only_its_share_of_nonces_and_others_still_get_theirs() {
    common::require_root();
    let c = Cluster::with_provisioning(
        2,
        &format!("{UNLIMITED}max_pending_nonces = 50\nmax_pending_nonces_per_source = 20\nnonce_ttl_secs = 2\n"),
    );
    c.add_nodes(&["--identity", "network"]);
    let (flooder, other) = (c.nodes[0].ns.name.clone(), c.nodes[1].ns.name.clone());
    let replies: Vec<_> = in_netns(&flooder, || (0..60).map(|_| challenge()).collect());
    assert!(replies[..20].iter().all(|r| r.status == 200), "{replies:?}");
    for r in &replies[20..] {
        // Its share is taken: 429 with a retry in a second, and no nonce.
        assert_eq!((r.status, r.retry_after), (429, Some(1)), "{r:?}");
        assert_eq!(r.json()["kind"], "rate-limited", "{r:?}");
    }
    // The table is not full for anyone else, however many the flooder asks for.
    let others: Vec<u16> = in_netns(&other, || (0..20).map(|_| challenge().status).collect());
    assert!(others.iter().all(|s| *s == 200), "{others:?}");
    c.server.assert_nothing_granted();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(in_netns(&flooder, challenge).status, 200, "expired nonces free the source's share");
}

#[test]
fn a_full_address_pool_answers_503_and_allocates_nothing() {
    common::require_root();
    // A /30 has one node address (100.64.0.2) besides the server's.
    let c = Cluster::with_wireguard(2, "backend = \"userspace\"\nnetwork = \"100.64.0.0/30\"\n", |_| None);
    c.add_nodes(&["--identity", "network"]);
    let first = c.hold(0);
    let n2 = &c.nodes[1];
    let full = in_netns(&n2.ns.name, || {
        let nonce = challenge().json()["nonce"].as_str().unwrap().to_owned();
        post("/v1/enroll", "", &enroll_body(&n2.mac, &fresh_key(), &nonce))
    });
    assert_eq!(full.status, 503, "no address left for n2: {full:?}");
    let tunnels = c.server.json(&["tunnel", "list", "--json"]);
    assert_eq!(tunnels.as_array().unwrap().len(), 1, "only n1's tunnel: {tunnels}");
    assert_eq!(c.server.wg_peers().len(), 1);
    let log = c.server.log_text();
    assert!(log.contains("tunnel address pool exhausted"), "the operator is told: {log}");
    drop(first);
    c.server.ok(&["tunnel", "revoke", "n1"]);
    let out = c.agent(1, "fetch").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "the freed address serves n2: {}", String::from_utf8_lossy(&out.stderr));
    eventually(10, "all tunnels closed", || c.server.active_tunnels() == 0 && c.server.wg_peers().is_empty());
}

#[test]
fn forged_proxy_headers_change_no_identity_on_any_endpoint() {
    common::require_root();
    let c = Cluster::with_provisioning(2, UNLIMITED);
    c.add_nodes(&["--identity", "network"]);
    let (victim, attacker) = (&c.nodes[0], &c.nodes[1]);
    let forged = [
        format!("X-Forwarded-For: {}\r\n", victim.ip),
        format!("Forwarded: for={}\r\n", victim.ip),
        format!("X-Real-IP: {}\r\n", victim.ip),
    ];
    let script = |h: &str| {
        let r = common::raw::exchange(
            format!("GET /boot/ipxe?mac={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{h}\r\n", victim.mac).as_bytes(),
        );
        (r.status, r.body)
    };
    let (enrolls, plain, scripts) = in_netns(&attacker.ns.name, || {
        let mut enrolls = Vec::new();
        let mut scripts = Vec::new();
        let plain = script("");
        for h in &forged {
            // Enrolling as the victim (network factor) from the attacker's address.
            let nonce = challenge().json()["nonce"].as_str().unwrap().to_owned();
            enrolls.push(post("/v1/enroll", h, &enroll_body(&victim.mac, &fresh_key(), &nonce)).status);
            // The victim's boot script, asked for with the victim's MAC and a forged source.
            scripts.push(script(h));
        }
        (enrolls, plain, scripts)
    });
    assert_eq!(enrolls, [401, 401, 401], "the network factor ignores forged headers");
    let audit = c.server.ok(&["audit", "--node", "n1", "--limit", "100"]);
    assert_eq!(audit.matches(&format!("from={} reason=network factor", attacker.ip)).count(), 3, "{audit}");
    // Boot scripts carry no secret and are keyed by MAC (like iPXE): a forged header
    // changes nothing in the answer.
    assert_eq!(plain.0, 200, "{plain:?}");
    for s in &scripts {
        assert_eq!(s, &plain, "a forged header changed the boot script");
    }
    c.server.assert_nothing_granted();
}

// ---- The remote admin listener: TLS and bearer tokens with roles, tried on every
// admin route with no token, a wrong one, an expired one, a revoked one and each role —
// what is not allowed is refused (401/403) and changes nothing; what is allowed is
// audited under the token's name. Tokens appear in no log, listing or audit entry.

const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/v1/nodes", ""),
    ("GET", "/v1/nodes/n1", ""),
    ("GET", "/v1/profiles", ""),
    ("GET", "/v1/tunnels", ""),
    ("GET", "/v1/secrets", ""),
    ("GET", "/v1/audit", ""),
    ("GET", "/v1/tpm", ""),
    ("GET", "/v1/images", ""),
    ("GET", "/v1/servers", ""),
    ("GET", "/metrics", ""),
    ("DELETE", "/v1/tunnels/n1", ""),
    (
        "POST",
        "/v1/nodes/n1/tpm/approve",
        r#"{"fingerprint":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}"#,
    ),
    ("PATCH", "/v1/nodes", r#"{"names":["n1"],"patch":{"settings":{"set":{"comment":"changed"}}}}"#),
    ("POST", "/v1/nodes", r#"{"nodes":[{"name":"n9"}]}"#),
    ("DELETE", "/v1/nodes", r#"{"names":["n1"]}"#),
    ("POST", "/v1/profiles", r#"{"profiles":[{"name":"p9"}]}"#),
    ("PUT", "/v1/secrets/x", r#"{"value":"eA=="}"#),
    ("PUT", "/v1/nodes/n1/tpm", r#"{"ek_pem":"x"}"#),
];

fn is_read(method: &str) -> bool {
    method == "GET"
}

/// What an operator may do besides reading (approving a TPM is the admin's: it makes
/// a machine a node's identity).
fn is_operation(method: &str, path: &str) -> bool {
    method == "DELETE" && path.starts_with("/v1/tunnels/")
}

/// `curl` over TLS from inside the server's namespace, pinning its certificate.
fn call(s: &TestServer, token: Option<&str>, method: &str, path: &str, body: &str) -> u16 {
    let cert = s.dir.path().join("data/remote-admin.crt");
    let mut c = s.netns.cmd("curl");
    c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10", "--cacert"]).arg(&cert).args([
        "-X",
        method,
        "-H",
        "Content-Type: application/json",
    ]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if !body.is_empty() {
        c.args(["--data", body]);
    }
    let out = c.arg(format!("https://127.0.0.1:8472{path}")).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

fn token(s: &TestServer, name: &str, role: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", name, "--role", role];
    args.extend_from_slice(extra);
    s.ok(&args).trim().to_owned()
}

#[test]
fn every_route_enforces_tokens_and_roles() {
    common::require_root();
    let s = TestServer::start_with("[remote_admin]\nlisten = \"127.0.0.1:8472\"\n", "127.0.0.1:8470");
    s.ok(&["node", "add", "n1"]);
    let viewer = token(&s, "ci-viewer", "viewer", &[]);
    let operator = token(&s, "oncall", "operator", &[]);
    let admin = token(&s, "adm", "admin", &["--expires", "1h"]);
    let expired = token(&s, "old", "admin", &["--expires", "1s"]);
    let revoked = token(&s, "gone", "admin", &[]);
    s.ok(&["token", "revoke", "gone"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let listed = s.json(&["token", "list", "--json"]);
    let state = |n: &str| listed.as_array().unwrap().iter().find(|t| t["name"] == n).unwrap()["state"].clone();
    assert_eq!((state("old"), state("gone"), state("adm")), ("expired".into(), "revoked".into(), "active".into()));
    assert!(s.fails(&["token", "create", "adm", "--role", "admin"]).contains("exists"));

    let audit_rows = || s.json(&["audit", "--limit", "100000", "--json"]).as_array().unwrap().len();
    let before = (s.ok(&["node", "list", "--json"]), s.ok(&["profile", "list", "--json"]), s.ok(&["secret", "list"]));
    let rows_before = audit_rows();

    for &(method, path, body) in ROUTES {
        for (who, t) in [
            ("none", None),
            ("wrong", Some("ferry_not-a-token")),
            ("expired", Some(expired.as_str())),
            ("revoked", Some(revoked.as_str())),
        ] {
            assert_eq!(call(&s, t, method, path, body), 401, "{who} token: {method} {path}");
        }
        let v = call(&s, Some(&viewer), method, path, body);
        if is_read(method) {
            assert_eq!(v, 200, "viewer reads {method} {path}");
        } else {
            assert_eq!(v, 403, "viewer may not {method} {path}");
        }
        let o = call(&s, Some(&operator), method, path, body);
        if is_read(method) || is_operation(method, path) {
            assert!(o != 401 && o != 403, "operator may {method} {path}: {o}");
        } else {
            assert_eq!(o, 403, "operator may not {method} {path}");
        }
    }
    let after = (s.ok(&["node", "list", "--json"]), s.ok(&["profile", "list", "--json"]), s.ok(&["secret", "list"]));
    assert_eq!(before, after, "nothing changed by what was refused");
    assert_eq!(audit_rows(), rows_before, "refused calls and reads write no audit rows");

    // The admin role may change things, under its own name.
    assert_eq!(call(&s, Some(&admin), "POST", "/v1/nodes", r#"{"nodes":[{"name":"n9"}]}"#), 200);
    assert_eq!(call(&s, Some(&admin), "PUT", "/v1/secrets/x", r#"{"value":"eA=="}"#), 200);
    let audit = s.ok(&["audit", "--limit", "20"]);
    assert!(audit.contains("token:adm") && audit.contains("node/n9"), "{audit}");
    // Tokens are not managed remotely, and plain HTTP gets nothing.
    assert_eq!(call(&s, Some(&admin), "GET", "/v1/tokens", ""), 404);
    let plain = s.netns.cmd("curl").args(["-s", "-m", "5", "http://127.0.0.1:8472/v1/nodes"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("n1"), "no API over plain HTTP");

    // The tokens themselves are nowhere but in the hands they were given to.
    let mut seen = s.log_text();
    for args in [vec!["token", "list", "--json"], vec!["audit", "--limit", "1000", "--json"]] {
        seen.push_str(&s.ok(&args));
    }
    for t in [&viewer, &operator, &admin, &expired, &revoked] {
        assert!(t.starts_with("ferry_"), "{t}");
        assert!(!seen.contains(t.as_str()), "a token leaked");
    }
}
