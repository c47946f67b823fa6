//! What a newcomer tripped over, tried the way they tried it: the real binary, a real
//! server, real pipes.

mod common;

use common::cluster::{Cluster, DATASOURCE, SERVER_IP};
use common::{TestServer, FERRY};
use std::process::{Command, Stdio};

/// Runs `cmd` with its standard output on a pipe whose reader is already gone (what
/// `| head -1` leaves behind once head has its line): (exit code, stderr).
fn run_into_closed_pipe(cmd: &mut Command) -> (Option<i32>, String) {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let out = cmd.stdout(Stdio::from(writer)).stderr(Stdio::piped()).output().expect("run ferry");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `ferry completions bash | head`, `ferry audit | head -1`: the command ends quietly
/// (status 0, nothing on stderr) instead of panicking with a backtrace (status 101).
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    let (code, err) = run_into_closed_pipe(Command::new(FERRY).args(["completions", "bash"]));
    assert_eq!((code, err.as_str()), (Some(0), ""), "completions into a closed pipe");

    let s = TestServer::start();
    s.ok(&["node", "add", "n[1-3]", "--identity", "network"]);
    let (code, err) = run_into_closed_pipe(s.cmd().args(["audit"]));
    assert_eq!((code, err.as_str()), (Some(0), ""), "audit into a closed pipe");
    let (code, err) = run_into_closed_pipe(s.cmd().args(["node", "list", "--json"]));
    assert_eq!((code, err.as_str()), (Some(0), ""), "node list into a closed pipe");

    // And through the shell, as typed: head's one line arrives, nothing else is said.
    let typed = Command::new("sh")
        .arg("-c")
        .arg(format!("'{FERRY}' audit | head -1; '{FERRY}' completions bash | head -1"))
        .env("FERRY_ADMIN_SOCKET", &s.socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&typed.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(typed.stderr.is_empty(), "{}", String::from_utf8_lossy(&typed.stderr));
}

/// A wrong asset tag sent from a wrong address: the audit records both failures (and
/// the factor not asked for), not only the first one checked.
#[test]
fn a_refused_enrollment_records_every_factors_verdict() {
    let c = Cluster::new(2);
    c.add_nodes(&[]);
    let tag = c.nodes[0].path("tag");
    std::fs::write(&tag, "RIGHT-TAG-5e1f-77c0-a9d3").unwrap();
    c.server.ok(&["node", "set", "n1", "--asset-tag-file", tag.to_str().unwrap()]);
    // n2's namespace claims n1's MAC and name, with a wrong tag.
    let wrong = c.nodes[1].path("wrong-tag");
    std::fs::write(&wrong, "WRONG-TAG-5e1f-77c0-a9d3").unwrap();
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let out = n2
        .ns
        .cmd(FERRY)
        .args(["agent", "--server", &format!("http://{SERVER_IP}:8470"), "--pubkey", &c.server.public_key()])
        .args(["--node", "n1", "--mac", &n1.mac, "--mode", "fetch", "--interface", &n2.interface])
        .args(["--timeout", "20s", "--cmdline", "/dev/null", "--seed-dir"])
        .arg(n2.path("seed"))
        .arg("--asset-tag-file")
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "refused: {}", String::from_utf8_lossy(&out.stderr));
    let audit = c.server.ok(&["audit", "--node", "n1", "--limit", "20"]);
    let refused = audit.lines().find(|l| l.contains("enroll.refused")).unwrap_or_else(|| panic!("{audit}"));
    for verdict in [
        format!("network (required): FAILED, came from {}", n2.ip),
        "asset-tag (required): FAILED, the proof did not verify".to_string(),
        "tpm (not required): no proof sent".to_string(),
    ] {
        assert!(refused.contains(&verdict), "{verdict:?} not in {refused}");
    }
}

/// `node show --json` has the FQDN the node reported at phone-home, and `ferry
/// known-hosts` names each key by node name, FQDN and address, so `ssh n1.cluster`
/// matches; a node reporting another host's name gets no line for it.
#[test]
fn known_hosts_name_nodes_by_name_fqdn_and_address() {
    let c = Cluster::new(2);
    c.add_nodes(&["--identity", "network"]);
    for (i, fqdn) in [(0, "n1.cluster"), (1, "login1.cluster")] {
        let holder = c.hold(i);
        let form = format!(
            "instance_id=n{n}&hostname=n{n}&fqdn={fqdn}&pub_key_ed25519=ssh-ed25519+AAAAC3NzaC1lZDI1NTE5AAAAIKey{n}+root%40n{n}",
            n = i + 1
        );
        let (code, body) = c.nodes[i].curl(&["-d", &form, &format!("{DATASOURCE}/phone-home")]);
        assert_eq!(code, 200, "{body}");
        holder.stop();
    }
    let shown = c.server.json(&["node", "show", "n1", "--json"]);
    assert_eq!(shown["boot"]["fqdn"], "n1.cluster", "{shown}");
    let known = c.server.ok(&["known-hosts"]);
    assert_eq!(
        known.lines().collect::<Vec<_>>(),
        [
            "n1,n1.cluster,198.18.0.11 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey1 root@n1",
            "n2,198.18.0.12 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey2 root@n2",
        ],
        "{known}"
    );
    // ssh itself finds the key under each name.
    let file = c.nodes[0].path("known_hosts");
    std::fs::write(&file, &known).unwrap();
    for host in ["n1", "n1.cluster", "198.18.0.11"] {
        let found = Command::new("ssh-keygen").args(["-F", host, "-f"]).arg(&file).output().expect("ssh-keygen");
        assert!(String::from_utf8_lossy(&found.stdout).contains("Key1"), "ssh-keygen -F {host}");
    }
    let found = Command::new("ssh-keygen").args(["-F", "login1.cluster", "-f"]).arg(&file).output().unwrap();
    assert!(found.stdout.is_empty(), "n2's key is not vouched for login1.cluster");
}

/// A server id gone for good (here: the host was renamed) no longer stays LOST in
/// `ferry server list`: `ferry server remove` forgets it, and refuses a live one.
#[test]
fn a_lost_server_is_removed_and_a_live_one_is_not() {
    let cluster = "[cluster]\nheartbeat_secs = 1\nlost_after_secs = 3\n";
    let mut s = TestServer::start_with(&format!("{cluster}server_id = \"old-name\"\n"), "127.0.0.1:8470");
    s.stop();
    let config = std::fs::read_to_string(&s.config).unwrap().replace("old-name", "new-name");
    std::fs::write(&s.config, config).unwrap();
    s.launch();
    let err = s.fails(&["server", "remove", "new-name"]);
    assert!(err.contains("server new-name is alive") && err.contains("stop it first"), "{err}");
    let alive = |s: &TestServer| -> Vec<(String, bool)> {
        let list = s.json(&["server", "list", "--json"]);
        list.as_array().unwrap().iter().map(|v| (v["id"].as_str().unwrap().to_owned(), v["alive"] == true)).collect()
    };
    common::eventually(10, "old-name shown lost", || {
        alive(&s) == vec![("new-name".to_string(), true), ("old-name".to_string(), false)]
    });
    assert_eq!(s.ok(&["server", "remove", "old-name"]).trim(), "removed server old-name");
    assert_eq!(alive(&s), vec![("new-name".to_string(), true)]);
    let err = s.fails(&["server", "remove", "old-name"]);
    assert!(err.contains("old-name") && err.contains("not found"), "{err}");
    assert!(s.ok(&["audit", "--limit", "20"]).contains("server.remove"));
}
