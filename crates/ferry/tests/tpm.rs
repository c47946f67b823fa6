//! Issue 6's proof: the `tpm` identity factor with real software TPMs (swtpm, EK
//! certificates from swtpm's local CA), the real agent and server in a namespace
//! cluster, and an attacker's toolbox built from the agent's own TPM steps.
//!
//! Each node's swtpm runs inside the node's network namespace (started from a thread
//! that entered it), so the agent and the attacker reach it at 127.0.0.1 there.

mod common;

#[path = "../../ferry-agent/tests/common/swtpm.rs"]
mod swtpm;
#[path = "common/tpm_kit.rs"]
mod tpm_kit;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::cluster::Cluster;
use common::eventually;
use common::raw::in_netns;
use ferry_agent::tpm::{Endorsement, Tpm};
use ferry_api::enroll::TpmProof;
use swtpm::{LocalCa, Swtpm};
use tpm_kit::*;

#[test]
fn registered_tpms_enroll_alone_and_with_network_or_asset_tag() {
    let (dir, ca) = tpm_lab();
    let c = Cluster::with_config(3, &tpm_config(&ca, false));
    c.add_nodes(&[]);
    let tpms: Vec<(Swtpm, String)> =
        (0..3).map(|i| node_tpm(&dir.path().join(format!("tpm{i}")), &ca, &c.nodes[i].ns.name)).collect();
    let eks: Vec<Endorsement> = (0..3).map(|i| endorsement(&c.nodes[i].ns.name, &tpms[i].1)).collect();

    // n1: registered by its EK certificate (verified against the CA bundle), tpm alone.
    let cert = dir.path().join("n1-ek.der");
    std::fs::write(&cert, eks[0].certificate.as_ref().expect("swtpm_setup made an EK certificate")).unwrap();
    let out = c.server.ok(&["node", "set", "n1", "--tpm-ek-cert", cert.to_str().unwrap()]);
    assert!(out.contains(&fingerprint(&eks[0])), "{out}");
    c.server.ok(&["node", "set", "n1", "--identity", "tpm"]);
    // n2: registered by EK public key (PEM), tpm + network.
    let pem2 = dir.path().join("n2-ek.pem");
    std::fs::write(&pem2, pem(&eks[1])).unwrap();
    c.server.ok(&["node", "set", "n2", "--tpm-ek", pem2.to_str().unwrap()]);
    c.server.ok(&["node", "set", "n2", "--identity", "tpm,network"]);
    // n3: tpm + asset-tag.
    let pem3 = dir.path().join("n3-ek.pem");
    std::fs::write(&pem3, pem(&eks[2])).unwrap();
    c.server.ok(&["node", "set", "n3", "--tpm-ek", pem3.to_str().unwrap()]);
    std::fs::write(c.nodes[2].path("asset-tag"), "TAG-N3-0b7e").unwrap();
    let tag = c.nodes[2].path("asset-tag");
    c.server.ok(&["node", "set", "n3", "--asset-tag-file", tag.to_str().unwrap(), "--identity", "tpm,asset-tag"]);

    let listed = c.server.json(&["node", "tpm", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    assert_eq!(listed[0]["state"], "registered");
    assert_eq!(listed[0]["certified"], true);
    assert_eq!(listed[1]["certified"], false);

    // One TPM, one node: n1's EK cannot also be n2's.
    let err = c.server.fails(&["node", "set", "n2", "--tpm-ek-cert", cert.to_str().unwrap()]);
    assert!(err.contains("already registered for node n1"), "{err}");

    for (i, (_, tcti)) in tpms.iter().enumerate() {
        let out = agent_with_tpm(&c, i, tcti);
        assert_eq!(out.status.code(), Some(0), "node {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for (node, factors) in [("n1", "factors=tpm "), ("n2", "factors=network,tpm "), ("n3", "factors=asset-tag,tpm ")] {
        let log = c.server.audit(node);
        assert!(log.contains("enroll.accepted") && log.contains(factors), "{node}: {log}");
        assert!(log.contains("phone"), "{node} phoned home: {log}");
    }
    eventually(10, "all tunnels closed", || {
        c.server.json(&["tunnel", "list", "--json"]).as_array().is_some_and(|a| a.is_empty())
            && c.server.wg_peers().is_empty()
    });

    // Without the TPM (no ferry.tpm), a tpm policy refuses: exit code 3, nothing granted.
    let out = c.agent(0, "fetch").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(c.server.audit("n1").contains("no TPM proof sent"));
    c.server.assert_nothing_granted();
}

#[test]
fn every_tpm_attack_is_refused_and_grants_nothing() {
    let (dir, ca) = tpm_lab();
    let rogue_ca = LocalCa::new(&dir.path().join("rogue-ca"));
    let c = Cluster::with_config(2, &tpm_config(&ca, false));
    c.add_nodes(&["--identity", "tpm"]);
    let ns = c.nodes[0].ns.name.clone();
    let mac = c.nodes[0].mac.clone();
    // n1's own TPM (registered), another genuine TPM, and one certified by a rogue CA,
    // all reachable from n1's namespace.
    let (_own, own) = node_tpm(&dir.path().join("own"), &ca, &ns);
    let (_other, other) = node_tpm(&dir.path().join("other"), &ca, &ns);
    let (_rogue, rogue) = node_tpm(&dir.path().join("rogue"), &rogue_ca, &ns);
    let ek = endorsement(&ns, &own);
    let cert = dir.path().join("ek.der");
    std::fs::write(&cert, ek.certificate.as_ref().unwrap()).unwrap();
    c.server.ok(&["node", "set", "n1", "--tpm-ek-cert", cert.to_str().unwrap()]);
    // PCR policy: PCR 7 as it is now (Secure Boot state, in a real node).
    let pcr7 = in_netns(&ns, || Tpm::open(&own).unwrap().read_pcrs(&[7]).unwrap()[&7].clone());
    c.server.ok(&["node", "set", "n1", "--tpm-pcr", &format!("7={}", ferry_agent::tpm::hex(&pcr7))]);

    // The baseline: the real agent with the right TPM enrolls (so each refusal below is
    // the attack's doing, not a broken set-up).
    let out = agent_with_tpm(&c, 0, &own);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(10, "the baseline tunnel to close", || c.server.wg_peers().is_empty());

    // 1. An EK certificate not signed by the configured CA is refused at registration.
    let rogue_ek = endorsement(&ns, &rogue);
    let rogue_cert = dir.path().join("rogue.der");
    std::fs::write(&rogue_cert, rogue_ek.certificate.as_ref().unwrap()).unwrap();
    let err = c.server.fails(&["node", "set", "n2", "--tpm-ek-cert", rogue_cert.to_str().unwrap()]);
    assert!(err.contains("not signed by a CA of the configured bundle"), "{err}");
    assert!(c.server.json(&["node", "tpm", "n2", "--json"]).as_array().unwrap().is_empty(), "n2 unchanged");

    let full_audit = || c.server.ok(&["audit", "--limit", "1000"]);
    let refusals_before = full_audit().matches("enroll.refused").count();
    let attacks = in_netns(&ns, || {
        let mut results: Vec<(&str, u16, String)> = Vec::new();
        let mut mine = Tpm::open(&own).unwrap();
        let ak = mine.create_ak().unwrap();

        // 2. An unregistered TPM (another genuine one) claims to be n1.
        let mut theirs = Tpm::open(&other).unwrap();
        let their_ek = theirs.endorsement().unwrap();
        let their_ak = theirs.create_ak().unwrap();
        let s = Session::start(&mac);
        let r = s.credential(&their_ek, &their_ak).expect_err("unregistered TPM must get no challenge");
        results.push(("unregistered TPM", r.0, "not the one registered".into()));
        // ... and its nonce is used up: no second try with it (counted below).
        let r = s.enroll(&TpmProof {
            secret: String::new(),
            attest: String::new(),
            signature: String::new(),
            pcr_values: Default::default(),
        });
        results.push(("the nonce of a refused credential request", r.0, "unknown, used or expired nonce".into()));

        // 3. An EK certificate from a rogue CA, presented at enrollment.
        let mut rogue_tpm = Tpm::open(&rogue).unwrap();
        let rogue_ek = rogue_tpm.endorsement().unwrap();
        let rogue_ak = rogue_tpm.create_ak().unwrap();
        let s = Session::start(&mac);
        let r = s.credential(&rogue_ek, &rogue_ak).expect_err("rogue certificate must get no challenge");
        results.push(("rogue EK certificate", r.0, "not signed by a CA of the configured bundle".into()));

        // 4. An AK from a different TPM under n1's (public) EK: the credential cannot be
        //    activated there, and a guessed secret is refused.
        let s = Session::start(&mac);
        let ch = s.credential(&ek, &their_ak).expect("the server cannot tell yet");
        let blob = B64.decode(&ch.credential_blob).unwrap();
        let secret = B64.decode(&ch.encrypted_secret).unwrap();
        assert!(theirs.activate_credential(&their_ak, &blob, &secret).is_err(), "activation must fail in another TPM");
        let q = theirs.quote(&their_ak, &s.qualifying("n1", &s.key), &ch.pcrs).unwrap();
        let r = s.enroll(&proof(&[0u8; 32], &q));
        results.push(("AK of another TPM", r.0, "credential activation failed".into()));

        // 5. A replayed quote: a good one from an earlier session, with this session's
        //    (correctly activated) secret.
        let old = Session::start(&mac);
        let old_ch = old.credential(&ek, &ak).unwrap();
        let old_quote = mine.quote(&ak, &old.qualifying("n1", &old.key), &old_ch.pcrs).unwrap();
        let s = Session::start(&mac).with_key(old.private);
        let ch = s.credential(&ek, &ak).unwrap();
        let secret = activate(&mut mine, &ak, &ch);
        let r = s.enroll(&proof(&secret, &old_quote));
        results.push(("replayed quote", r.0, "qualifying data is not bound".into()));
        // ... and the whole earlier enrollment request, replayed, dies on its used nonce.

        // 6. The right nonce, but the quote binds another WireGuard key (a hijack).
        let s = Session::start(&mac);
        let ch = s.credential(&ek, &ak).unwrap();
        let secret = activate(&mut mine, &ak, &ch);
        let attacker_key = ferry_wg::PrivateKey::generate().public_key();
        let q = mine.quote(&ak, &s.qualifying("n1", &attacker_key), &ch.pcrs).unwrap();
        let r = s.enroll(&proof(&secret, &q));
        results.push(("quote for another WireGuard key", r.0, "qualifying data is not bound".into()));

        // 7. A good proof, sent twice: the second use of the nonce is refused. (The first
        //    is granted: it is the node itself.) Revoked below.
        let s = Session::start(&mac);
        let ch = s.credential(&ek, &ak).unwrap();
        let secret = activate(&mut mine, &ak, &ch);
        let q = mine.quote(&ak, &s.qualifying("n1", &s.key), &ch.pcrs).unwrap();
        let good = proof(&secret, &q);
        assert_eq!(s.enroll(&good).0, 200, "the genuine enrollment");
        let r = s.enroll(&good);
        results.push(("replayed enrollment", r.0, "unknown, used or expired nonce".into()));
        results
    });
    c.server.ok(&["tunnel", "revoke", "n1"]);
    eventually(10, "the revoked tunnel's peer to go", || c.server.wg_peers().is_empty());
    let mut attacks = attacks;

    // 9. (Finding 12) The registration is cleared between the credential challenge and
    //    the enrollment: the challenge's verdict is not honoured, the store's is.
    let (s, good) = in_netns(&ns, || {
        let mut mine = Tpm::open(&own).unwrap();
        let ak = mine.create_ak().unwrap();
        let s = Session::start(&mac);
        let ch = s.credential(&ek, &ak).unwrap();
        let secret = activate(&mut mine, &ak, &ch);
        let q = mine.quote(&ak, &s.qualifying("n1", &s.key), &ch.pcrs).unwrap();
        (s, proof(&secret, &q))
    });
    c.server.ok(&["node", "set", "n1", "--tpm-clear"]);
    let r = in_netns(&ns, || s.enroll(&good));
    attacks.push(("registration cleared after the challenge", r.0, "no longer registered for this node".into()));
    c.server.ok(&["node", "set", "n1", "--tpm-ek-cert", cert.to_str().unwrap()]);

    // 8. A PCR that differs from the policy: extend PCR 7, then the real agent enrolls.
    in_netns(&ns, || Tpm::open(&own).unwrap().extend_pcr(7, b"a different boot loader").unwrap());
    let out = agent_with_tpm(&c, 0, &own);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));

    // (The replayed enrollment's nonce is unknown, so its refusal names the MAC, not n1.)
    let log = full_audit();
    for (what, status, reason) in &attacks {
        assert_eq!(*status, 401, "{what}: refused");
        assert!(log.contains(reason.as_str()), "{what}: the audit says {reason:?}: {log}");
    }
    assert!(log.contains("PCR 7 differs from the policy"), "{log}");
    assert!(log.contains(&fingerprint(&ek)), "refusals name the EK: {log}");
    // The refused credential request's nonce and the replayed enrollment's.
    assert_eq!(log.matches("reason=unknown, used or expired nonce").count(), 2, "{log}");
    assert_eq!(log.matches("enroll.refused").count() - refusals_before, attacks.len() + 1, "{log}");
    c.server.assert_nothing_granted();
    let tpms = c.server.json(&["node", "tpm", "--json"]);
    assert_eq!(tpms.as_array().unwrap().len(), 1, "no TPM recorded by any attack: {tpms}");
}

/// Issue 19: PCRs selected with no value yet refuse enrollment (no trust on first use);
/// the refused boot's quote verified, so the server kept it; `ferry node tpm learn`
/// shows it and, approved, pins exactly those values, and the same boot enrolls. A boot
/// that measures something else is refused again, naming the PCR.
#[test]
fn a_known_good_boot_is_learned_only_once_an_admin_approves_it() {
    let (dir, ca) = tpm_lab();
    let c = Cluster::with_config(1, &tpm_config(&ca, false));
    c.add_nodes(&["--identity", "tpm"]);
    let ns = c.nodes[0].ns.name.clone();
    let (_own, own) = node_tpm(&dir.path().join("own"), &ca, &ns);
    let ek = endorsement(&ns, &own);
    let cert = dir.path().join("ek.der");
    std::fs::write(&cert, ek.certificate.as_ref().unwrap()).unwrap();
    c.server.ok(&["node", "set", "n1", "--tpm-ek-cert", cert.to_str().unwrap()]);

    // Nothing recorded yet: learn says how to get a quote.
    let err = c.server.fails(&["node", "tpm", "learn", "n1", "--yes"]);
    assert!(err.contains("no verified TPM quote recorded"), "{err}");
    // Select PCR 7 with no value: refused until learned.
    c.server.ok(&["node", "set", "n1", "--tpm-pcrs", "7"]);
    let out = agent_with_tpm(&c, 0, &own);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let log = c.server.audit("n1");
    assert!(log.contains("PCR policy not learned yet: run ferry node tpm learn n1"), "{log}");
    c.server.assert_nothing_granted();

    // No terminal and no --yes: shown, not approved, nothing pinned.
    let pcr7 = in_netns(&ns, || Tpm::open(&own).unwrap().read_pcrs(&[7]).unwrap()[&7].clone());
    let pcr7 = ferry_agent::tpm::hex(&pcr7);
    let out = c.server.run(&["node", "tpm", "learn", "n1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&pcr7), "the quote is shown");
    assert!(String::from_utf8_lossy(&out.stderr).contains("run again with --yes"));
    assert!(!c.server.ok(&["node", "show", "n1", "--json"]).contains(&pcr7), "nothing pinned");

    let learned = c.server.ok(&["node", "tpm", "learn", "n1", "--yes"]);
    assert!(learned.contains(&pcr7) && learned.contains("pinned PCRs 7 on node/n1"), "{learned}");
    let shown = c.server.json(&["node", "show", "n1", "--json"]);
    assert_eq!(shown["settings"]["tpm_pcrs"]["7"], pcr7.as_str(), "exactly the quoted value: {shown}");
    assert!(c.server.audit("n1").contains("tpm.pcrs-learned"));
    let out = agent_with_tpm(&c, 0, &own);
    assert_eq!(out.status.code(), Some(0), "the learned boot enrolls: {}", String::from_utf8_lossy(&out.stderr));
    eventually(10, "the tunnel to close", || c.server.wg_peers().is_empty());

    // Another boot loader: refused naming PCR 7; the learned quote is not re-learned blindly.
    in_netns(&ns, || Tpm::open(&own).unwrap().extend_pcr(7, b"a different boot loader").unwrap());
    let out = agent_with_tpm(&c, 0, &own);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(c.server.audit("n1").contains("PCR 7 differs from the policy"));

    // A profile learns once, from one of its nodes, for all of them (PCR 7: the same on
    // every node of a firmware and its Secure Boot keys).
    c.server.ok(&["profile", "add", "firmware", "--tpm-pcrs", "7"]);
    c.server.ok(&["node", "set", "n1", "--profile", "firmware"]);
    c.server.ok(&["node", "unset", "n1", "tpm-pcrs"]);
    let out = agent_with_tpm(&c, 0, &own);
    assert_eq!(out.status.code(), Some(3), "not learned yet: {}", String::from_utf8_lossy(&out.stderr));
    let err = c.server.fails(&["profile", "tpm", "learn", "compute", "--from", "n1", "--yes"]);
    assert!(err.contains("does not use profile compute"), "{err}");
    let learned = c.server.ok(&["profile", "tpm", "learn", "firmware", "--from", "n1", "--yes"]);
    assert!(learned.contains("pinned PCRs 7 on profile/firmware"), "{learned}");
    let out = agent_with_tpm(&c, 0, &own);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let audit = c.server.ok(&["audit", "--limit", "1000"]);
    assert!(audit.lines().any(|l| l.contains("tpm.pcrs-learned") && l.contains("profile/firmware")), "{audit}");
}

fn median(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort();
    v[v.len() / 2]
}

/// A measurement, not a test (`--ignored`): enrollment latency with and without the
/// `tpm` factor, median of 21 each, interleaved so both see the same machine load.
/// With `tpm` it covers what the agent does: open the TPM, read the EK, create an AK,
/// the credential round trip, ActivateCredential, the quote (PCR 7) and the enrollment.
#[test]
#[ignore]
fn tpm_enrollment_latency() {
    let (dir, ca) = tpm_lab();
    let c = Cluster::with_config(2, &tpm_config(&ca, false));
    c.add_nodes(&["--identity", "network"]);
    let (_t, tcti) = node_tpm(&dir.path().join("t1"), &ca, &c.nodes[0].ns.name);
    let ek = endorsement(&c.nodes[0].ns.name, &tcti);
    let cert = dir.path().join("ek.der");
    std::fs::write(&cert, ek.certificate.as_ref().unwrap()).unwrap();
    c.server.ok(&["node", "set", "n1", "--tpm-ek-cert", cert.to_str().unwrap()]);
    let pcr7 = in_netns(&c.nodes[0].ns.name, || Tpm::open(&tcti).unwrap().read_pcrs(&[7]).unwrap()[&7].clone());
    c.server.ok(&[
        "node",
        "set",
        "n1",
        "--identity",
        "tpm",
        "--tpm-pcr",
        &format!("7={}", ferry_agent::tpm::hex(&pcr7)),
    ]);
    let (mac1, mac2) = (c.nodes[0].mac.clone(), c.nodes[1].mac.clone());
    let ns1 = c.nodes[0].ns.name.clone();
    let ns2 = c.nodes[1].ns.name.clone();
    let (mut with, mut without, mut ak_times) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..21 {
        with.push(in_netns(&ns1, || {
            let began = std::time::Instant::now();
            let mut tpm = Tpm::open(&tcti).unwrap();
            let ek = tpm.endorsement().unwrap();
            let ak_began = std::time::Instant::now();
            let ak = tpm.create_ak().unwrap();
            ak_times.push(ak_began.elapsed());
            let s = Session::start(&mac1);
            let ch = s.credential(&ek, &ak).unwrap();
            let secret = activate(&mut tpm, &ak, &ch);
            let q = tpm.quote(&ak, &s.qualifying("n1", &s.key), &ch.pcrs).unwrap();
            assert_eq!(s.enroll(&proof(&secret, &q)).0, 200);
            began.elapsed()
        }));
        without.push(in_netns(&ns2, || {
            let began = std::time::Instant::now();
            let s = Session::start(&mac2);
            let req = serde_json::json!({"mac": s.mac, "public_key": s.key.to_base64(), "nonce": B64.encode(&s.nonce)});
            assert_eq!(post("/v1/enroll", &req).0, 200);
            began.elapsed()
        }));
    }
    let (w, wo, ak) = (median(with), median(without), median(ak_times));
    println!(
        "enrollment latency, median of 21: with tpm {w:?} (of which creating the AK {ak:?}), without (network factor) {wo:?}, ratio {:.1}x",
        w.as_secs_f64() / wo.as_secs_f64()
    );
    c.server.ok(&["tunnel", "revoke", "n1"]);
    c.server.ok(&["tunnel", "revoke", "n2"]);
}
