//! The admin routers serve exactly the routes of `ferry_api::routes::ROUTES`.

use super::*;
use crate::tunnels::tests::RecordingDevice;
use axum::body::Body;
use ferry_api::routes::{Access, ROUTES};
use ferry_core::tunnel::TunnelNetwork;
use ferry_store::{Sealer, SqlStore};
use http_body_util::BodyExt;
use tower::ServiceExt;

const TOKEN: &str = "ferry_router-test";

/// An admin state over a SQLite store holding node n1 and an admin token.
async fn state(dir: &std::path::Path) -> AdminState {
    let store: Arc<dyn Store> =
        Arc::new(SqlStore::open_sqlite(&dir.join("ferry.db"), Sealer::ephemeral()).await.unwrap());
    let actor = Actor("test".into());
    let n1 = ferry_api::admin::NewNode {
        name: NodeName::parse("n1").unwrap(),
        profiles: vec![],
        settings: Default::default(),
        asset_tag: None,
    };
    store.add_nodes(AddNodes { nodes: vec![n1] }, &actor).await.unwrap();
    store.create_token("t", ferry_store::Role::Admin, &crate::remote::token_hash(TOKEN), None, &actor).await.unwrap();
    let network = TunnelNetwork::parse("100.64.0.0/24").unwrap();
    let tunnels =
        crate::tunnels::TunnelManager::new(store.clone(), Box::new(RecordingDevice::default()), network, "s1".into());
    AdminState {
        store,
        allowed_uids: Arc::new(HashSet::from([0])),
        tunnels: Arc::new(tunnels),
        server_public_key: ferry_wg::PrivateKey::generate().public_key(),
        data_dir: dir.to_path_buf(),
        public_url: None,
        tpm: Arc::new(crate::tpm::TpmPolicy::load(&Default::default()).unwrap()),
        provisioning_tls_pin: None,
        lost_after_secs: 60,
        setup: Arc::new(crate::setup::describe(&Default::default(), ferry_wg::BackendKind::Userspace)),
    }
}

/// Whether the router has no such route: axum's own 404 or 405 have an empty body,
/// a handler's errors a JSON one.
async fn unrouted(app: &Router, method: &str, path: &str) -> bool {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(ConnectInfo(PeerCred { uid: Some(0), pid: None }));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    matches!(status, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) && body.is_empty()
}

#[tokio::test]
async fn the_routers_serve_every_route_of_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path()).await;
    let (local, remote) = (router(s.clone()), remote_router(s));
    assert!(unrouted(&local, "GET", "/v1/nope").await, "the probe tells a missing route");
    for r in ROUTES {
        let path = r.path.replace("{name}", "n1").replace("{node}", "n1");
        let method = r.method.as_str();
        assert!(!unrouted(&local, method, &path).await, "the unix socket serves {method} {}", r.path);
        let remote_only_lacks = r.access == Access::LocalOnly;
        assert_eq!(unrouted(&remote, method, &path).await, remote_only_lacks, "remote listener: {method} {}", r.path);
    }
}
