//! The remote admin listener: TLS (a self-signed certificate made on first start) and
//! bearer tokens with roles, tried on every admin route with no token, a wrong one, an
//! expired one, a revoked one and each role — what is not allowed is refused (401/403)
//! and changes nothing; what is allowed is audited under the token's name. Tokens are
//! shown once and appear in no log, listing or audit entry.

mod common;

use common::TestServer;

const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/v1/nodes", ""),
    ("GET", "/v1/nodes/n1", ""),
    ("GET", "/v1/profiles", ""),
    ("GET", "/v1/tunnels", ""),
    ("GET", "/v1/secrets", ""),
    ("GET", "/v1/audit", ""),
    ("GET", "/v1/tpm", ""),
    ("GET", "/v1/images", ""),
    ("GET", "/metrics", ""),
    ("DELETE", "/v1/tunnels/n1", ""),
    ("POST", "/v1/nodes/n1/tpm/approve", ""),
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

fn is_operation(method: &str, path: &str) -> bool {
    (method == "DELETE" && path.starts_with("/v1/tunnels/")) || path.ends_with("/tpm/approve")
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
