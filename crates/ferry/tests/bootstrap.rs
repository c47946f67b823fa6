//! Issue 3's proof: a namespace cluster with real WireGuard (the server's own device,
//! the agent's on each node), the real agent, and every security invariant 1–8 of
//! PRODUCT.md as a test that fails if it breaks.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::cluster::{Cluster, DATASOURCE, SERVER_IP};
use common::{eventually, Netns};
use std::time::Instant;

const USER_DATA: &str =
    "#cloud-config\nhostname: {{ node.name }}\nwrite_files:\n- path: /etc/rack\n  content: '{{ tags.rack }}'\n";

fn audit(c: &Cluster, node: &str) -> String {
    c.server.ok(&["audit", "--node", node, "--limit", "200"])
}

fn active_tunnels(c: &Cluster) -> usize {
    c.server.json(&["tunnel", "list", "--json"]).as_array().map_or(0, |a| a.len())
}

/// Invariant 7 at the end of every test: peers on the device == active tunnels (0).
fn assert_all_closed(c: &Cluster) {
    eventually(10, "device and store to hold no tunnel", || active_tunnels(c) == 0 && c.server.wg_peers().is_empty());
}

#[test]
fn three_nodes_enroll_fetch_their_own_documents_and_phone_home() {
    let c = Cluster::new(3);
    let ud = c.nodes[0].path("user-data.tmpl");
    std::fs::write(&ud, USER_DATA).unwrap();
    let nc = c.nodes[0].path("network-config");
    std::fs::write(&nc, "version: 2\nethernets: {}\n").unwrap();
    c.server.ok(&[
        "profile",
        "add",
        "compute",
        "--user-data",
        ud.to_str().unwrap(),
        "--network-config",
        nc.to_str().unwrap(),
    ]);
    c.add_nodes(&["-P", "compute"]);
    c.server.ok(&["node", "set", "n1", "--tag", "rack=r1"]);
    c.server.ok(&["node", "set", "n2", "--tag", "rack=r2"]);
    c.server.ok(&["node", "set", "n3", "--tag", "rack=r3", "--identity", "asset-tag"]);
    // n2 and n3 have asset tags: n2 then needs network + asset-tag (the default), n3 asset-tag alone.
    for (i, tag) in [(1, "TAG-N2-5e1f"), (2, "TAG-N3-77c0")] {
        std::fs::write(c.nodes[i].path("asset-tag"), tag).unwrap();
        let file = c.nodes[i].path("asset-tag");
        c.server.ok(&["node", "set", &c.nodes[i].name, "--asset-tag-file", file.to_str().unwrap()]);
    }

    let start = Instant::now();
    let agents: Vec<_> = (0..3).map(|i| c.agent(i, "fetch").output_async()).collect();
    for (i, out) in agents.into_iter().map(|a| a.join().unwrap()).enumerate() {
        assert_eq!(out.status.code(), Some(0), "agent {i}: {}", String::from_utf8_lossy(&out.stderr));
        let seed = c.nodes[i].path("seed");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ds=nocloud;s=file://{}/", seed.display()));
    }
    let elapsed = start.elapsed();
    println!("3-node cluster: enroll, fetch 4 documents, phone home, tear down: {elapsed:?}");

    for (i, n) in c.nodes.iter().enumerate() {
        let read =
            |f: &str| std::fs::read_to_string(n.path("seed").join(f)).unwrap_or_else(|e| panic!("{} {f}: {e}", n.name));
        let meta: serde_json::Value = serde_json::from_str(&read("meta-data")).unwrap();
        assert_eq!(meta["instance-id"], n.name.as_str());
        let user = read("user-data");
        assert!(user.contains(&format!("hostname: {}", n.name)) && user.contains(&format!("'r{}'", i + 1)), "{user}");
        for other in c.nodes.iter().filter(|o| o.name != n.name) {
            assert!(!user.contains(&format!("hostname: {}", other.name)), "{} got {}'s data", n.name, other.name);
        }
        assert!(!read("vendor-data").contains("phone_home"), "fetch mode: the agent phones home, cloud-init must not");
        assert!(read("network-config").contains("version: 2"));
        assert!(!n.has_interface(), "{}: the agent removed its interface", n.name);
        let shown = c.server.json(&["node", "show", &n.name, "--json"]);
        assert_eq!(shown["boot"]["boot_count"], 1, "{} booted once", n.name);
        assert!(shown["boot"]["host_keys"][0].as_str().unwrap().contains(&format!("root@{}", n.name)));
        let log = audit(&c, &n.name);
        for doc in ["meta-data", "user-data", "vendor-data", "network-config"] {
            assert!(log.contains("document.served") && log.contains(doc), "{} {doc} delivery audited: {log}", n.name);
        }
        assert!(log.contains("reason=phone-home"), "{log}");
    }
    let known = c.server.ok(&["known-hosts"]);
    assert_eq!(known.lines().count(), 3, "{known}");
    assert_all_closed(&c);
}

trait OutputAsync {
    fn output_async(self) -> std::thread::JoinHandle<std::process::Output>;
}

impl OutputAsync for std::process::Command {
    fn output_async(mut self) -> std::thread::JoinHandle<std::process::Output> {
        std::thread::spawn(move || self.output().expect("run"))
    }
}

/// A hand-made enrollment, to send exactly what an attacker would.
struct Attempt {
    key: ferry_wg::PrivateKey,
    nonce: String,
}

impl Attempt {
    fn new(c: &Cluster, from: usize) -> Attempt {
        let (code, body) = c.nodes[from].curl(&["-X", "POST", &format!("http://{SERVER_IP}:8470/v1/enroll/challenge")]);
        assert_eq!(code, 200, "{body}");
        let nonce = serde_json::from_str::<serde_json::Value>(&body).unwrap()["nonce"].as_str().unwrap().to_owned();
        Attempt { key: ferry_wg::PrivateKey::generate(), nonce }
    }

    fn proof(&self, tag: &str, key: &ferry_wg::PublicKey, node: &str) -> String {
        let nonce = B64.decode(&self.nonce).unwrap();
        let node = ferry_core::NodeName::parse(node).unwrap();
        B64.encode(ferry_core::enroll::asset_tag_proof(tag.as_bytes(), &nonce, &key.0, &node))
    }

    fn body(&self, mac: &str, key: &ferry_wg::PublicKey, proof: Option<String>) -> String {
        serde_json::json!({"mac": mac, "public_key": key.to_base64(), "nonce": self.nonce, "proofs": {"asset_tag": proof}}).to_string()
    }
}

fn enroll(c: &Cluster, from: usize, body: &str) -> (u16, String) {
    c.nodes[from].curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        body,
        &format!("http://{SERVER_IP}:8470/v1/enroll"),
    ])
}

#[test]
fn enrollment_refusals_grant_nothing() {
    let c = Cluster::new(2);
    c.add_nodes(&[]);
    std::fs::write(c.nodes[0].path("tag"), "RIGHT-TAG").unwrap();
    c.server.ok(&["node", "set", "n1", "--asset-tag-file", c.nodes[0].path("tag").to_str().unwrap()]);

    // Wrong asset tag: the agent is told "refused" (exit 3), the audit says why.
    std::fs::write(c.nodes[0].path("asset-tag"), "WRONG-TAG").unwrap();
    let out = c.agent(0, "fetch").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(audit(&c, "n1").contains("asset-tag factor: proof did not verify"));

    // Enrolling from an address that is not the node's (n2's namespace claims n1's MAC).
    let a = Attempt::new(&c, 1);
    let pk = a.key.public_key();
    let (code, body) = enroll(&c, 1, &a.body(&c.nodes[0].mac, &pk, Some(a.proof("RIGHT-TAG", &pk, "n1"))));
    assert_eq!((code, body.contains("\"refused\"")), (401, true), "{body}");
    assert!(audit(&c, "n1").contains("came from 198.18.0.12"));

    // A valid enrollment, then the same request replayed: the nonce is single-use.
    let a = Attempt::new(&c, 0);
    let pk = a.key.public_key();
    let good = a.body(&c.nodes[0].mac, &pk, Some(a.proof("RIGHT-TAG", &pk, "n1")));
    assert_eq!(enroll(&c, 0, &good).0, 200);
    assert_eq!(c.server.wg_peers(), [pk.to_base64()]);
    assert_eq!(enroll(&c, 0, &good).0, 401, "replayed nonce");
    assert!(
        audit(&c, "n1").contains("unknown, used or expired nonce")
            || c.server.ok(&["audit", "--limit", "50"]).contains("unknown, used or expired nonce")
    );
    c.server.ok(&["tunnel", "revoke", "n1"]);

    // A captured proof re-used with the attacker's own WireGuard key.
    let a = Attempt::new(&c, 0);
    let victim = a.key.public_key();
    let attacker = ferry_wg::PrivateKey::generate().public_key();
    let (code, _) = enroll(&c, 0, &a.body(&c.nodes[0].mac, &attacker, Some(a.proof("RIGHT-TAG", &victim, "n1"))));
    assert_eq!(code, 401, "proof bound to another key");

    // Unknown MAC, malformed input: nothing granted either.
    let a = Attempt::new(&c, 1);
    assert_eq!(enroll(&c, 1, &a.body("52:54:00:99:99:99", &a.key.public_key(), None)).0, 401);
    assert_eq!(enroll(&c, 1, "{\"mac\": \"zz\"}").0, 400);
    let a = Attempt::new(&c, 1);
    let bad_key = serde_json::json!({"mac": c.nodes[1].mac, "public_key": "AAAA", "nonce": a.nonce}).to_string();
    assert_eq!(enroll(&c, 1, &bad_key).0, 400);
    assert_eq!(active_tunnels(&c), 0);
    assert_all_closed(&c);
}

#[test]
fn the_datasource_answers_only_tunnels_and_only_with_their_own_node() {
    let c = Cluster::new(3);
    c.add_nodes(&[]);
    let a = c.hold(0);
    let b = c.hold(1);
    let tunnels = c.server.json(&["tunnel", "list", "--json"]);
    let addr = |node: &str| {
        tunnels.as_array().unwrap().iter().find(|t| t["node"] == node).unwrap()["address"].as_str().unwrap().to_owned()
    };
    let (a_addr, b_addr) = (addr("n1"), addr("n2"));
    assert_eq!(c.server.wg_peers().len(), 2, "`wg show` lists both peers");

    // Through A's tunnel: A's data, whatever headers claim.
    for header in [
        format!("X-Forwarded-For: {b_addr}"),
        format!("Forwarded: for={b_addr}"),
        format!("X-Real-IP: {b_addr}"),
        format!("X-Forwarded-For: {b_addr}, {b_addr}"),
    ] {
        let (code, body) = c.nodes[0].curl(&["-H", &header, &format!("{DATASOURCE}/meta-data")]);
        assert_eq!(code, 200, "{header}: {body}");
        assert!(body.contains("\"n1\"") && !body.contains("\"n2\""), "{header}: {body}");
    }
    // NoCloud `seedfrom` bases with a prefix work too.
    let (code, body) = c.nodes[1].curl(&[&format!("{DATASOURCE}/some/prefix/meta-data")]);
    assert!(code == 200 && body.contains("\"n2\""), "{body}");

    // From the provisioning network (n3 has no tunnel, routes 100.64/16 to the server): 403.
    c.nodes[2].ns.sh(&["ip", "route", "add", "100.64.0.0/16", "via", SERVER_IP]);
    let (code, _) = c.nodes[2].curl(&[&format!("{DATASOURCE}/meta-data")]);
    assert_eq!(code, 403, "provisioning network is refused");
    let (code, _) = c.nodes[2].curl(&["-H", &format!("X-Forwarded-For: {a_addr}"), &format!("{DATASOURCE}/user-data")]);
    assert_eq!(code, 403, "a forged header does not make a tunnel");
    // The datasource is bound to the tunnel address only: nothing on the provisioning address.
    let (code, _) = c.nodes[2].curl(&[&format!("http://{SERVER_IP}:8471/meta-data")]);
    assert_eq!(code, 0, "no listener on the provisioning address");

    // A phones home (cloud-init's form): only A's tunnel closes.
    let (code, _) = c.nodes[0].curl(&[
        "-d",
        "instance_id=n1&hostname=n1&pub_key_ed25519=ssh-ed25519+AAAA+root%40n1",
        &format!("{DATASOURCE}/phone-home/n1"),
    ]);
    assert_eq!(code, 200);
    let tunnels = c.server.json(&["tunnel", "list", "--json"]);
    assert_eq!(tunnels.as_array().unwrap().iter().map(|t| t["node"].as_str().unwrap()).collect::<Vec<_>>(), ["n2"]);
    eventually(5, "A's peer removed", || c.server.wg_peers().len() == 1);
    let (code, _) = c.nodes[1].curl(&[&format!("{DATASOURCE}/user-data")]);
    assert_eq!(code, 200, "B is untouched");
    assert_eq!(a.stop(), Some(0));
    b.stop();
    c.server.ok(&["tunnel", "revoke", "n2"]);
    assert_all_closed(&c);
}

#[test]
fn an_abandoned_tunnel_expires() {
    let c = Cluster::new(1);
    c.add_nodes(&["--tunnel-ttl", "5s"]);
    let _holder = c.hold(0);
    assert_eq!(active_tunnels(&c), 1);
    assert_all_closed(&c);
    assert!(audit(&c, "n1").contains("reason=expired"));
}

#[test]
fn a_server_restarted_mid_boot_keeps_its_key_and_the_node_finishes() {
    let mut c = Cluster::new(1);
    c.add_nodes(&[]);
    let key = c.server.public_key();
    let holder = c.hold(0);
    c.server.stop();
    assert!(
        !c.server.log_text().contains(
            &std::fs::read_to_string(c.server.dir.path().join("data/wireguard.key")).unwrap().trim().to_string()
        ),
        "private key never logged"
    );
    c.server.launch();
    assert_eq!(c.server.public_key(), key, "same server key after restart");
    assert_eq!(c.server.wg_peers().len(), 1, "the active tunnel is restored on the new device");
    // The node's WireGuard still holds a session with the old device; its timers
    // re-handshake with the new one (REKEY after about 15 s without an answer).
    let restarted = Instant::now();
    eventually(60, "the node to reach the datasource again", || {
        c.nodes[0].curl(&[&format!("{DATASOURCE}/user-data")]).0 == 200
    });
    println!("node reached the restarted server after {:?}", restarted.elapsed());
    let (code, _) = c.nodes[0].curl(&["-d", "instance_id=n1", &format!("{DATASOURCE}/phone-home")]);
    assert_eq!(code, 200);
    holder.stop();
    assert_all_closed(&c);
}

#[test]
fn after_a_crash_the_restarted_server_drops_orphan_peers() {
    // The uapi backend: wireguard-go keeps the device (and any stale peer) while ferry is down.
    let wg_go = std::sync::Mutex::new(None);
    let mut c = Cluster::with_wireguard(1, "backend = \"uapi\"\n", |srv: &Netns| {
        let (name, child) = common::wireguard_go(srv, "100.64.0.1/16");
        *wg_go.lock().unwrap() = Some(child);
        Some(name)
    });
    let _wg_go = wg_go.lock().unwrap().take();
    let ifname = c.server.interface.clone();
    c.add_nodes(&[]);
    let holder = c.hold(0);
    assert_eq!(c.server.wg_peers().len(), 1);
    c.server.kill9();
    let stray = ferry_wg::PrivateKey::generate().public_key().to_base64();
    c.server.netns.sh(&["wg", "set", &ifname, "peer", &stray, "allowed-ips", "100.64.9.9/32"]);
    assert_eq!(c.server.wg_peers().len(), 2);
    c.server.launch();
    let peers = c.server.wg_peers();
    assert_eq!(peers.len(), 1, "orphan removed, active tunnel kept: {peers:?}");
    assert!(!peers.contains(&stray));
    holder.stop();
    c.server.ok(&["tunnel", "revoke", "n1"]);
    assert_all_closed(&c);
}

#[test]
fn re_enrolling_replaces_the_old_peer_and_an_impostor_key_is_refused() {
    let c = Cluster::new(1);
    c.add_nodes(&[]);
    let first = Attempt::new(&c, 0);
    assert_eq!(enroll(&c, 0, &first.body(&c.nodes[0].mac, &first.key.public_key(), None)).0, 200);
    let second = Attempt::new(&c, 0);
    assert_eq!(enroll(&c, 0, &second.body(&c.nodes[0].mac, &second.key.public_key(), None)).0, 200);
    assert_eq!(c.server.wg_peers(), [second.key.public_key().to_base64()], "one tunnel per node: the old peer is gone");
    assert_eq!(active_tunnels(&c), 1);
    assert!(audit(&c, "n1").contains("reason=replaced"));
    c.server.ok(&["tunnel", "revoke", "n1"]);

    // The agent pins the server's key: another key (an impostor server) is refused
    // before any interface exists.
    let impostor = ferry_wg::PrivateKey::generate().public_key().to_base64();
    let out = c.agent_pinning(0, "fetch", &impostor).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!c.nodes[0].has_interface());
    assert!(!c.nodes[0].path("seed/user-data").exists(), "nothing fetched");
    // The server granted a tunnel the node never used; revoke it (the TTL would too).
    c.server.ok(&["tunnel", "revoke", "n1"]);
    assert_all_closed(&c);
}

/// Finding 14: the boot script travels over plain HTTP, so someone on the path can
/// rewrite the kernel command line to name their server and key. Without baked pins
/// the agent follows it (here: to an address where nobody answers); with the pins
/// `ferry image initramfs --pin-server-url/--pin-server-key` bakes into /etc/ferry/pins,
/// the same command line is overruled and the node boots from the real server.
#[test]
fn baked_pins_overrule_a_rewritten_kernel_command_line() {
    let c = Cluster::new(1);
    c.add_nodes(&["--identity", "network"]);
    let n = &c.nodes[0];
    let impostor = ferry_wg::PrivateKey::generate().public_key().to_base64();
    let cmdline = n.path("cmdline");
    std::fs::write(
        &cmdline,
        format!("quiet ferry.server=http://198.18.0.250:8470 ferry.pubkey={impostor} ferry.node=n1\n"),
    )
    .unwrap();
    let pins = n.path("pins");
    let agent = || {
        let mut cmd = n.ns.cmd(common::FERRY);
        cmd.args(["agent", "--mode", "fetch", "--interface", &n.interface, "--timeout", "8s"])
            .arg("--cmdline")
            .arg(&cmdline)
            .arg("--pins-file")
            .arg(&pins)
            .arg("--seed-dir")
            .arg(n.path("seed"))
            .arg("--state-dir")
            .arg(n.path("state"))
            .arg("--ssh-dir")
            .arg(n.path("ssh"))
            .arg("--asset-tag-file")
            .arg(n.path("asset-tag"))
            .env("FERRY_LOG", "debug")
            .stdin(std::process::Stdio::null());
        cmd.output().unwrap()
    };
    let out = agent();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "followed the rewritten line to nobody: {log}");
    assert!(log.contains("198.18.0.250"), "{log}");

    std::fs::write(&pins, format!("ferry.server=http://{SERVER_IP}:8470\nferry.pubkey={}\n", c.server.public_key()))
        .unwrap();
    let out = agent();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ds=nocloud;s=file://"), "{log}");
    assert!(log.contains("differs from the one baked into"), "the rewrite is reported: {log}");
    assert!(audit(&c, "n1").contains("node.booted"));
    assert_all_closed(&c);
}
