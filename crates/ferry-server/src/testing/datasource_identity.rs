//! The datasource's caller is the node whose active tunnel owns the source address,
//! and nothing else (PRODUCT.md invariants 1 and 6): only that tunnel's node's
//! documents, no header read, and phone-home closes the caller's own tunnel only. The
//! root-only twin, through real WireGuard: `crates/ferry/tests/bootstrap.rs`
//! (the_datasource_answers_only_tunnels_and_only_with_their_own_node).

use super::*;

const MAC1: &str = "52:54:00:00:00:01";
const MAC2: &str = "52:54:00:00:00:02";

/// n1 and n2 (on their addresses alone), both enrolled: their tunnel addresses.
async fn two_tunnels() -> (TestServer, IpAddr, IpAddr) {
    let s = TestServer::start().await;
    let network = serde_json::json!({"identity": ["network"]});
    s.add_node("n1", MAC1, "192.0.2.11", network.clone(), None).await;
    s.add_node("n2", MAC2, "192.0.2.12", network, None).await;
    let a = s.enroll_by_address(ip("192.0.2.11"), MAC1).await;
    let b = s.enroll_by_address(ip("192.0.2.12"), MAC2).await;
    (s, a, b)
}

/// Whose meta-data a caller at `from` gets (`None`: refused with 403 `forbidden`).
async fn whose(s: &TestServer, from: IpAddr, req: Request<Body>) -> Option<String> {
    let a = s.datasource(from, req).await;
    if a.status == StatusCode::FORBIDDEN {
        assert_eq!(a.kind(), "forbidden", "{a:?}");
        return None;
    }
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let meta: serde_json::Value = serde_json::from_slice(&a.body).expect("meta-data is JSON");
    Some(meta["local-hostname"].as_str().expect("a host name").to_owned())
}

#[tokio::test]
async fn documents_go_only_to_an_active_tunnels_address_and_only_its_own_node() {
    let (s, a, b) = two_tunnels().await;
    let n = |v: &str| Some(v.to_owned());
    assert_eq!(whose(&s, a, get("/meta-data")).await, n("n1"));
    assert_eq!(whose(&s, b, get("/some/prefix/meta-data")).await, n("n2"), "a NoCloud seedfrom prefix");
    let mapped: IpAddr = match a {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    };
    assert_eq!(whose(&s, mapped, get("/meta-data")).await, n("n1"), "a dual-stack socket's form of A's address");
    for (name, value) in [
        ("x-forwarded-for", b.to_string()),
        ("x-forwarded-for", format!("{b}, {b}")),
        ("forwarded", format!("for={b}")),
        ("x-real-ip", b.to_string()),
    ] {
        assert_eq!(whose(&s, a, with_header(get("/meta-data"), name, &value)).await, n("n1"), "{name}: {value}");
        let stranger = ip("100.64.0.200");
        assert_eq!(whose(&s, stranger, with_header(get("/meta-data"), name, &a.to_string())).await, None);
    }
    assert_eq!(whose(&s, ip("192.0.2.11"), get("/meta-data")).await, None, "n1's provisioning address");
    assert_eq!(whose(&s, ip("100.64.0.200"), get("/user-data")).await, None, "an address with no tunnel");
    let unknown = s.datasource(a, get("/secrets")).await;
    assert_eq!((unknown.status, unknown.kind().as_str()), (StatusCode::NOT_FOUND, "not-found"));

    // Once A's tunnel is revoked, its address is nobody's.
    assert_eq!(s.admin(Some(0), request("DELETE", "/v1/tunnels/n1", "")).await.status, StatusCode::OK);
    assert_eq!(whose(&s, a, get("/meta-data")).await, None);
    assert_eq!(whose(&s, b, get("/meta-data")).await, n("n2"));
}

#[tokio::test]
async fn phone_home_closes_only_the_callers_own_tunnel() {
    let (s, a, b) = two_tunnels().await;
    let form = "instance_id=n2&hostname=n2&pub_key_ed25519=ssh-ed25519+AAAA+root%40n2";
    let post = |path: &str| {
        let mut r = request("POST", path, form);
        r.headers_mut().insert("content-type", "application/x-www-form-urlencoded".parse().unwrap());
        r
    };
    // From no tunnel: refused, nothing closed.
    let stranger = s.datasource(ip("100.64.0.200"), post("/phone-home/n2")).await;
    assert_eq!((stranger.status, stranger.kind().as_str()), (StatusCode::FORBIDDEN, "forbidden"));
    assert_eq!(s.active_tunnels().await, 2);

    // A claims to be n2 in every field it sends: A's own tunnel closes, B's stays.
    assert_eq!(s.datasource(a, post("/phone-home/n2")).await.status, StatusCode::OK);
    let left: Vec<String> = s.store.list_tunnels().await.unwrap().iter().map(|t| t.node.to_string()).collect();
    assert_eq!(left, ["n2"]);
    assert_eq!(whose(&s, a, get("/meta-data")).await, None, "A's tunnel is over");
    assert_eq!(whose(&s, b, get("/meta-data")).await, Some("n2".into()), "B is untouched");
    let n2 = NodeName::parse("n2").unwrap();
    assert!(s.store.boot_info(&n2).await.unwrap().is_none(), "nothing recorded as n2's boot");
    assert!(s.store.boot_info(&NodeName::parse("n1").unwrap()).await.unwrap().is_some(), "A's boot is A's");
    assert!(s.audit("node/n1").await.contains("reason=phone-home"), "{}", s.audit("node/n1").await);

    // Again from A (no tunnel now): refused.
    assert_eq!(s.datasource(a, post("/phone-home")).await.status, StatusCode::FORBIDDEN);
    assert_eq!(s.active_tunnels().await, 1);
}
