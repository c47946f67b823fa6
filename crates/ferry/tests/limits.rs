//! Limits on the provisioning listener (PRODUCT.md invariant 11), against a real server
//! in a namespace cluster: rate limits per source and their Retry-After, slow clients,
//! body size, and an agent that is throttled and still enrolls. Every test also checks
//! that what was refused changed nothing: no tunnel, no device peer, no audit row.
//!
//! The cap on enrollments in progress is proven at unit level, through the real
//! middleware with a handler that holds its slot
//! (`ferry-server` `limits::tests::a_full_house_of_enrollments_answers_503_and_runs_nothing`):
//! a real enrollment is over in milliseconds, so holding one from outside would be a race.

mod common;

use common::cluster::{Cluster, SERVER_IP};
use common::eventually;
use common::raw::{challenge, connect, exchange, get, in_netns, parse, post, Reply};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A cluster of `nodes` registered nodes whose server has these `[provisioning]` keys.
fn cluster(nodes: usize, provisioning: &str) -> Cluster {
    let c = Cluster::with_provisioning(nodes, provisioning);
    c.add_nodes(&["--identity", "network"]);
    c
}

fn audit_rows(c: &Cluster) -> usize {
    c.server.json(&["audit", "--limit", "100000", "--json"]).as_array().map_or(0, |a| a.len())
}

fn active_tunnels(c: &Cluster) -> usize {
    c.server.json(&["tunnel", "list", "--json"]).as_array().map_or(0, |a| a.len())
}

fn assert_nothing_granted(c: &Cluster) {
    assert_eq!(active_tunnels(c), 0, "no tunnel");
    assert!(c.server.wg_peers().is_empty(), "no device peer: {:?}", c.server.wg_peers());
}

/// The server's rate-limit log lines (at most one per second per source).
fn throttle_log_lines(c: &Cluster) -> usize {
    c.server.log_text().lines().filter(|l| l.contains("over the rate limit")).count()
}

fn assert_throttled(r: &Reply) {
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.retry_after.is_some_and(|s| s >= 1), "Retry-After in whole seconds: {r:?}");
    assert_eq!(r.json()["kind"], "rate-limited", "{r:?}");
}

#[test]
fn a_challenge_flood_from_one_source_gets_429_while_others_and_boot_files_are_served() {
    let c = cluster(2, "enroll_rate_per_source = 0.5\nenroll_burst_per_source = 5");
    let audit_before = audit_rows(&c);
    let (n0, n1) = (&c.nodes[0].ns.name, &c.nodes[1].ns.name);

    // 40 challenges from the first node's namespace, each with a different forged X-Forwarded-For:
    // the peer is not a trusted proxy, so the header does not make them other sources.
    let start = Instant::now();
    let replies: Vec<Reply> = in_netns(n0, || {
        (0..40).map(|i| post("/v1/enroll/challenge", &format!("X-Forwarded-For: 198.18.7.{i}\r\n"), "")).collect()
    });
    let elapsed = start.elapsed();
    let admitted = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status != 200).collect();
    println!("challenge flood: {admitted} admitted, {} refused in {elapsed:?}", refused.len());
    assert!(replies[..5].iter().all(|r| r.status == 200), "the burst is served: {:?}", &replies[..5]);
    // The burst, plus one token per 2 s.
    assert!(admitted <= 5 + (elapsed.as_secs_f64() * 0.5).ceil() as usize, "{admitted} admitted");
    refused.iter().for_each(|r| assert_throttled(r));
    let wait = refused[0].retry_after.unwrap();
    assert!(wait <= 4, "a token every 2 s, room for two steps: {wait}");

    // Another node is served, and boot scripts are not limited for anyone.
    in_netns(n1, || assert_eq!(challenge().status, 200));
    in_netns(n0, || {
        for _ in 0..20 {
            let r = get("/boot/ipxe");
            assert_eq!(r.status, 200, "{r:?}");
        }
    });

    // Nothing changed; the log has at most one line per second for the source.
    assert_nothing_granted(&c);
    assert_eq!(audit_rows(&c), audit_before, "no audit row for a refused request");
    let lines = throttle_log_lines(&c);
    assert!((1..=elapsed.as_secs() as usize + 2).contains(&lines), "{lines} log lines for {:?}", elapsed);

    // After Retry-After the source is served again.
    std::thread::sleep(Duration::from_secs(wait));
    in_netns(n0, || assert_eq!(challenge().status, 200, "served after Retry-After"));
}

#[test]
fn an_enroll_flood_is_refused_without_consuming_the_nonce_or_writing_the_audit_log() {
    let c = cluster(2, "enroll_rate_per_source = 0.5\nenroll_burst_per_source = 5");
    let n0 = &c.nodes[0];
    let key = ferry_wg::PrivateKey::generate().public_key();
    let body = |nonce: &str| {
        serde_json::json!({"mac": n0.mac, "public_key": key.to_base64(), "nonce": nonce, "proofs": {}, "mode": "fetch"})
            .to_string()
    };
    let audit_before = audit_rows(&c);
    let start = Instant::now();
    let (nonce, flood, good) = in_netns(&n0.ns.name, || {
        let nonce = challenge().json()["nonce"].as_str().unwrap().to_owned();
        // Malformed bodies and well-formed ones with nonces never issued, alternately.
        let flood: Vec<Reply> = (0..40)
            .map(|i| {
                let b = if i % 2 == 0 { "{\"mac\":".to_owned() } else { body(&base64_32(i)) };
                post("/v1/enroll", "", &b)
            })
            .collect();
        // The node's real enrollment, with the real nonce, while the source is throttled.
        let good = post("/v1/enroll", "", &body(&nonce));
        (nonce, flood, good)
    });
    let elapsed = start.elapsed();
    let admitted: Vec<&Reply> = flood.iter().filter(|r| r.status != 429).collect();
    let refused = flood.len() - admitted.len();
    println!("enroll flood: {} admitted (400/401), {refused} refused with 429 in {elapsed:?}", admitted.len());
    // The challenge took one token of the burst of 5.
    assert!(admitted.len() <= 4 + (elapsed.as_secs_f64() * 0.5).ceil() as usize, "{admitted:?}");
    assert!(admitted.iter().all(|r| r.status == 400 || r.status == 401), "{admitted:?}");
    flood.iter().filter(|r| r.status == 429).for_each(assert_throttled);
    assert_throttled(&good);

    // Only admitted, well-formed attempts were audited (as refusals); nothing granted.
    let audited = admitted.iter().filter(|r| r.status == 401).count();
    assert_eq!(audit_rows(&c), audit_before + audited, "audit rows: only the {audited} admitted refusals");
    assert_nothing_granted(&c);

    // The 429 consumed nothing: after Retry-After the same nonce still enrolls.
    std::thread::sleep(Duration::from_secs(good.retry_after.unwrap()));
    let r = in_netns(&n0.ns.name, || post("/v1/enroll", "", &body(&nonce)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(c.server.wg_peers(), [key.to_base64()]);
    c.server.ok(&["tunnel", "revoke", &n0.name]);
    eventually(10, "the tunnel to close", || active_tunnels(&c) == 0 && c.server.wg_peers().is_empty());
}

/// 32 bytes, base64: a nonce the server never issued.
fn base64_32(i: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([i; 32])
}

#[test]
fn slow_and_oversized_clients_are_cut_off_while_a_normal_request_is_served() {
    let c = cluster(2, "header_timeout_secs = 2\nrequest_timeout_secs = 3");
    let audit_before = audit_rows(&c);
    let n0 = c.nodes[0].ns.name.clone();
    std::thread::scope(|s| {
        // Slowloris: the headers, one byte per second.
        let slowloris = s.spawn(|| {
            in_netns(&n0, || {
                let mut sock = connect();
                sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let start = Instant::now();
                let mut got = Vec::new();
                for b in b"POST /v1/enroll/challenge HTTP/1.1\r\nHost: 198.18.0.1:8470\r\nX-Pad: aaaaaaaaaaaaaaaa\r\n" {
                    if sock.write_all(&[*b]).is_err() || start.elapsed() > Duration::from_secs(8) {
                        return (start.elapsed(), got);
                    }
                    // Wait a second for an answer or the end of the connection.
                    let mut buf = [0u8; 512];
                    match sock.read(&mut buf) {
                        Ok(0) => return (start.elapsed(), got),
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        }
                        Err(_) => return (start.elapsed(), got),
                    }
                }
                (start.elapsed(), got)
            })
        });
        // A connection that sends nothing at all.
        let silent = s.spawn(|| {
            in_netns(&n0, || {
                let mut sock = connect();
                let start = Instant::now();
                let mut buf = Vec::new();
                let _ = sock.read_to_end(&mut buf);
                start.elapsed()
            })
        });
        // Complete headers, then the body one byte per second: the request timeout.
        let slow_body = s.spawn(|| {
            in_netns(&n0, || {
                let mut sock = connect();
                let start = Instant::now();
                let head = format!(
                    "POST /v1/enroll HTTP/1.1\r\nHost: {SERVER_IP}:8470\r\nConnection: close\r\n\
                     Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
                );
                sock.write_all(head.as_bytes()).unwrap();
                let mut buf = [0u8; 1024];
                // A byte every 0.7 s (so none is in flight when the answer comes at 3 s).
                sock.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
                let mut raw = Vec::new();
                while start.elapsed() < Duration::from_secs(10) {
                    match sock.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => raw.extend_from_slice(&buf[..n]),
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                            let _ = sock.write_all(b" ");
                        }
                        Err(_) => break,
                    }
                }
                (start.elapsed(), parse(&raw))
            })
        });

        // Meanwhile, normal requests are served at once, from the same node and another.
        std::thread::sleep(Duration::from_millis(500));
        for ns in [&n0, &c.nodes[1].ns.name] {
            let t = Instant::now();
            let r = in_netns(ns, challenge);
            assert_eq!(r.status, 200, "{r:?}");
            assert!(t.elapsed() < Duration::from_secs(2), "served in {:?}", t.elapsed());
        }

        let (t, got) = slowloris.join().unwrap();
        println!("slowloris cut off after {t:?}");
        assert!(t >= Duration::from_millis(1500) && t < Duration::from_secs(5), "header timeout 2 s: {t:?}");
        assert!(!String::from_utf8_lossy(&got).contains(" 200 "), "{got:?}");
        let t = silent.join().unwrap();
        println!("silent connection closed after {t:?}");
        assert!(t >= Duration::from_millis(1500) && t < Duration::from_secs(5), "{t:?}");
        let (t, r) = slow_body.join().unwrap();
        println!("slow body answered {} after {t:?}", r.status);
        assert_eq!(r.status, 408, "request timeout: {r:?}");
        assert!(t >= Duration::from_millis(2500) && t < Duration::from_secs(6), "request timeout 3 s: {t:?}");
    });

    // Oversized enrollments: 413 with the JSON error, whether the length is announced
    // or the body is chunked.
    let big = format!("{{\"mac\": \"{}\"}}", "x".repeat(20 * 1024));
    let (announced, chunked) = in_netns(&n0, || {
        let announced = post("/v1/enroll", "", &big);
        let chunked = exchange(
            format!(
                "POST /v1/enroll HTTP/1.1\r\nHost: {SERVER_IP}:8470\r\nConnection: close\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
                big.len()
            )
            .as_bytes(),
        );
        (announced, chunked)
    });
    for r in [announced, chunked] {
        assert_eq!(r.status, 413, "{r:?}");
        assert_eq!(r.json()["kind"], "invalid", "{r:?}");
    }
    assert_nothing_granted(&c);
    assert_eq!(audit_rows(&c), audit_before, "nothing audited");
}

#[test]
fn an_agent_throttled_by_its_source_limit_retries_and_enrolls() {
    let c = cluster(1, "enroll_rate_per_source = 0.5\nenroll_burst_per_source = 3");
    // Empty the node's bucket: challenges until one is refused.
    let drained =
        in_netns(&c.nodes[0].ns.name, || (0..10).map(|_| challenge().status).take_while(|s| *s == 200).count());
    assert!((3..=4).contains(&drained), "the burst of 3 (and maybe one refill) was served: {drained}");
    let start = Instant::now();
    let out = c.agent(0, "fetch").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    println!("throttled agent enrolled in {:?}", start.elapsed());
    assert!(stderr.contains("429"), "the agent was throttled first: {stderr}");
    assert_eq!(stderr.matches("answered 429").count(), 1, "once, then its retry got both steps through: {stderr}");
    assert!(c.server.ok(&["audit", "--node", "n1"]).contains("enroll.accepted"));
    assert!(throttle_log_lines(&c) >= 1);
    eventually(10, "phone-home to close the tunnel", || active_tunnels(&c) == 0 && c.server.wg_peers().is_empty());
}
