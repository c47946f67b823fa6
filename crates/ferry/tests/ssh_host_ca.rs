//! Issue 18's proof: ferry as the cluster's SSH host certificate authority, with real
//! components — real cloud-init 22.4 in a node root (`common::chroot`), the node's real
//! sshd (Debian 12's, in the node's namespaces), and a real OpenSSH client whose
//! known_hosts holds nothing but ferry's `@cert-authority` line.
//!
//! - cloud-init mode: ferry's default vendor-data has the keys cloud-init made certified
//!   through the tunnel; `ssh -o StrictHostKeyChecking=yes` logs in, and still does after
//!   the node "reboots" (a fresh root from the image: new host keys);
//! - fetch mode: the agent makes the host key and has it certified before phone-home;
//!   cloud-init keeps it; the client logs in;
//! - `ssh-keygen -L` shows the principals (name, FQDN, inventory address) and validity;
//! - a request for another node's names, a key another node had certified, and a request
//!   from outside a tunnel are refused (audited);
//! - after `ferry ssh revoke`, the client refuses the node with `ferry ssh krl` as its
//!   `RevokedHostKeys`, and with `ferry ssh known-hosts`'s `@revoked` line.
//! - the optional user CA: nodes booted after `ferry ssh ca rotate --purpose user` trust
//!   it (both modes); a key with a `ferry ssh sign-user` certificate logs in as its login
//!   name, the same key certified for another name or a key without one is refused.
//!
//! Run as root: `cargo test -p ferry --test ssh_host_ca -- --nocapture` (the cloud-init
//! root: `sudo scripts/cloud-init-chroot.sh`, as for tests/cloud_init.rs).

mod common;

use common::chroot::{rootfs_tarball, NodeRoot};
use common::cluster::{Cluster, DATASOURCE, SERVER_IP};
use common::{eventually, sh};
use std::io::BufRead;
use std::path::Path;
use std::process::{Output, Stdio};
use std::thread;

const USER_DATA: &str = r#"#cloud-config
hostname: {{ node.name }}
fqdn: {{ node.fqdn }}
users:
  - name: hpcadmin
    shell: /bin/bash
    lock_passwd: true
    ssh_authorized_keys:
      - {{ tags.admin_key }}
"#;

/// Unpacks `count` roots while `then` runs.
fn with_roots<T>(count: usize, then: impl FnOnce() -> T) -> (T, Vec<NodeRoot>) {
    let tarball = rootfs_tarball();
    let unpacking: Vec<_> = (0..count)
        .map(|_| {
            let t = tarball.clone();
            thread::spawn(move || NodeRoot::unpack(&t))
        })
        .collect();
    let value = then();
    (value, unpacking.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect())
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Boots node `i` in cloud-init mode: the agent holds the tunnel, cloud-init runs with
/// ferry's default vendor-data (phone_home and the host certificate script).
fn boot_cloud_init_mode(c: &Cluster, i: usize, root: &NodeRoot) {
    let n = &c.nodes[i];
    let log = n.path("agent.log");
    let mut agent = c
        .agent(i, "cloud-init")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("ferry agent");
    let mut ds = String::new();
    std::io::BufReader::new(agent.stdout.take().unwrap()).read_line(&mut ds).unwrap();
    assert_eq!(ds.trim(), format!("ds=nocloud-net;s={DATASOURCE}/"), "{}", std::fs::read_to_string(&log).unwrap());
    let boot = root.boot(&n.ns, ds.trim(), None);
    let tunnels = || c.server.json(&["tunnel", "list", "--json"]).to_string();
    eventually(15, "cloud-init's phone_home to close the tunnel", || !tunnels().contains(&format!("\"{}\"", n.name)));
    let out = n.ns.cmd(common::FERRY).args(["agent", "teardown", "--state-dir"]).arg(n.path("state")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let _ = agent.wait();
    let result = root.result_json();
    assert_eq!(result["v1"]["errors"], serde_json::json!([]), "cloud-init ran clean: {result}\n{}", boot.console);
}

/// Boots node `i` in fetch mode: the agent makes the host key in the root's /etc/ssh
/// and has it certified, then cloud-init runs from the seed.
fn boot_fetch_mode(c: &Cluster, i: usize, root: &NodeRoot) {
    let n = &c.nodes[i];
    std::fs::remove_dir_all(n.path("ssh")).unwrap();
    std::os::unix::fs::symlink(root.path("/etc/ssh"), n.path("ssh")).unwrap();
    let out = c.agent(i, "fetch").args(["--ssh-host-keys", "generate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "ferry agent --mode fetch: {}", text(&out));
    assert!(text(&out).contains("SSH host keys certified"), "{}", text(&out));
    let boot = root.boot(&n.ns, "ds=nocloud;s=file:///run/ferry/seed/", Some(&n.path("seed")));
    let result = root.result_json();
    assert_eq!(result["v1"]["errors"], serde_json::json!([]), "cloud-init ran clean: {result}\n{}", boot.console);
}

/// sshd in the node's root, in its namespaces, until `$4` (the stop file) appears.
const SSHD: &str = r#"
mkdir -p "$ROOT/run/sshd"
chroot "$ROOT" /usr/sbin/sshd -D -e >"$4.log" 2>&1 &
while [ ! -e "$4" ]; do sleep 0.1; done
kill $!
"#;

/// Runs `f` while node `i`'s real sshd (Debian 12's, from its root) serves on port 22.
fn with_sshd<T>(c: &Cluster, i: usize, root: &NodeRoot, f: impl FnOnce() -> T) -> T {
    let n = &c.nodes[i];
    let stop = n.path(&format!("sshd-stop-{}", rand_suffix()));
    thread::scope(|s| {
        let session = s.spawn(|| root.session(&n.ns, "", SSHD, &[stop.as_path()]));
        let probe = format!("exec 3<>/dev/tcp/{}/22", n.ip);
        let log = || std::fs::read_to_string(stop.with_extension("log")).unwrap_or_default();
        let listening = (0..100).any(|_| {
            let up = c.server.netns.cmd("bash").args(["-c", &probe]).output().is_ok_and(|o| o.status.success());
            if !up {
                thread::sleep(std::time::Duration::from_millis(100));
            }
            up
        });
        let value = listening.then(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        std::fs::write(&stop, "").unwrap();
        let _ = session.join();
        match value {
            None => panic!("{}'s sshd does not listen: {}", n.name, log()),
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                eprintln!("--- {}'s sshd:\n{}", n.name, log());
                std::panic::resume_unwind(e)
            }
        }
    })
}

fn rand_suffix() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

/// A real `ssh` from the server's namespace to node `i` as hpcadmin, trusting only
/// `known_hosts`, naming the host as `alias` (a principal the certificate must carry).
fn ssh(c: &Cluster, i: usize, dir: &Path, known_hosts: &str, alias: &str, extra: &[&str]) -> Output {
    ssh_with_key(c, i, dir, known_hosts, alias, extra, &dir.join("id"))
}

/// [`ssh`] with this identity (and its `-cert.pub`, if any) only.
fn ssh_with_key(
    c: &Cluster,
    i: usize,
    dir: &Path,
    known_hosts: &str,
    alias: &str,
    extra: &[&str],
    id: &Path,
) -> Output {
    let kh = dir.join(format!("known_hosts.{}", rand_suffix()));
    std::fs::write(&kh, known_hosts).unwrap();
    c.server
        .netns
        .cmd("ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", kh.display()))
        .args(["-o", "GlobalKnownHostsFile=/dev/null", "-o", &format!("HostKeyAlias={alias}")])
        .args(extra)
        .args(["-o", "IdentitiesOnly=yes", "-i"])
        .arg(id)
        .arg(format!("hpcadmin@{}", c.nodes[i].ip))
        .arg("echo logged-in-as-$(id -un)-on-$(cat /etc/hostname)")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn assert_logs_in(out: &Output, node: &str) {
    let t = text(out);
    assert!(out.status.success() && t.contains(&format!("logged-in-as-hpcadmin-on-{node}")), "ssh: {t}");
    assert!(!t.contains("Warning: Permanently added"), "nothing learned on first use: {t}");
}

fn host_key(root: &NodeRoot) -> String {
    root.read("/etc/ssh/ssh_host_ed25519_key.pub").split_whitespace().nth(1).unwrap().to_owned()
}

/// `ssh-keygen -L` of a certificate file: the lines, trimmed.
fn keygen_l(path: &Path) -> String {
    sh(&["ssh-keygen", "-L", "-f", path.to_str().unwrap()])
}

#[test]
fn nodes_get_host_certificates_only_for_their_own_names_and_clients_trust_only_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    sh(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "hpcadmin@login",
        "-f",
        dir.path().join("id").to_str().unwrap(),
    ]);
    let admin_key = std::fs::read_to_string(dir.path().join("id.pub")).unwrap().trim().to_owned();
    // Roots: n1's first boot, n1's reboot (a fresh copy of the image), n2.
    let (c, roots) = with_roots(3, || Cluster::new(2));
    let user_data = c.nodes[0].path("user-data");
    std::fs::write(&user_data, USER_DATA).unwrap();
    #[rustfmt::skip]
    c.server.ok(&["profile", "add", "compute", "--domain", "hpc.example", "--user-data", user_data.to_str().unwrap(),
        "--tag", &format!("admin_key={admin_key}")]);
    c.add_nodes(&["-P", "compute", "--identity", "network"]);
    // A user CA: nodes' sshd trusts it, admins log in with short-lived user certificates.
    let user_keys = user_certificates(&c, dir.path());

    // What a login node's admin puts in /etc/ssh/ssh_known_hosts: the CA line only.
    let known_hosts = c.server.ok(&["ssh", "known-hosts"]);
    let cas = c.server.json(&["ssh", "ca", "list", "--json"]);
    let host_ca = cas.as_array().unwrap().iter().find(|c| c["purpose"] == "host").unwrap();
    let ca_key = host_ca["public_key"].as_str().unwrap().to_owned();
    assert_eq!(
        known_hosts.trim(),
        format!("@cert-authority *.hpc.example,198.18.0.11,198.18.0.12,n1,n2 {ca_key}"),
        "one CA line for the inventory's names, nothing else"
    );
    let ca_file = dir.path().join("ca.pub");
    std::fs::write(&ca_file, format!("{ca_key}\n")).unwrap();
    let ca_fingerprint = sh(&["ssh-keygen", "-l", "-f", ca_file.to_str().unwrap()]);
    let ca_fingerprint = ca_fingerprint.split_whitespace().nth(1).unwrap().to_owned();

    // n1, cloud-init mode: certified by the vendor script, real sshd, strict client.
    boot_cloud_init_mode(&c, 0, &roots[0]);
    let cert = roots[0].path("/etc/ssh/ssh_host_ed25519_key-cert.pub");
    let shown = keygen_l(&cert);
    println!("$ ssh-keygen -L -f /etc/ssh/ssh_host_ed25519_key-cert.pub   (n1)\n{shown}");
    assert!(shown.contains("Type: ssh-ed25519-cert-v01@openssh.com host certificate"), "{shown}");
    assert!(shown.contains(&format!("Signing CA: ED25519 {ca_fingerprint}")), "{shown}");
    let principals: Vec<&str> = shown
        .lines()
        .skip_while(|l| !l.contains("Principals:"))
        .skip(1)
        .take_while(|l| !l.contains("Critical Options:"))
        .map(str::trim)
        .collect();
    assert_eq!(principals, ["n1", "n1.hpc.example", "198.18.0.11"], "{shown}");
    assert!(shown.contains("Key ID: \"ferry host n1 boot "), "{shown}");
    let valid = shown.lines().find(|l| l.contains("Valid: from ")).unwrap().trim().to_owned();
    let (from, to) = valid.trim_start_matches("Valid: from ").split_once(" to ").unwrap();
    let secs = |t: &str| sh(&["date", "-u", "-d", t, "+%s"]).trim().parse::<i64>().unwrap();
    let days = (secs(to) - secs(from)) as f64 / 86_400.0;
    assert!((7.0..7.01).contains(&days), "valid for 7 days (and 5 minutes back): {valid}");
    assert!(roots[0].read("/etc/ssh/sshd_config.d/ferry-host-certificates.conf").contains("HostCertificate"));
    assert_eq!(roots[0].read("/etc/ssh/ferry_known_hosts"), format!("@cert-authority * {ca_key}\n"));
    let first_key = host_key(&roots[0]);
    with_sshd(&c, 0, &roots[0], || {
        assert_logs_in(&ssh(&c, 0, dir.path(), &known_hosts, "n1", &[]), "n1");
        assert_logs_in(&ssh(&c, 0, dir.path(), &known_hosts, "n1.hpc.example", &[]), "n1");
        assert_logs_in(&ssh(&c, 0, dir.path(), &known_hosts, "198.18.0.11", &[]), "n1");
        // The certificate vouches for n1's names only.
        let as_n2 = ssh(&c, 0, dir.path(), &known_hosts, "n2", &[]);
        assert!(!as_n2.status.success() && text(&as_n2).contains("Host key verification failed"), "{}", text(&as_n2));
        user_logins(&c, 0, dir.path(), &known_hosts, &user_keys);
    });
    let sshd_drop_in = roots[0].read("/etc/ssh/sshd_config.d/ferry-host-certificates.conf");
    assert!(sshd_drop_in.contains("TrustedUserCAKeys /etc/ssh/ferry_user_ca_keys"), "{sshd_drop_in}");

    // n1 reboots: a fresh root from the image, new host keys; the same known_hosts works.
    boot_cloud_init_mode(&c, 0, &roots[1]);
    assert_ne!(host_key(&roots[1]), first_key, "the reboot made new host keys");
    with_sshd(&c, 0, &roots[1], || assert_logs_in(&ssh(&c, 0, dir.path(), &known_hosts, "n1", &[]), "n1"));

    // n2, fetch mode: the agent made and certified the key; cloud-init kept it.
    boot_fetch_mode(&c, 1, &roots[2]);
    assert!(keygen_l(&roots[2].path("/etc/ssh/ssh_host_ed25519_key-cert.pub")).contains("n2.hpc.example"));
    let n2_key_line = roots[2].read("/etc/ssh/ssh_host_ed25519_key.pub");
    with_sshd(&c, 1, &roots[2], || {
        assert_logs_in(&ssh(&c, 1, dir.path(), &known_hosts, "n2", &[]), "n2");
        user_logins(&c, 1, dir.path(), &known_hosts, &user_keys);
    });
    // Node to node: n2's own ssh trusts ferry's CA through the files its boot installed
    // (ssh_config.d drop-in, ferry_known_hosts with `@cert-authority *`, an empty
    // ferry_revoked_keys) and nothing else.
    std::fs::copy(dir.path().join("id"), roots[2].path("/root/id")).unwrap();
    let node_to_node = with_sshd(&c, 0, &roots[1], || {
        let body = "chroot \"$ROOT\" ssh -o BatchMode=yes -o ConnectTimeout=10 -i /root/id hpcadmin@198.18.0.11 \
                    'echo logged-in-as-$(id -un)-on-$(cat /etc/hostname)' 2>&1";
        roots[2].session(&c.nodes[1].ns, "", body, &[]).1
    });
    assert_logs_in(&node_to_node, "n1");
    let certs = c.server.json(&["ssh", "certs", "--json"]);
    assert!(certs.as_array().unwrap().len() >= 3, "{certs}");
    let audit = c.server.ok(&["audit", "--node", "n2", "--limit", "100"]);
    assert!(audit.contains("ssh.certificate-issued") && audit.contains("principals=n2,n2.hpc.example,198.18.0.12"));

    refusals(&c, dir.path(), &n2_key_line);

    // Revocation: ferry ssh revoke n1; the client refuses n1 with the KRL, and with the
    // @revoked line of ferry ssh known-hosts.
    // Two boots with three key types each, and the certificate of the forged request.
    let issued = c.server.json(&["ssh", "certs", "--node", "n1", "--json"]);
    assert_eq!(issued.as_array().unwrap().len(), 7, "{issued}");
    let revoked = c.server.ok(&["ssh", "revoke", "n1"]);
    assert!(revoked.contains("revoked 7 host certificate(s) of n1"), "{revoked}");
    let krl = dir.path().join("revoked_keys");
    c.server.ok(&["ssh", "krl", "--output", krl.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&krl).unwrap().contains(&host_key(&roots[1])));
    let with_revocations = c.server.ok(&["ssh", "known-hosts"]);
    assert!(
        with_revocations.contains(&format!("@revoked * ssh-ed25519 {}", host_key(&roots[1]))),
        "{with_revocations}"
    );
    with_sshd(&c, 0, &roots[1], || {
        let krl_opt = format!("RevokedHostKeys={}", krl.display());
        let refused = ssh(&c, 0, dir.path(), &known_hosts, "n1", &["-o", &krl_opt]);
        let t = text(&refused);
        assert!(!refused.status.success() && t.contains("revoked"), "the KRL refuses n1: {t}");
        let refused = ssh(&c, 0, dir.path(), &with_revocations, "n1", &[]);
        let t = text(&refused);
        assert!(!refused.status.success() && t.contains("revoked"), "@revoked refuses n1: {t}");
        // A RevokedHostKeys file that is missing refuses every host (keep it in place).
        let missing = format!("RevokedHostKeys={}", dir.path().join("no-such-file").display());
        let refused = ssh(&c, 0, dir.path(), &known_hosts, "n1", &["-o", &missing]);
        assert!(!refused.status.success(), "a missing revocation list refuses: {}", text(&refused));
    });
    // n2 is untouched by n1's revocation.
    with_sshd(&c, 1, &roots[2], || {
        let krl_opt = format!("RevokedHostKeys={}", krl.display());
        assert_logs_in(&ssh(&c, 1, dir.path(), &with_revocations, "n2", &["-o", &krl_opt]), "n2");
    });
    // A revoked node gets no new certificate until reinstated.
    let held = c.hold(0);
    let key = format!("{}\n", host_key_line_of_fresh_key(dir.path()));
    let (code, body) = post_certificate(&c, 0, "n1", &key);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("revoked"), "{body}");
    drop(held);

    // Rotation: a new CA signs from now on; the old one stays trusted for the overlap.
    c.server.ok(&["ssh", "ca", "rotate", "--overlap", "1h"]);
    let cas = c.server.json(&["ssh", "ca", "list", "--json"]);
    let host_cas: Vec<_> = cas.as_array().unwrap().iter().filter(|c| c["purpose"] == "host").collect();
    let states: Vec<_> = host_cas.iter().map(|c| (c["id"].as_i64(), c["state"].as_str())).collect();
    // CA 2 is the user CA, untouched by the host CA's rotation.
    assert_eq!(states, [(Some(3), Some("signing")), (Some(1), Some("trusted"))], "{cas}");
    let new_ca = host_cas[0]["public_key"].as_str().unwrap().to_owned();
    let rotated = c.server.ok(&["ssh", "known-hosts", "--hosts", "*.hpc.example"]);
    let ca_lines: Vec<&str> = rotated.lines().filter(|l| l.starts_with("@cert-authority ")).collect();
    assert_eq!(
        ca_lines,
        [format!("@cert-authority *.hpc.example {new_ca}"), format!("@cert-authority *.hpc.example {ca_key}")]
    );
    let holder = c.hold(1);
    let (code, body) = post_certificate(&c, 1, "n2", &host_key_line_of_fresh_key(dir.path()));
    drop(holder);
    assert_eq!(code, 200, "{body}");
    let cert = dir.path().join("after-rotation-cert.pub");
    std::fs::write(&cert, &body).unwrap();
    std::fs::write(&ca_file, format!("{new_ca}\n")).unwrap();
    let new_fingerprint = sh(&["ssh-keygen", "-l", "-f", ca_file.to_str().unwrap()]);
    let new_fingerprint = new_fingerprint.split_whitespace().nth(1).unwrap();
    assert!(keygen_l(&cert).contains(&format!("Signing CA: ED25519 {new_fingerprint}")), "{}", keygen_l(&cert));
}

/// A fresh ed25519 public key line.
fn host_key_line_of_fresh_key(dir: &Path) -> String {
    let f = dir.join(format!("k{}", rand_suffix()));
    sh(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f.to_str().unwrap()]);
    std::fs::read_to_string(f.with_extension("pub")).unwrap().trim().to_owned()
}

/// curl in node `i`'s namespace: POST `keys` to the certificate endpoint as `node`.
fn post_certificate(c: &Cluster, i: usize, node: &str, keys: &str) -> (u16, String) {
    let url = format!("{DATASOURCE}/ssh/host-certificates?node={node}");
    c.nodes[i].curl(&["-X", "POST", "-H", "Content-Type: text/plain", "--data-binary", keys, &url])
}

/// Another node's names, another node's key, no tunnel: refused and audited.
fn refusals(c: &Cluster, dir: &Path, n2_key_line: &str) {
    let holder = c.hold(0);
    // n1's tunnel asking for n2's names.
    let (code, body) = post_certificate(c, 0, "n2", &host_key_line_of_fresh_key(dir));
    assert_eq!(code, 403, "{body}");
    // A forged header changes nothing: the certificate is n1's, for n1's names.
    let forged = c.nodes[0].curl(&[
        "-X",
        "POST",
        "-H",
        "X-Forwarded-For: 100.64.0.3",
        "--data-binary",
        &host_key_line_of_fresh_key(dir),
        &format!("{DATASOURCE}/ssh/host-certificates"),
    ]);
    assert_eq!(forged.0, 200, "{}", forged.1);
    let cert = dir.join("forged-cert.pub");
    std::fs::write(&cert, &forged.1).unwrap();
    let shown = keygen_l(&cert);
    assert!(shown.contains("n1.hpc.example") && !shown.contains("n2"), "{shown}");
    // n2's host key, presented by n1 (a key shared between nodes).
    let (code, body) = post_certificate(c, 0, "n1", n2_key_line);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("certified for node n2"), "{body}");
    drop(holder);
    // Refusals are audited (folded: a node repeating one adds a count, not rows).
    eventually(10, "both refusals in n1's audit", || {
        let audit = c.server.ok(&["audit", "--node", "n1", "--limit", "200"]);
        audit.contains("ssh.certificate-refused")
            && audit.contains("asked for the names of node")
            && audit.contains("certified for node n2")
    });

    // No tunnel: the node routes the tunnel network over the provisioning network.
    c.nodes[1].ns.sh(&["ip", "route", "replace", "100.64.0.0/16", "via", SERVER_IP]);
    let (code, body) = post_certificate(c, 1, "n2", &host_key_line_of_fresh_key(dir));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("not an active ferry tunnel"), "{body}");
    c.nodes[1].ns.sh(&["ip", "route", "del", "100.64.0.0/16"]);
}

/// Admins' keys, none in any authorized_keys: one with a user certificate for
/// `hpcadmin`, one certified for another login name, one with no certificate.
struct UserKeys {
    certified: std::path::PathBuf,
    other_login: std::path::PathBuf,
    uncertified: std::path::PathBuf,
}

fn user_certificates(c: &Cluster, dir: &Path) -> UserKeys {
    let key = |name: &str| {
        let f = dir.join(name);
        sh(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", f.to_str().unwrap()]);
        f
    };
    let keys = UserKeys { certified: key("alice"), other_login: key("bob"), uncertified: key("carol") };
    let pub_of = |k: &Path| k.with_extension("pub").to_str().unwrap().to_owned();
    let no_ca = c.server.fails(&["ssh", "sign-user", &pub_of(&keys.certified), "--principal", "hpcadmin"]);
    assert!(no_ca.contains("no SSH user CA: make one with `ferry ssh ca rotate --purpose user`"), "{no_ca}");
    c.server.ok(&["ssh", "ca", "rotate", "--purpose", "user"]);
    let signed = c.server.ok(&["ssh", "sign-user", &pub_of(&keys.certified), "--principal", "hpcadmin"]);
    assert!(signed.contains("alice-cert.pub: logs in as hpcadmin until "), "{signed}");
    c.server.ok(&["ssh", "sign-user", &pub_of(&keys.other_login), "--principal", "root", "--validity", "10m"]);
    let shown = keygen_l(&dir.join("alice-cert.pub"));
    assert!(shown.contains("user certificate") && shown.contains("Key ID: \"ferry user "), "{shown}");
    let principals: Vec<&str> =
        shown.lines().skip_while(|l| !l.contains("Principals:")).skip(1).take(1).map(str::trim).collect();
    assert_eq!(principals, ["hpcadmin"], "{shown}");
    // Bad requests change nothing: too long, a login name that is no login name.
    let uncertified = pub_of(&keys.uncertified);
    let too_long = c.server.fails(&["ssh", "sign-user", &uncertified, "--principal", "hpcadmin", "--validity", "30d"]);
    assert!(too_long.contains("ask for a shorter one"), "{too_long}");
    let not_a_login = c.server.fails(&["ssh", "sign-user", &uncertified, "--principal", "Root Admin"]);
    assert!(not_a_login.contains("login name"), "{not_a_login}");
    assert!(!dir.join("carol-cert.pub").exists());
    let audit = c.server.ok(&["audit", "--limit", "100"]);
    assert_eq!(audit.matches("ssh.user-certificate-issued").count(), 2, "{audit}");
    keys
}

/// The certified key logs in to node `i` as hpcadmin; the others are refused.
fn user_logins(c: &Cluster, i: usize, dir: &Path, known_hosts: &str, keys: &UserKeys) {
    let name = c.nodes[i].name.clone();
    assert_logs_in(&ssh_with_key(c, i, dir, known_hosts, &name, &[], &keys.certified), &name);
    for key in [&keys.other_login, &keys.uncertified] {
        let refused = ssh_with_key(c, i, dir, known_hosts, &name, &[], key);
        assert!(!refused.status.success() && text(&refused).contains("Permission denied"), "{}", text(&refused));
    }
}
