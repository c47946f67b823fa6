//! Only root on a node can use its tunnel (outside review, finding 5): while a
//! cloud-init-mode agent holds the tunnel, an unprivileged user on the node gets no
//! document and cannot phone home — neither through the routing table nor with a socket
//! bound to the tunnel interface (`curl --interface`, which skips routing rules) —
//! while root (the agent, cloud-init) still can; the guard goes with the tunnel, and
//! `ferry agent teardown` removes the one a killed agent left.
//!
//! Run as root: `cargo test -p ferry --test tunnel_guard`.

mod common;

use common::cluster::{Cluster, Node, DATASOURCE};
use std::process::Command;

/// curl in the node's namespace as `nobody` (uid/gid 65534): (HTTP status, body); status 0
/// when nothing answered.
fn curl_as_nobody(n: &Node, args: &[&str]) -> (u16, String) {
    let out =
        n.ns.cmd("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"])
            .args(["-s", "-m", "5", "-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("setpriv curl (apt-get install -y util-linux curl)");
    common::curl_answer(&out)
}

/// The nftables tables of the node's namespace (the `nft` tool reads them back).
fn nft_tables(n: &Node) -> String {
    let out = n.ns.cmd("nft").args(["list", "tables"]).output().expect("nft (apt-get install -y nftables)");
    assert!(out.status.success(), "nft list tables: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn only_root_on_the_node_can_use_the_tunnel_while_it_is_held() {
    let c = Cluster::new(1);
    c.add_nodes(&["--identity", "network"]);
    let n = &c.nodes[0];
    let table = format!("ferry_agent_{}", n.interface);
    let meta = format!("{DATASOURCE}/meta-data");
    let phone_home = format!("{DATASOURCE}/phone-home");

    let holder = c.hold(0);
    assert!(nft_tables(n).contains(&format!("table inet {table}")), "{}", nft_tables(n));
    let ruleset = n.ns.sh(&["nft", "list", "table", "inet", &table]);
    assert!(ruleset.contains(&format!("oifname \"{}\" meta skuid != 0 drop", n.interface)), "{ruleset}");

    // A local user: routed normally, then bound to the tunnel interface.
    for bound in [&[][..], &["--interface", n.interface.as_str()][..]] {
        let (code, body) = curl_as_nobody(n, &[bound, &[meta.as_str()]].concat());
        assert_eq!(code, 0, "nobody {bound:?} got an answer: {body}");
        assert!(!body.contains("instance-id"), "nobody {bound:?} read the meta-data: {body}");
        let form = ["-X", "POST", "-d", "instance_id=n1&hostname=n1", phone_home.as_str()];
        let (code, body) = curl_as_nobody(n, &[bound, &form[..]].concat());
        assert_eq!(code, 0, "nobody {bound:?} phoned home: {body}");
    }
    assert!(c.server.tunnel_nodes().contains(&n.name), "the tunnel is still open: nobody's phone-home never arrived");
    let audit = c.server.ok(&["audit", "--node", &n.name, "--limit", "100"]);
    assert!(!audit.contains("node.booted"), "{audit}");
    // Root (the agent, cloud-init) still reaches the datasource.
    let (code, body) = n.curl(&[meta.as_str()]);
    assert_eq!((code, body.contains("instance-id")), (200, true), "root: {body}");

    // The agent removes the guard with the tunnel.
    assert_eq!(holder.stop(), Some(0));
    assert!(!n.has_interface());
    assert!(!nft_tables(n).contains(&table), "the guard went with the tunnel: {}", nft_tables(n));

    // A killed agent leaves its guard behind; teardown (from the state file) removes it.
    let holder = c.hold(0);
    holder.kill9();
    assert!(nft_tables(n).contains(&table), "{}", nft_tables(n));
    let out = Command::new("ip")
        .args(["netns", "exec", &n.ns.name, common::FERRY, "agent", "teardown", "--state-dir"])
        .arg(n.path("state"))
        .output()
        .expect("ferry agent teardown");
    assert!(out.status.success(), "teardown: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!nft_tables(n).contains(&table), "teardown removed the guard: {}", nft_tables(n));
    assert!(!n.path("state/agent.json").exists());
}
