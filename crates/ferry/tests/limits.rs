//! Limits on the provisioning listener (PRODUCT.md invariant 11), against a real server
//! in a namespace cluster: rate limits per source and their Retry-After, slow clients,
//! body size, an agent that is throttled and still enrolls, and one that enrolls while
//! 500 addresses flood the listener. Every test also checks that what was refused
//! changed nothing: no tunnel, no device peer, no audit row.
//!
//! The cap on enrollments in progress is proven at unit level, through the real
//! middleware with a handler that holds its slot
//! (`ferry-server` `limits::tests::a_full_house_of_enrollments_answers_503_and_runs_nothing`):
//! a real enrollment is over in milliseconds, so holding one from outside would be a race.

mod common;

use common::cluster::{Cluster, SERVER_IP};
use common::raw::{challenge, connect, exchange, get, in_netns, parse, post, Reply};
use common::{eventually, sh, unique, Netns};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    c.server.assert_nothing_granted();
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
    c.server.assert_nothing_granted();

    // The 429 consumed nothing: after Retry-After the same nonce still enrolls.
    std::thread::sleep(Duration::from_secs(good.retry_after.unwrap()));
    let r = in_netns(&n0.ns.name, || post("/v1/enroll", "", &body(&nonce)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(c.server.wg_peers(), [key.to_base64()]);
    c.server.ok(&["tunnel", "revoke", &n0.name]);
    eventually(10, "the tunnel to close", || c.server.active_tunnels() == 0 && c.server.wg_peers().is_empty());
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
    c.server.assert_nothing_granted();
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
    eventually(10, "phone-home to close the tunnel", || {
        c.server.active_tunnels() == 0 && c.server.wg_peers().is_empty()
    });
}

/// Open files of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/PID/fd").count()
}

/// Established connections on the server's side of its datasource port.
fn datasource_connections(c: &Cluster) -> usize {
    c.server.netns.sh(&["ss", "-Htn", "state", "established", "( sport = :8471 )"]).lines().count()
}

/// Opens `n` TCP connections to `to` from the current thread's namespace; those the
/// server refuses end at once, those it admits stay open and idle.
fn open_idle(to: (&str, u16), n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let addr = std::net::SocketAddr::new(to.0.parse().unwrap(), to.1);
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()
        })
        .collect()
}

/// How many of `conns` the server has not closed.
fn still_open(conns: &[TcpStream]) -> usize {
    conns
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

/// Finding 4: one node, during its tunnel window, opens thousands of idle connections to
/// the datasource (through its tunnel) and many to the provisioning listener. The caps
/// hold (the server's open files stay bounded; the surplus is closed at once), another
/// node still enrolls, fetches and phones home, and when the first node's tunnel ends,
/// the server closes its datasource connections. Timeouts are long here, so only the
/// caps and the tunnel's end can close anything; the server starts with systemd's soft
/// limit of 1,024 open files and raises it.
#[test]
fn a_node_holding_thousands_of_idle_connections_starves_no_one() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let timeouts = "header_timeout_secs = 300\nidle_timeout_secs = 300\n";
    let c = Cluster::with_sections(
        2,
        &format!("[datasource]\nmax_connections_per_source = 12\n{timeouts}"),
        &format!("max_connections_per_source = 16\n{timeouts}"),
        "",
    );
    c.add_nodes(&["--identity", "network"]);
    let pid = c.server.pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned();
    let fields: Vec<&str> = open_files.split_whitespace().collect();
    assert_eq!(fields[3], fields[4], "the server raised its soft limit to the hard one: {open_files}");

    let holder = c.hold(0);
    let before = open_fds(pid);
    let start = Instant::now();
    let (datasource, provisioning) =
        in_netns(&c.nodes[0].ns.name, || (open_idle(("100.64.0.1", 8471), 3000), open_idle((SERVER_IP, 8470), 1000)));
    println!(
        "opened {} datasource and {} provisioning connections in {:?}",
        datasource.len(),
        provisioning.len(),
        start.elapsed()
    );
    assert!(datasource.len() >= 2900 && provisioning.len() >= 900, "the connections were accepted, then closed");
    eventually(20, "the surplus to be closed", || still_open(&datasource) == 12 && still_open(&provisioning) == 16);
    let during = open_fds(pid);
    println!("server open files: {before} before, {during} with the node's 4,000 connection attempts");
    assert!(during <= before + 12 + 16 + 20, "bounded by the caps: {before} -> {during}");
    let (_, metrics) = c.server.admin_get("/metrics");
    for cap in ["datasource", "provisioning"] {
        let line = format!("ferry_connections_refused_total{{listener=\"{cap}\",cause=\"per-source\"}}");
        let refused = metrics.lines().find(|l| l.starts_with(&line)).unwrap_or_else(|| panic!("{line}: {metrics}"));
        assert!(!refused.ends_with(" 0"), "{refused}");
    }
    assert!(c.server.log_text().lines().filter(|l| l.contains("connection refused")).count() <= 60, "rate-limited log");

    // Another node boots meanwhile: enrollment, the four documents, phone-home.
    let out = c.agent(1, "fetch").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    // The other node's kept connection ends with its tunnel (phone-home's grace); then
    // only the first node's 12 remain, until its tunnel ends and the server closes them.
    eventually(10, "only the first node's 12 datasource connections", || datasource_connections(&c) == 12);
    c.server.ok(&["tunnel", "revoke", "n1"]);
    eventually(5, "the tunnel's connections to be closed", || datasource_connections(&c) == 0);
    drop((datasource, provisioning));
    holder.stop();
    eventually(10, "no tunnel left", || c.server.active_tunnels() == 0 && c.server.wg_peers().is_empty());
}

/// A namespace on the cluster's bridge holding `count` addresses in 198.19.0.0/16 (the
/// server's bridge gets an address there too, to answer them).
fn flooder(c: &Cluster, count: usize) -> (Netns, Vec<Ipv4Addr>) {
    let ns = Netns::new("ffl");
    let (a, b) = (unique("fva"), unique("fvb"));
    sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
    sh(&["ip", "link", "set", &a, "netns", &c.server.netns.name]);
    sh(&["ip", "link", "set", &b, "netns", &ns.name]);
    c.server.netns.sh(&["ip", "link", "set", &a, "master", "br0", "up"]);
    c.server.netns.sh(&["ip", "addr", "add", "198.19.255.254/16", "dev", "br0"]);
    let addrs: Vec<Ipv4Addr> =
        (0..count).map(|i| Ipv4Addr::new(198, 19, (i / 250) as u8, (i % 250 + 1) as u8)).collect();
    let dir = tempfile::tempdir().unwrap();
    let batch = dir.path().join("addresses");
    let lines: String = addrs.iter().map(|ip| format!("addr add {ip}/16 dev {b}\n")).collect();
    std::fs::write(&batch, lines).unwrap();
    sh(&["ip", "-n", &ns.name, "-batch", batch.to_str().unwrap()]);
    ns.sh(&["ip", "link", "set", &b, "up"]);
    ns.sh(&["ip", "route", "add", &format!("{SERVER_IP}/32"), "dev", &b]);
    (ns, addrs)
}

/// One POST on a new connection from source address `from` (inside the flooder's
/// namespace); the status, and the body of a 200.
fn post_from(from: Ipv4Addr, path: &str, body: &str) -> Option<(u16, String)> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).ok()?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(from, 0))).ok()?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(SERVER_IP.parse().unwrap(), 8470))).ok()?;
    let mut sock = TcpStream::from(fd);
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {SERVER_IP}:8470\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(head.as_bytes()).ok()?;
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).ok()?;
    let r = parse(&raw);
    Some((r.status, r.body))
}

/// What the flood got back, by status.
#[derive(Default)]
struct FloodStats {
    sent: AtomicUsize,
    ok: AtomicUsize,
    throttled: AtomicUsize,
    busy: AtomicUsize,
}

#[test]
fn a_node_enrolls_while_500_addresses_flood_the_enrollment_endpoints() {
    // A small server, so that this machine's flood overwhelms it: 100 enrollment
    // requests/s in all (and a reserve of 25/s for light sources), 1,000 nonces;
    // per-source limits at their defaults (10/s, 30 at once, 16 nonces).
    let c = cluster(1, "enroll_rate_global = 100\nenroll_burst_global = 100\nmax_pending_nonces = 1000\n");
    c.server.ok(&["node", "set", "n1", "--identity", "network"]);
    let (ns, addrs) = flooder(&c, 500);
    let stop = AtomicBool::new(false);
    let stats = FloodStats::default();
    let flood_worker = |mine: Vec<Ipv4Addr>| {
        let key = ferry_wg::PrivateKey::generate().public_key().to_base64();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let from = mine[i % mine.len()];
            i += 1;
            // Mostly challenges, whose nonces it keeps; now and then an enrollment with a
            // nonce never issued, for a MAC nobody has.
            let reply = if i.is_multiple_of(4) {
                let nonce = base64_32((i % 251) as u8);
                let body =
                    serde_json::json!({"mac": "52:54:00:99:99:99", "public_key": key, "nonce": nonce, "proofs": {}})
                        .to_string();
                post_from(from, "/v1/enroll", &body)
            } else {
                post_from(from, "/v1/enroll/challenge", "")
            };
            stats.sent.fetch_add(1, Ordering::Relaxed);
            match reply.map(|r| r.0) {
                Some(200) => stats.ok.fetch_add(1, Ordering::Relaxed),
                Some(429) => stats.throttled.fetch_add(1, Ordering::Relaxed),
                Some(503) => stats.busy.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
        }
    };
    let (agent_out, agent_time, warmup_sent) = std::thread::scope(|scope| {
        let workers = 16;
        for w in 0..workers {
            let mine: Vec<Ipv4Addr> = addrs.iter().copied().skip(w).step_by(workers).collect();
            let (ns, flood_worker) = (&ns.name, &flood_worker);
            scope.spawn(move || in_netns(ns, || flood_worker(mine)));
        }
        // Long enough for the flood to take every nonce slot and every global token.
        std::thread::sleep(Duration::from_secs(12));
        let warmup_sent = stats.sent.load(Ordering::Relaxed);
        let start = Instant::now();
        // The node's normal retry budget; it ends before the flood's first nonces expire.
        let url = format!("http://{SERVER_IP}:8470");
        let out = c.agent_to(0, "fetch", &url, &c.server.public_key(), "40s").output().unwrap();
        let took = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        (out, took, warmup_sent)
    });
    let stderr = String::from_utf8_lossy(&agent_out.stderr);
    let sent = stats.sent.load(Ordering::Relaxed);
    println!(
        "flood from {} addresses: {sent} requests ({warmup_sent} in the first 12 s), {} answered 200, {} 429, {} 503; \
         the node's agent was done after {agent_time:?}",
        addrs.len(),
        stats.ok.load(Ordering::Relaxed),
        stats.throttled.load(Ordering::Relaxed),
        stats.busy.load(Ordering::Relaxed),
    );
    assert!(warmup_sent > 12 * 300, "the flood outran the server's 125 requests/s: {warmup_sent} in 12 s");
    assert_eq!(agent_out.status.code(), Some(0), "the node did not enroll within its budget: {stderr}");
    assert!(c.server.ok(&["audit", "--node", "n1"]).contains("enroll.accepted"));
    eventually(10, "phone-home to close the tunnel", || {
        c.server.active_tunnels() == 0 && c.server.wg_peers().is_empty()
    });
}
