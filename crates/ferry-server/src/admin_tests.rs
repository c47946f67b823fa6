//! The admin routers serve exactly the routes of `ferry_api::routes::ROUTES`.

use crate::testing::{request, Answer, TestServer};
use axum::http::StatusCode;
use ferry_api::routes::{Access, ROUTES};
use ferry_store::Role;

/// Whether the router has no such route: axum's own 404 or 405 have an empty body,
/// a handler's errors a JSON one.
fn unrouted(a: &Answer) -> bool {
    matches!(a.status, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) && a.body.is_empty()
}

#[tokio::test]
async fn the_routers_serve_every_route_of_the_table() {
    let s = TestServer::start().await;
    s.add_node("n1", "52:54:00:00:00:01", "192.0.2.11", serde_json::json!({}), None).await;
    let token = s.token("t", Role::Admin, None).await;
    let local = |method: &str, path: &str| s.admin(Some(0), request(method, path, ""));
    let remote = |method: &str, path: &str| s.remote(Some(&token), request(method, path, ""));
    assert!(unrouted(&local("GET", "/v1/nope").await), "the probe tells a missing route");
    for r in ROUTES {
        let path = r.path.replace("{name}", "n1").replace("{node}", "n1");
        let method = r.method.as_str();
        assert!(!unrouted(&local(method, &path).await), "the unix socket serves {method} {}", r.path);
        let remote_only_lacks = r.access == Access::LocalOnly;
        assert_eq!(unrouted(&remote(method, &path).await), remote_only_lacks, "remote listener: {method} {}", r.path);
    }
}
