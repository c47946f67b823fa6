//! Forwarding headers change no caller (PRODUCT.md invariant 1, OpenCHAMI's flaw): on
//! the provisioning listener the caller is the TCP peer — unless that peer is a
//! configured trusted proxy — for the network factor, the rate limits and the boot
//! scripts alike. (The datasource reads no header at all: `datasource_identity`.) The
//! root-only twin: `crates/ferry/tests/threats.rs`
//! (forged_proxy_headers_change_no_identity_on_any_endpoint).

use super::*;

const MAC2: &str = "52:54:00:00:00:02";
const VICTIM: &str = "192.0.2.12";

/// Each way of claiming another address, as a provisioning-network attacker sends it.
fn forged(victim: &str) -> [(&'static str, String); 4] {
    [
        ("x-forwarded-for", victim.to_owned()),
        ("x-forwarded-for", format!("{victim}, {victim}")),
        ("forwarded", format!("for={victim}")),
        ("x-real-ip", victim.to_owned()),
    ]
}

/// n2 enrolls on its address alone (opted in): the factor a forged header would beat.
async fn server(change: impl FnOnce(&mut Config)) -> TestServer {
    let s = TestServer::start_with(change).await;
    s.add_node("n2", MAC2, VICTIM, serde_json::json!({"identity": ["network"]}), None).await;
    s
}

#[tokio::test]
async fn forged_forwarding_headers_do_not_make_an_attacker_the_node() {
    let s = server(|_| {}).await;
    let attacker = ip("192.0.2.66");
    for (name, value) in forged(VICTIM) {
        let nonce =
            s.provisioning(attacker, with_header(request("POST", "/v1/enroll/challenge", ""), name, &value)).await;
        let a = Attempt { key: PrivateKey::generate(), nonce: nonce.json()["nonce"].as_str().unwrap().to_owned() };
        let body = serde_json::to_vec(&a.request(MAC2, Proofs::default())).unwrap();
        let answer = s.provisioning(attacker, with_header(request("POST", "/v1/enroll", body), name, &value)).await;
        assert_eq!((answer.status, answer.kind().as_str()), (StatusCode::UNAUTHORIZED, "refused"), "{name}: {value}");
    }
    let log = s.audit("node/n2").await;
    assert_eq!(log.matches("reason=network factor").count(), 4, "{log}");
    assert_eq!(log.matches("(came from 192.0.2.66)").count(), 4, "the TCP peer, every time:\n{log}");
    s.assert_nothing_granted().await;
}

/// The control: behind a configured trusted proxy, the proxy's word counts (so the
/// refusals above are the headers being ignored, not the harness losing them).
#[tokio::test]
async fn behind_a_trusted_proxy_the_right_most_untrusted_hop_is_the_caller() {
    let proxy = ip("192.0.2.5");
    let s = server(|c| c.provisioning.trusted_proxies = vec![proxy]).await;
    let nonce = s.challenge(proxy).await;
    let a = Attempt { key: PrivateKey::generate(), nonce };
    let body = serde_json::to_vec(&a.request(MAC2, Proofs::default())).unwrap();
    let hops = format!("203.0.113.9, {VICTIM}");
    let answer =
        s.provisioning(proxy, with_header(request("POST", "/v1/enroll", body), "x-forwarded-for", &hops)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(s.audit("node/n2").await.contains(&format!("enroll.accepted from={VICTIM} ")));
}

/// A flooding source cannot buy a fresh rate-limit bucket with a forged header.
#[tokio::test]
async fn a_forged_header_buys_no_fresh_rate_limit_bucket() {
    let s = server(|c| {
        c.provisioning.enroll_rate_per_source = 0.1;
        c.provisioning.enroll_burst_per_source = 3;
    })
    .await;
    let attacker = ip("192.0.2.66");
    for _ in 0..3 {
        assert_eq!(s.provisioning(attacker, request("POST", "/v1/enroll/challenge", "")).await.status, StatusCode::OK);
    }
    for (i, (name, _)) in forged(VICTIM).into_iter().enumerate() {
        let claimed = format!("198.51.100.{i}");
        let a =
            s.provisioning(attacker, with_header(request("POST", "/v1/enroll/challenge", ""), name, &claimed)).await;
        assert_eq!((a.status, a.kind().as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate-limited"), "{name}");
        assert!(a.headers.contains_key("retry-after"));
    }
    assert_eq!(s.challenge(ip(VICTIM)).await.len(), 44, "the node itself still gets its challenge");
}

/// Boot scripts carry no secret and are keyed by MAC (as iPXE asks): a forged header
/// changes nothing in the answer.
#[tokio::test]
async fn forged_headers_change_no_boot_script() {
    let s = server(|_| {}).await;
    let attacker = ip("192.0.2.66");
    for path in [format!("/boot/ipxe?mac={MAC2}"), format!("/boot/grub?mac={MAC2}"), "/boot/ipxe".into()] {
        let plain = s.provisioning(attacker, get(&path)).await;
        assert_eq!(plain.status, StatusCode::OK, "{path}: {plain:?}");
        for (name, value) in forged(VICTIM) {
            let a = s.provisioning(attacker, with_header(get(&path), name, &value)).await;
            assert_eq!((a.status, a.text()), (plain.status, plain.text()), "{path} with {name}: {value}");
        }
    }
}
