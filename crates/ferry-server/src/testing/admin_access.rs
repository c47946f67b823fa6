//! Who may use the admin API (PRODUCT.md invariant 10), on every route of
//! `ferry_api::routes::ROUTES`: on the remote listener a bearer token with a role — none,
//! a wrong, expired or revoked one gets 401; a role that may not gets 403 — and on the
//! unix socket the peer's uid. What is refused changes nothing. The root-only twins:
//! `crates/ferry/tests/threats.rs` (every_route_enforces_tokens_and_roles, over TLS) and
//! `admin_cli.rs` (admin_socket_refuses_non_root_peers, a real non-root process).

use super::*;
use ferry_api::routes::{Access, Method, ROUTES};

/// Each route's path for node, profile, image or secret `n1`, with a body that would do
/// something if it were let through.
fn calls() -> Vec<(&'static str, String, &'static str, Access)> {
    ROUTES
        .iter()
        .map(|r| {
            // Revoking a node's SSH certificates is an operator's to do and changes the
            // store: aimed at a node no one made, the handler answers 404 and nothing changes.
            let node = if r.path == ferry_api::routes::SSH_REVOCATION { "n0" } else { "n1" };
            let path = r.path.replace("{name}", "n1").replace("{node}", node);
            let body = match (r.method, r.path) {
                (Method::Post, "/v1/nodes") => r#"{"nodes":[{"name":"n9"}]}"#,
                (Method::Patch, "/v1/nodes") => r#"{"names":["n1"],"patch":{"settings":{"set":{"comment":"x"}}}}"#,
                (Method::Delete, "/v1/nodes") => r#"{"names":["n1"]}"#,
                (Method::Post, "/v1/profiles") => r#"{"profiles":[{"name":"p9"}]}"#,
                (Method::Put, "/v1/secrets/{name}") => r#"{"value":"eA=="}"#,
                (Method::Post, "/v1/tokens") => r#"{"name":"t9","role":"admin"}"#,
                (Method::Post, "/v1/nodes/{name}/tpm/approve") => {
                    r#"{"fingerprint":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}"#
                }
                _ => "",
            };
            (r.method.as_str(), path, body, r.access)
        })
        .collect()
}

/// n1 and a token of each kind.
async fn server(change: impl FnOnce(&mut Config)) -> TestServer {
    let s = TestServer::start_with(change).await;
    s.add_node("n1", "52:54:00:00:00:01", "192.0.2.11", serde_json::json!({}), None).await;
    s
}

/// What a caller can see of the inventory, tokens, tunnels and audit log.
async fn snapshot(s: &TestServer) -> String {
    fn json<T: serde::Serialize>(v: T) -> String {
        serde_json::to_string(&v).unwrap()
    }
    let st = &s.store;
    [
        json(st.list_nodes().await.unwrap()),
        json(st.list_profiles().await.unwrap()),
        json(st.list_secrets().await.unwrap()),
        json(st.list_tokens().await.unwrap()),
        format!("tunnels={} audit={}", s.active_tunnels().await, s.audit_rows().await),
    ]
    .join("\n")
}

#[tokio::test]
async fn every_remote_route_needs_a_valid_token_with_a_role_that_may() {
    let s = server(|_| {}).await;
    let viewer = s.token("ci-viewer", Role::Viewer, None).await;
    let operator = s.token("oncall", Role::Operator, None).await;
    let expired = s.token("old", Role::Admin, Some(ferry_store::now_secs() - 10)).await;
    let revoked = s.token("gone", Role::Admin, None).await;
    s.store.revoke_token("gone", &Actor("test".into())).await.unwrap();
    let before = snapshot(&s).await;

    for (method, path, body, access) in calls() {
        let what = format!("{method} {path}");
        for (who, token) in [
            ("none", None),
            ("wrong", Some("ferry_not-a-token")),
            ("expired", Some(&*expired)),
            ("revoked", Some(&*revoked)),
        ] {
            let a = s.remote(token, request(method, &path, body)).await;
            assert_eq!((a.status, a.kind().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{who}: {what}");
            assert_eq!(a.headers["www-authenticate"], "Bearer", "{who}: {what}");
        }
        for (role, token, may) in [
            ("viewer", &viewer, access == Access::Read),
            ("operator", &operator, matches!(access, Access::Read | Access::Operate)),
        ] {
            let a = s.remote(Some(token), request(method, &path, body)).await;
            if access == Access::LocalOnly {
                assert!(matches!(a.status.as_u16(), 403 | 404), "{role}: {what} is not served remotely: {a:?}");
            } else if may {
                // Let through: the handler answers (404 for the profile or image n1 no one made).
                assert!(!matches!(a.status.as_u16(), 401 | 403), "{role} may {what}: {a:?}");
            } else {
                assert_eq!((a.status, a.kind().as_str()), (StatusCode::FORBIDDEN, "forbidden"), "{role}: {what}");
            }
        }
    }
    assert_eq!(snapshot(&s).await, before, "nothing changed by what was refused, nor by the reads");
}

/// An admin token may do everything but manage tokens (unix socket only), under its
/// own name in the audit log.
#[tokio::test]
async fn an_admin_token_may_do_everything_but_manage_tokens() {
    let s = server(|_| {}).await;
    let admin = s.token("adm", Role::Admin, Some(ferry_store::now_secs() + 3600)).await;
    for (method, path, body, access) in calls() {
        let a = s.remote(Some(&admin), request(method, &path, body)).await;
        if access == Access::LocalOnly {
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{method} {path} is not served remotely: {a:?}");
        } else {
            assert!(!matches!(a.status.as_u16(), 401 | 403), "admin may {method} {path}: {a:?}");
        }
    }
    let log = s.audit("node/n9").await;
    assert!(log.contains("token:adm"), "the token's name is the actor: {log}");
    assert_eq!(s.store.list_tokens().await.unwrap().len(), 1, "no token made remotely");
}

/// The unix socket admits root, the server's own user and `admin_users`, each as its
/// uid in the audit log; any other uid — or none the kernel could tell — gets 403 on
/// every route, tokens included, and changes nothing.
#[tokio::test]
async fn the_admin_socket_admits_only_root_the_server_user_and_admin_users() {
    let s = server(|c| c.admin_users = vec!["4242".into()]).await;
    let before = snapshot(&s).await;
    for uid in [Some(1000), Some(65534), None] {
        for (method, path, body, _) in calls() {
            let a = s.admin(uid, request(method, &path, body)).await;
            assert_eq!(
                (a.status, a.kind().as_str()),
                (StatusCode::FORBIDDEN, "forbidden"),
                "uid {uid:?}: {method} {path}"
            );
        }
    }
    assert_eq!(snapshot(&s).await, before, "nothing changed");
    assert_eq!(s.admin(Some(0), get("/v1/nodes")).await.status, StatusCode::OK, "root");
    let euid = nix::unistd::geteuid().as_raw();
    assert_eq!(s.admin(Some(euid), get("/v1/nodes")).await.status, StatusCode::OK, "the server's own user");
    let added = s.admin(Some(4242), request("POST", "/v1/nodes", r#"{"nodes":[{"name":"n9"}]}"#)).await;
    assert_eq!(added.status, StatusCode::OK, "a configured admin user: {added:?}");
    assert!(s.audit("node/n9").await.contains("uid:4242"), "the uid is the actor");
    let tokens = s.admin(Some(4242), request("POST", "/v1/tokens", r#"{"name":"t9","role":"viewer"}"#)).await;
    assert_eq!(tokens.status, StatusCode::OK, "tokens are managed on the socket: {tokens:?}");
}
