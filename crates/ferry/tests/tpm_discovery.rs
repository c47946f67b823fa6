//! The `tpm` factor's discovery (trust on first use) with real software TPMs: a new
//! TPM is held until an admin approves its exact fingerprint, and another TPM with the
//! victim's MAC cannot take its place (split from `tpm.rs`; same cluster and kit).
//!
//! Each node's swtpm runs inside the node's network namespace (started from a thread
//! that entered it), so the agent and the attacker reach it at 127.0.0.1 there.

mod common;

#[path = "../../ferry-agent/tests/common/swtpm.rs"]
mod swtpm;
#[path = "common/tpm_kit.rs"]
mod tpm_kit;

use common::cluster::Cluster;
use common::eventually;
use common::raw::in_netns;
use ferry_agent::tpm::Tpm;
use swtpm::{LocalCa, Swtpm};
use tpm_kit::*;

/// A discovery cluster whose server also has a remote admin listener (for role checks).
fn discovery_cluster(ca: &LocalCa, nodes: usize) -> Cluster {
    let top = format!("{}[remote_admin]\nlisten = \"127.0.0.1:8472\"\n", tpm_config(ca, true));
    Cluster::with_config(nodes, &top)
}

/// POST /v1/nodes/NODE/tpm/approve over the remote admin listener: the HTTP status.
fn remote_approve(c: &Cluster, token: &str, node: &str, fingerprint: &str) -> u16 {
    let cert = c.server.dir.path().join("data/remote-admin.crt");
    let out = c
        .server
        .netns
        .cmd("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10", "--cacert"])
        .arg(&cert)
        .args(["-X", "POST", "-H", "Content-Type: application/json"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--data", &serde_json::json!({ "fingerprint": fingerprint }).to_string()])
        .arg(format!("https://127.0.0.1:8472/v1/nodes/{node}/tpm/approve"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

fn tpm_rows(c: &Cluster) -> Vec<serde_json::Value> {
    c.server.json(&["node", "tpm", "--json"]).as_array().unwrap().clone()
}

#[test]
fn discovery_holds_a_new_tpm_until_an_admin_approves_it() {
    let (dir, ca) = tpm_lab();
    let rogue_ca = LocalCa::new(&dir.path().join("rogue-ca"));
    let c = discovery_cluster(&ca, 2);
    c.add_nodes(&["--identity", "tpm"]);
    let (_t1, tcti1) = node_tpm(&dir.path().join("t1"), &ca, &c.nodes[0].ns.name);
    let (_t2, tcti2) = node_tpm(&dir.path().join("t2"), &rogue_ca, &c.nodes[1].ns.name);

    let out = agent_with_tpm(&c, 0, &tcti1);
    assert_eq!(out.status.code(), Some(3), "held, not admitted: {}", String::from_utf8_lossy(&out.stderr));
    let ek = endorsement(&c.nodes[0].ns.name, &tcti1);
    let fp = fingerprint(&ek);
    let listed = tpm_rows(&c);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0]["node"].as_str(), listed[0]["state"].as_str()), (Some("n1"), Some("pending")));
    assert_eq!(listed[0]["fingerprint"].as_str(), Some(fp.as_str()));
    assert!(c.server.audit("n1").contains("held pending"));
    // A pending TPM is no identity: still refused.
    assert_eq!(agent_with_tpm(&c, 0, &tcti1).status.code(), Some(3));
    assert!(c.server.audit("n1").contains("is pending approval"));
    // A TPM certified by an unknown CA is not even held.
    assert_eq!(agent_with_tpm(&c, 1, &tcti2).status.code(), Some(3));
    assert!(c.server.audit("n2").contains("not signed by a CA of the configured bundle"));
    assert_eq!(tpm_rows(&c).len(), 1, "n2 not held");
    c.server.assert_nothing_granted();

    // Approval names the fingerprint the admin checked: none, a wrong one, a hostlist
    // without one per node, or an operator's token approve nothing.
    assert_eq!(c.server.run(&["node", "approve", "n1"]).status.code(), Some(2), "--ek-fingerprint is required");
    let other = format!("sha256:{}", "0".repeat(64));
    let err = c.server.fails(&["node", "approve", "n1", "--ek-fingerprint", &other]);
    assert!(err.contains(&format!("is {fp}, not {other}")), "{err}");
    let err = c.server.fails(&["node", "approve", "n[1-2]", "--ek-fingerprint", &fp]);
    assert!(err.contains("name each one"), "{err}");
    let operator = c.server.ok(&["token", "create", "oncall", "--role", "operator"]).trim().to_owned();
    assert_eq!(remote_approve(&c, &operator, "n1", &fp), 403, "approving a TPM is the admin's");
    assert_eq!(tpm_rows(&c)[0]["state"], "pending", "nothing approved");

    let out = c.server.ok(&["node", "approve", "n1", "--ek-fingerprint", &fp]);
    assert!(out.contains(&fp), "{out}");
    let err = c.server.fails(&["node", "approve", "n2", "--ek-fingerprint", &other]);
    assert!(err.contains("no pending TPM"), "{err}");
    let out = agent_with_tpm(&c, 0, &tcti1);
    assert_eq!(out.status.code(), Some(0), "approved: {}", String::from_utf8_lossy(&out.stderr));
    assert!(c.server.audit("n1").contains("tpm.approve"));
}

/// The attacker's whole run with its own (genuine) TPM and the victim's MAC, from the
/// current namespace: challenge, credential, activation, quote, enrollment (with an
/// asset-tag proof for `tag`). Returns the credential step's and the enrollment's status.
fn attack_with_own_tpm(mac: &str, tcti: &str, tag: Option<&str>) -> (u16, u16) {
    let mut tpm = Tpm::open(tcti).unwrap();
    let ek = tpm.endorsement().unwrap();
    let ak = tpm.create_ak().unwrap();
    let s = Session::start(mac);
    let ch = match s.credential(&ek, &ak) {
        Ok(ch) => ch,
        Err((status, _)) => return (status, 0),
    };
    let secret = activate(&mut tpm, &ak, &ch);
    let q = tpm.quote(&ak, &s.qualifying(&ch.node, &s.key), &ch.pcrs).unwrap();
    (200, s.enroll_with_tag(&proof(&secret, &q), tag.map(|t| (t, "n1"))).0)
}

/// Finding 1 of the outside review: with discovery on, an attacker with any genuine TPM
/// (here swtpm certified by the configured CA) looping with the victim's MAC used to
/// replace the victim's pending EK, so the admin's approval of "n1" admitted the
/// attacker. Now: nothing is recorded before the TPM proved itself and every other
/// factor held; a held EK is never replaced (the newcomer is a conflict, both
/// fingerprints shown); approval takes the exact fingerprint.
#[test]
fn discovery_cannot_be_hijacked_by_another_tpm_with_the_victims_mac() {
    let (dir, ca) = tpm_lab();
    let c = discovery_cluster(&ca, 2);
    c.add_nodes(&[]);
    let tag = "TAG-N1-3f9c2a7b1e6d4c8f";
    std::fs::write(c.nodes[0].path("asset-tag"), tag).unwrap();
    let tag_file = c.nodes[0].path("asset-tag");
    c.server.ok(&["node", "set", "n1", "--identity", "tpm,network,asset-tag"]);
    c.server.ok(&["node", "set", "n1", "--asset-tag-file", tag_file.to_str().unwrap()]);
    let (victim_ns, attacker_ns) = (c.nodes[0].ns.name.clone(), c.nodes[1].ns.name.clone());
    let mac = c.nodes[0].mac.clone();
    let (_victim_tpm, victim_tcti) = node_tpm(&dir.path().join("victim"), &ca, &victim_ns);
    let victim_fp = fingerprint(&endorsement(&victim_ns, &victim_tcti));
    let mut attacker_tpm = Swtpm::manufacture(&dir.path().join("attacker"), &ca);

    // From its own address (the network factor fails), even with the right tag: the
    // credential step answers (the server cannot tell yet) but records nothing, and the
    // enrollment records nothing either.
    let tcti = in_netns(&attacker_ns, || attacker_tpm.start());
    let attacker_fp = fingerprint(&endorsement(&attacker_ns, &tcti));
    let (credential, enrolled) = in_netns(&attacker_ns, || attack_with_own_tpm(&mac, &tcti, Some(tag)));
    assert_eq!((credential, enrolled), (200, 401));
    assert!(c.server.audit("n1").contains("network factor"));
    assert!(tpm_rows(&c).is_empty(), "nothing recorded: {:?}", tpm_rows(&c));
    // At the victim's address (it took it) but with a wrong asset tag: nothing either.
    attacker_tpm.stop();
    let tcti = in_netns(&victim_ns, || attacker_tpm.start());
    let (_, enrolled) = in_netns(&victim_ns, || attack_with_own_tpm(&mac, &tcti, Some("TAG-GUESSED-0000000")));
    assert_eq!(enrolled, 401);
    assert!(c.server.audit("n1").contains("asset-tag factor: proof did not verify"));
    assert!(tpm_rows(&c).is_empty(), "nothing recorded: {:?}", tpm_rows(&c));

    // The victim boots: its TPM is held pending.
    assert_eq!(agent_with_tpm(&c, 0, &victim_tcti).status.code(), Some(3));
    // The attacker with everything but the victim's TPM (its address, its tag), looping:
    // refused every time; the pending EK stays the victim's, the attacker's is a conflict.
    for _ in 0..3 {
        assert_eq!(in_netns(&victim_ns, || attack_with_own_tpm(&mac, &tcti, Some(tag))).1, 401);
    }
    let rows = tpm_rows(&c);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "pending");
    assert_eq!(rows[0]["fingerprint"].as_str(), Some(victim_fp.as_str()), "the pending EK was not replaced");
    assert_eq!(rows[0]["conflict"].as_str(), Some(attacker_fp.as_str()), "the conflict is shown");
    let table = c.server.ok(&["node", "tpm"]);
    assert!(table.contains(&victim_fp) && table.contains(&attacker_fp) && table.contains("CONFLICT"), "{table}");
    let log = c.server.audit("n1");
    assert_eq!(log.matches("tpm.conflict").count(), 3, "{log}");
    assert!(log.contains(&format!("held={victim_fp} (pending) presented={attacker_fp}")), "{log}");

    // The admin approves by fingerprint: the attacker's is refused, the victim's admitted.
    let err = c.server.fails(&["node", "approve", "n1", "--ek-fingerprint", &attacker_fp]);
    assert!(err.contains("nothing approved"), "{err}");
    c.server.ok(&["node", "approve", "n1", "--ek-fingerprint", &victim_fp]);
    // Registered now: the attacker still gets nothing and changes nothing.
    assert_eq!(in_netns(&victim_ns, || attack_with_own_tpm(&mac, &tcti, Some(tag))).1, 401);
    let rows = tpm_rows(&c);
    assert_eq!(
        (rows[0]["state"].as_str(), rows[0]["fingerprint"].as_str()),
        (Some("registered"), Some(victim_fp.as_str()))
    );
    c.server.assert_nothing_granted();
    let out = agent_with_tpm(&c, 0, &victim_tcti);
    assert_eq!(out.status.code(), Some(0), "the victim enrolls: {}", String::from_utf8_lossy(&out.stderr));
    eventually(10, "the tunnel to close", || c.server.wg_peers().is_empty());
}
