//! Several ferry servers on one PostgreSQL database (as root, with the test PostgreSQL
//! that scripts/test.sh starts): a boot storm survives the loss of a server, re-enrolling
//! elsewhere removes the old peer at once, a crashed server cleans up when it comes
//! back, and a node running real cloud-init moves its tunnel off a server killed under it.

mod common;

use common::chroot::{rootfs_tarball, NodeRoot};
use common::eventually;
use common::ha::HaCluster;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The tunnels in the shared store, as one server lists them: (node, address, server).
fn tunnels(c: &HaCluster, via: usize) -> Vec<(String, String, String)> {
    let list = c.servers[via].json(&["tunnel", "list", "--json"]);
    list.as_array()
        .expect("array")
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            (s("node"), s("address"), s("server"))
        })
        .collect()
}

fn audit(c: &HaCluster, via: usize) -> Vec<serde_json::Value> {
    let entries = c.servers[via].json(&["audit", "--limit", "100000", "--json"]);
    entries.as_array().expect("audit entries").clone()
}

fn field<'a>(detail: &'a str, key: &str) -> Option<&'a str> {
    detail.split_whitespace().find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// Replays the audit log (one database, writes serialized, so ids are commit order)
/// and fails if an address was ever opened while another active tunnel held it.
fn assert_no_address_was_shared(entries: &[serde_json::Value]) -> usize {
    let mut holder: HashMap<String, String> = HashMap::new();
    let mut opened = 0;
    for e in entries {
        let (action, subject, detail) = (
            e["action"].as_str().unwrap_or(""),
            e["subject"].as_str().unwrap_or(""),
            e["detail"].as_str().unwrap_or(""),
        );
        let Some(address) = field(detail, "address") else { continue };
        match action {
            "tunnel.open" => {
                opened += 1;
                if let Some(other) = holder.insert(address.to_owned(), subject.to_owned()) {
                    panic!("{address} handed to {subject} while {other} still held it (audit id {})", e["id"]);
                }
            }
            "tunnel.close" => {
                assert_eq!(holder.remove(address).as_deref(), Some(subject), "close of a tunnel not open: {e}");
            }
            _ => {}
        }
    }
    assert!(holder.is_empty(), "tunnels left open: {holder:?}");
    opened
}

#[test]
fn three_servers_survive_the_loss_of_one_mid_storm() {
    const NODES: usize = 30;
    let mut c = HaCluster::new(3, NODES, "heartbeat_secs = 1\nlost_after_secs = 4\n", "");
    // One inventory for all: added through s1, seen by s3.
    for n in &c.nodes {
        c.servers[0].ok(&["node", "add", &n.name, "--mac", &n.mac, "--ip", &n.ip, "--identity", "network"]);
    }
    assert_eq!(c.servers[2].json(&["node", "list", "--json"]).as_array().map(Vec::len), Some(NODES));
    let listed = c.servers[1].json(&["server", "list", "--json"]);
    let ids: Vec<&str> = listed.as_array().expect("servers").iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids, ["s1", "s2", "s3"]);
    assert!(listed.as_array().expect("servers").iter().all(|s| s["alive"] == true), "{listed}");

    // Every node lists all three servers, starting with a different one, and pins all keys.
    let keys = c.server_keys();
    let started = Instant::now();
    let agents: Vec<_> = (0..NODES)
        .map(|i| {
            let log = std::fs::File::create(c.nodes[i].path("agent.log")).expect("log");
            c.nodes[i]
                .agent("fetch", &c.server_urls(i % 3), &keys, "180s")
                .args(["--tunnel-timeout", "5s"])
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .expect("agent")
        })
        .collect();

    // SIGKILL s1 as soon as it holds a tunnel: that node is mid-boot there.
    eventually(60, "a tunnel on s1", || tunnels(&c, 1).iter().any(|t| t.2 == "s1"));
    c.servers[0].kill9();
    let killed_at = Instant::now();
    let stranded: BTreeSet<String> = tunnels(&c, 1).into_iter().filter(|t| t.2 == "s1").map(|t| t.0).collect();
    eprintln!("killed s1 after {:.1} s holding the tunnels of {stranded:?}", started.elapsed().as_secs_f64());
    assert!(!stranded.is_empty(), "s1 was killed while holding a tunnel");
    let stale = c.servers[0].wg_peers();
    assert!(!stale.is_empty(), "the killed server's device still holds peers");

    // Every node completes (phones home), the stranded ones at a survivor.
    let mut done_at = BTreeMap::new();
    for (i, agent) in agents.into_iter().enumerate() {
        let out = agent.wait_with_output().expect("agent");
        let log = std::fs::read_to_string(c.nodes[i].path("agent.log")).unwrap_or_default();
        assert!(out.status.success(), "node {} failed: {log}", c.nodes[i].name);
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ds=nocloud;s=file://"), "{log}");
        done_at.insert(c.nodes[i].name.clone(), Instant::now());
    }
    let entries = audit(&c, 1);
    let booted: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e["action"] == "node.booted")
        .filter_map(|e| e["subject"].as_str()?.strip_prefix("node/"))
        .collect();
    assert_eq!(booted.len(), NODES, "every node phoned home: {booted:?}");
    let failover = stranded.iter().filter_map(|n| done_at.get(n)).map(|t| t.duration_since(killed_at)).max();
    eprintln!(
        "all {NODES} nodes done {:.1} s after the start; the last stranded node finished {:.1} s after the kill",
        started.elapsed().as_secs_f64(),
        failover.unwrap_or_default().as_secs_f64()
    );

    // The survivors end with no tunnels and no peers; s1 is seen as lost.
    eventually(20, "survivors' devices empty", || {
        c.servers[1].wg_peers().is_empty() && c.servers[2].wg_peers().is_empty()
    });
    eventually(20, "s1 reported lost", || {
        let s = c.servers[2].json(&["server", "list", "--json"]);
        s.as_array().is_some_and(|a| a.iter().any(|s| s["id"] == "s1" && s["alive"] == false))
    });
    eventually(20, "no tunnels left", || tunnels(&c, 2).is_empty());
    let entries = audit(&c, 1);
    let opened = assert_no_address_was_shared(&entries);
    eprintln!("{opened} tunnels opened in all; no address was ever held by two tunnels");

    // The killed server comes back and removes the stale peers wireguard-go kept.
    assert!(!c.servers[0].wg_peers().is_empty(), "stale peers are still there before the restart");
    c.servers[0].launch();
    eventually(10, "restarted s1 drops its stale peers", || c.servers[0].wg_peers().is_empty());
    let s = c.servers[1].json(&["server", "list", "--json"]);
    assert!(s.as_array().is_some_and(|a| a.iter().all(|s| s["alive"] == true)), "s1 alive again: {s}");
}

#[test]
fn re_enrolling_at_another_server_removes_the_old_peer_promptly() {
    // The periodic reconcile is slowed to a minute: only the store's notification can
    // make s1 drop the peer within seconds.
    let c = HaCluster::new(2, 1, "", "reconcile_interval_secs = 60\n");
    let n = &c.nodes[0];
    c.servers[0].ok(&["node", "add", &n.name, "--mac", &n.mac, "--ip", &n.ip, "--identity", "network"]);
    let keys = c.server_keys();
    let mut holder = n
        .agent("cloud-init", "http://198.18.0.1:8470", &keys, "60s")
        .arg("--hold")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().expect("stdout")), &mut line)
        .expect("ds line");
    assert!(line.starts_with("ds=nocloud-net;"), "{line:?}");
    assert_eq!(c.servers[0].wg_peers().len(), 1);
    // The same node boots again, at s2 (its first agent is still holding the tunnel at s1).
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(holder.id() as i32), nix::sys::signal::Signal::SIGKILL);
    let _ = holder.wait();
    let _ = std::process::Command::new("ip").args(["-n", &n.ns.name, "link", "del", &n.interface]).output();
    let began = Instant::now();
    let out = n.agent("fetch", "http://198.18.0.2:8470", &keys, "60s").output().expect("agent");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(10, "s1 drops the replaced peer", || c.servers[0].wg_peers().is_empty());
    let took = began.elapsed();
    eprintln!("s1 removed the peer {:.2} s after the node started enrolling at s2", took.as_secs_f64());
    assert!(took < Duration::from_secs(30), "well before the 60 s reconcile: {took:?}");
    let entries = audit(&c, 1);
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "tunnel.close" && e["detail"].as_str().unwrap_or("").contains("reason=replaced")),
        "the tunnel at s1 was closed as replaced"
    );
}

/// What the cloud-init-mode node's profile writes: proof that cloud-init got its documents.
const USER_DATA: &str = "#cloud-config
hostname: {{ node.hostname }}
write_files:
  - path: /etc/ferry-test
    content: \"{{ node.name }} configured\\n\"
";

#[test]
fn a_cloud_init_node_moves_its_tunnel_off_a_server_killed_under_it() {
    // The node's cloud-init-mode agent holds its tunnel at s1 and prints the datasource
    // line; cloud-init starts; s1 is SIGKILLed before cloud-init fetches anything (its
    // wireguard-go device lives on and resets cloud-init's connections). The agent must
    // move the tunnel to s2 so that cloud-init's retries, at the same datasource URL,
    // get the node's documents there and phone home there.
    let tarball = rootfs_tarball();
    let unpacking = std::thread::spawn(move || NodeRoot::unpack(&tarball));
    let mut c = HaCluster::new(3, 1, "heartbeat_secs = 1\nlost_after_secs = 4\n", "");
    let n = &c.nodes[0];
    let template = n.path("user-data");
    std::fs::write(&template, USER_DATA).expect("user-data");
    let template = template.to_str().expect("utf-8");
    c.servers[0].ok(&["profile", "add", "compute", "--user-data", template]);
    n.add_to(&c.servers[0], &["-P", "compute", "--identity", "network"]);
    let root = unpacking.join().unwrap_or_else(|e| std::panic::resume_unwind(e));

    let log = n.path("agent.log");
    let mut agent = n
        .agent("cloud-init", &c.server_urls(0), &c.server_keys(), "120s")
        // This test kills the server the node is at: start at the first listed (s1).
        .args(["--server-order", "listed"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("agent log"))
        .spawn()
        .expect("agent");
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut ds = String::new();
    std::io::BufReader::new(agent.stdout.take().expect("stdout")).read_line(&mut ds).expect("ds line");
    assert_eq!(ds.trim(), "ds=nocloud-net;s=http://100.64.0.1:8471/", "{}", agent_log());
    assert_eq!(tunnels(&c, 1).iter().map(|t| t.2.as_str()).collect::<Vec<_>>(), ["s1"], "held at s1");

    let killed_at = std::thread::scope(|scope| {
        let boot = scope.spawn(|| root.boot(&n.ns, ds.trim(), None));
        // cloud-init has started (its log exists from its first stage on): kill s1.
        eventually(60, "cloud-init to start", || root.path("/var/log/cloud-init.log").exists());
        c.servers[0].kill9();
        let killed_at = Instant::now();
        while !boot.is_finished() && !agent_log().contains("the tunnel moved to") {
            std::thread::sleep(Duration::from_millis(50));
        }
        if agent_log().contains("the tunnel moved to") {
            println!("--- the tunnel moved {:.1} s after s1 was killed", killed_at.elapsed().as_secs_f64());
        }
        let boot = boot.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        println!("--- cloud-init's four stages in {:.1?}\n{}", boot.elapsed, boot.status.trim_end());
        assert!(
            boot.stages.iter().all(|s| s.ends_with(": exit 0")),
            "{:?}\n{}\n{}",
            boot.stages,
            boot.console,
            agent_log()
        );
        assert!(boot.status.lines().any(|l| l == "status: done"), "{}\n{}", boot.status, agent_log());
        assert_eq!(
            root.result_json()["v1"]["datasource"],
            "DataSourceNoCloudNet [seed=cmdline,http://100.64.0.1:8471/][dsmode=net]",
            "{}",
            agent_log()
        );
        assert_eq!(root.result_json()["v1"]["errors"], serde_json::json!([]));
        killed_at
    });
    assert_eq!(root.read("/etc/ferry-test"), "n1 configured\n", "cloud-init applied the node's user-data");
    assert_eq!(root.read("/etc/hostname"), "n1\n");
    // cloud-init really met the dead server: its first tries failed, a retry got through.
    let log = root.read("/var/log/cloud-init.log");
    let attempts = log
        .lines()
        .find_map(|l| l.split("Read from http://100.64.0.1:8471/meta-data (200, ").nth(1))
        .and_then(|rest| rest.split(" after ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("cloud-init never read its meta-data: {log}"));
    println!("--- cloud-init read its meta-data at attempt {attempts} of 11");
    assert!(attempts > 1, "s1 was killed before cloud-init fetched: its first attempts failed");
    let agent_said = agent_log();
    assert!(agent_said.contains("the tunnel moved to http://198.18.0.2:8470"), "{agent_said}");

    // s2 enrolled the node again and took its phone-home; every document was served
    // through the moved tunnel (after its opening, in the one audit log).
    let s2 = c.servers[1].log_text();
    assert!(s2.lines().any(|l| l.contains("node enrolled") && l.contains("n1")), "{s2}");
    eventually(20, "cloud-init's phone-home at s2 to close the tunnel", || tunnels(&c, 1).is_empty());
    assert!(c.servers[1].log_text().lines().any(|l| l.contains("node phoned home") && l.contains("n1")));
    let entries = audit(&c, 1);
    let ids = |action: &str| -> Vec<i64> {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["subject"] == "node/n1")
            .filter_map(|e| e["id"].as_i64())
            .collect()
    };
    let opened = ids("tunnel.open");
    assert_eq!(opened.len(), 2, "one tunnel at s1, one at s2: {entries:?}");
    // Before the move, only the agent's own probe of the new tunnel at s1 (meta-data).
    let served: Vec<(i64, &str)> = entries
        .iter()
        .filter(|e| e["action"] == "document.served" && e["subject"] == "node/n1")
        .filter_map(|e| Some((e["id"].as_i64()?, e["detail"].as_str()?)))
        .collect();
    let before: Vec<_> = served.iter().filter(|(id, _)| *id < opened[1]).collect();
    assert_eq!(before.iter().map(|(_, d)| *d).collect::<Vec<_>>(), ["meta-data"], "{entries:?}");
    let after: BTreeSet<&str> = served.iter().filter(|(id, _)| *id > opened[1]).map(|(_, d)| *d).collect();
    assert_eq!(
        after,
        BTreeSet::from(["meta-data", "user-data", "vendor-data"]),
        "cloud-init's, through the moved tunnel"
    );
    assert_eq!(ids("node.booted").len(), 1);
    assert_no_address_was_shared(&entries);
    println!("the node finished {:.1} s after s1 was killed", killed_at.elapsed().as_secs_f64());

    let out = n.ns.cmd(common::FERRY).args(["agent", "teardown", "--state-dir"]).arg(n.path("state")).output().unwrap();
    assert!(out.status.success(), "ferry agent teardown: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(agent.wait().expect("agent").code(), Some(0), "{}", agent_log());
    assert!(!n.has_interface());
    eventually(20, "survivors' devices empty", || {
        c.servers[1].wg_peers().is_empty() && c.servers[2].wg_peers().is_empty()
    });
}

/// Finding 15 of the outside review: a server started as the several-servers line of the
/// README once showed (`--store`, `--server-id`, no shared `secrets_key`) made its own
/// sealing key, registered, answered `/readyz` 200 and showed as alive, then failed
/// every node whose profile uses a secret. It must refuse to start, say why, and never
/// register; with the shared key it joins, and every server shows the same key id.
#[test]
fn a_server_without_the_clusters_sealing_key_refuses_to_start() {
    let mut c = HaCluster::new(1, 0, "", "");
    let cluster_key_id = c.servers[0].json(&["server", "list", "--json"])[0]["sealing_key_id"]
        .as_str()
        .expect("a sealing key id")
        .to_owned();
    assert_eq!(cluster_key_id.len(), 16, "{cluster_key_id}");
    let shared_key = std::fs::read(c.keys.path().join("secrets.key")).expect("the shared key");

    // s2 with no secrets_key: it makes its own key in its data directory.
    let mut stranger = c.configure_server(2, "", "", "");
    let status = stranger.try_launch().expect_err("a server with its own sealing key must not start");
    assert_eq!(status.code(), Some(1), "{}", stranger.log_text());
    let log = stranger.log_text();
    let own_key = stranger.dir.path().join("data/secrets.key");
    for needed in [
        format!("the sealing key {}", own_key.display()),
        "made at this start".to_owned(),
        format!("is not the key this store's asset tags and secrets are sealed with (key id {cluster_key_id})"),
        "copy the cluster's secrets.key".to_owned(),
    ] {
        assert!(log.contains(&needed), "{needed:?} missing from the error: {log}");
    }
    assert!(!log.contains("WireGuard device up"), "it stopped before its device: {log}");
    let listed = c.servers[0].json(&["server", "list", "--json"]);
    let ids: Vec<&str> = listed.as_array().expect("servers").iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids, ["s1"], "the refused server never registered");
    let key_hex: String = shared_key.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!log.contains(&key_hex), "no key in the log");

    // The same server with the cluster's key (a copy, as on another machine) starts.
    let copy = stranger.dir.path().join("cluster-secrets.key");
    std::fs::write(&copy, &shared_key).expect("copy the key");
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let config = std::fs::read_to_string(&stranger.config).expect("config");
    let config = format!("secrets_key = \"{}\"\n{config}", copy.display());
    std::fs::write(&stranger.config, config).expect("config");
    stranger.launch();
    let listed = c.servers[0].json(&["server", "list", "--json"]);
    let servers = listed.as_array().expect("servers");
    assert_eq!(servers.len(), 2, "{listed}");
    assert!(servers.iter().all(|s| s["alive"] == true && s["sealing_key_id"] == cluster_key_id.as_str()), "{listed}");
    let table = c.servers[0].ok(&["server", "list"]);
    assert!(table.contains("SEALING KEY") && table.matches(&cluster_key_id).count() == 2, "{table}");
}
