//! `ferry doctor` against a real server (its own network namespace, real WireGuard
//! device and listeners): sound, every check passes; then the set-up is broken one way
//! per check and each check names it. (The clock and lost-server checks cannot be broken
//! on one host: their unit tests in ferry-cli cover them.)

mod common;

use common::{require_root, Netns, TestServer, FERRY};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// `ferry doctor --json` in a network namespace: (check → (status, detail)), exit code.
fn doctor(ns: &Netns, socket: &Path, dnsmasq: &Path) -> (BTreeMap<String, (String, String)>, i32) {
    let out = ns
        .cmd(FERRY)
        .args(["doctor", "--json", "--dnsmasq-conf"])
        .arg(dnsmasq)
        .env("FERRY_ADMIN_SOCKET", socket)
        .output()
        .expect("run ferry doctor");
    let json: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let checks = json
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("check"), (s("status"), format!("{} → {}", s("detail"), s("fix"))))
        })
        .collect();
    (checks, out.status.code().unwrap_or(-1))
}

fn status<'a>(checks: &'a BTreeMap<String, (String, String)>, check: &str) -> (&'a str, &'a str) {
    let (s, d) = checks.get(check).unwrap_or_else(|| panic!("no {check} check in {checks:?}"));
    (s, d)
}

#[test]
fn doctor_passes_a_sound_setup_and_names_each_broken_part() {
    require_root();
    let mut s = TestServer::start_in_with(
        Netns::new("fdr"),
        "",
        "0.0.0.0:8470",
        "tls_listen = \"0.0.0.0:8443\"\npublic_url = \"http://10.0.0.1:8470\"",
        "backend = \"userspace\"\n",
        None,
    );
    let dnsmasq = s.dir.path().join("dnsmasq-ferry.conf");
    std::fs::write(&dnsmasq, s.ok(&["configure", "dnsmasq", "--interface", "eth0", "--range", "10.0.0.0/16"])).unwrap();

    // Sound: every check passes (userspace WireGuard is configured, so no module is due).
    let (checks, code) = doctor(&s.netns, &s.socket, &dnsmasq);
    assert_eq!(code, 0, "{checks:#?}");
    for (check, (st, detail)) in &checks {
        assert_eq!(st, "ok", "{check} on a sound set-up: {detail}");
    }
    assert_eq!(checks.len(), 10, "{checks:#?}");
    // The human form: one line per check.
    let text = s
        .netns
        .cmd(FERRY)
        .args(["doctor", "--dnsmasq-conf"])
        .arg(&dnsmasq)
        .env("FERRY_ADMIN_SOCKET", &s.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    eprintln!("{text}");
    assert_eq!(text.lines().count(), 10, "{text}");

    // Broken: a weak node naming an image nobody imported, and so missing from dnsmasq;
    // a local network inside the tunnel network; a certificate replaced on disk.
    s.ok(&[
        "node",
        "add",
        "n1",
        "--mac",
        "52:54:00:00:00:01",
        "--ip",
        "10.0.1.1",
        "--identity",
        "network",
        "--image",
        "alma9",
    ]);
    s.netns.sh(&["ip", "link", "add", "clash0", "type", "veth", "peer", "name", "clash1"]);
    s.netns.sh(&["ip", "addr", "add", "100.64.200.1/24", "dev", "clash0"]);
    s.netns.sh(&["ip", "link", "set", "clash0", "up"]);
    let cert = s.dir.path().join("data/provisioning.crt");
    assert!(cert.is_file(), "the self-signed provisioning certificate is not at {}", cert.display());
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=other", "-keyout", "/dev/null", "-out"])
        .arg(&cert)
        .output()
        .expect("openssl (apt-get install -y openssl)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));

    let (checks, code) = doctor(&s.netns, &s.socket, &dnsmasq);
    assert_eq!(code, 1, "a failed check exits 1: {checks:#?}");
    let expect = [
        ("images", "fail", "node n1 → alma9"),
        ("identity", "warn", "(weak): n1"),
        ("dnsmasq", "fail", "missing 52:54:00:00:00:01,10.0.1.1,n1"),
        ("tunnel-network", "fail", "100.64.200.0/24 dev clash0"),
        ("tls", "fail", "is not the certificate the server serves"),
    ];
    for (check, st, detail) in expect {
        let (got, text) = status(&checks, check);
        assert_eq!(got, st, "{check}: {text}");
        assert!(text.contains(detail), "{check}: {text}");
    }
    for check in ["server", "listeners", "clock", "servers"] {
        assert_eq!(status(&checks, check).0, "ok", "{check} broke with the others: {checks:#?}");
    }

    // From another host (namespace): the device and the listeners are not there.
    let elsewhere = Netns::new("fdo");
    let (checks, _) = doctor(&elsewhere, &s.socket, &dnsmasq);
    assert_eq!(status(&checks, "wireguard").0, "fail", "{checks:#?}");
    let (st, text) = status(&checks, "listeners");
    assert_eq!(st, "fail");
    assert!(text.contains("provisioning 0.0.0.0:8470") && text.contains("datasource 100.64.0.1:8471"), "{text}");

    // The server down: that one line fails, the rest is skipped, not guessed.
    s.stop();
    let (checks, code) = doctor(&s.netns, &s.socket, &dnsmasq);
    assert_eq!(code, 1);
    let (st, text) = status(&checks, "server");
    assert_eq!(st, "fail");
    assert!(text.contains("systemctl status ferry"), "{text}");
    assert!(checks.iter().filter(|(c, _)| *c != "server").all(|(_, (st, _))| st == "skipped"), "{checks:#?}");
}
