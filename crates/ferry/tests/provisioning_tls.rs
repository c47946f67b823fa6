//! TLS on the provisioning listener: an agent given `https://` and the certificate's
//! pin (`ferry.tls=sha256:…`, from `ferry server-cert`) enrolls and completes; with any
//! other pin it talks to nobody and nothing is granted; the plain listener still serves
//! what iPXE needs.

mod common;

use common::cluster::{Cluster, SERVER_IP};
use common::{eventually, FERRY};

fn agent(c: &Cluster, i: usize, server: &str, pin: &str, timeout: &str) -> std::process::Output {
    c.agent_to(i, "fetch", server, &c.server.public_key(), timeout).args(["--tls-pin", pin]).output().expect("agent")
}

#[test]
fn an_agent_pinning_the_certificate_enrolls_over_tls_and_no_other_pin_works() {
    common::require_root();
    let c = Cluster::with_provisioning(2, &format!("tls_listen = \"{SERVER_IP}:8443\""));
    c.add_nodes(&["--identity", "network"]);
    let pin = c.server.ok(&["server-cert"]).trim().to_owned();
    assert!(pin.starts_with("sha256:") && pin.len() == 71, "{pin}");
    let https = format!("https://{SERVER_IP}:8443");

    let out = agent(&c, 0, &https, &pin, "30s");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let audit = c.server.ok(&["audit", "--node", "n1", "--limit", "50"]);
    assert!(audit.contains("enroll.accepted") && audit.contains("reason=phone-home"), "{audit}");

    // Another pin: the agent refuses the server's certificate and never enrolls.
    let wrong = format!("sha256:{}", "00".repeat(32));
    let out = agent(&c, 1, &https, &wrong, "4s");
    assert_eq!(out.status.code(), Some(5), "server unreachable: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not one pinned by ferry.tls="),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !c.server.ok(&["audit", "--node", "n2", "--limit", "50"]).contains("enroll"),
        "n2 never reached enrollment"
    );
    eventually(10, "no tunnel left", || c.server.wg_peers().is_empty());

    // https without a pin is a usage error, before any network traffic.
    let n = &c.nodes[1];
    let out =
        n.ns.cmd(FERRY)
            .args(["agent", "--server", &https, "--pubkey", &c.server.public_key(), "--cmdline", "/dev/null"])
            .output()
            .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    // The plain listener still answers (iPXE cannot pin a certificate).
    let (status, _) = c.nodes[1].curl(&[&format!("http://{SERVER_IP}:8470/boot/ipxe")]);
    assert_eq!(status, 200);
}
