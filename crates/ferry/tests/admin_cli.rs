//! The admin CLI against a real server over its unix socket.

mod common;

use common::{require_root, TestServer, FERRY};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

#[test]
fn add_128_nodes_list_and_show_merged() {
    let s = TestServer::start();
    s.ok(&[
        "profile",
        "add",
        "compute",
        "--image",
        "rocky9",
        "--kernel-args",
        "quiet console=tty0",
        "--netdev",
        "eth0",
        "--netmask",
        "255.255.0.0",
        "--mtu",
        "9000",
    ]);
    s.ok(&["profile", "add", "serial", "-P", "compute", "--kernel-args", "~console=tty0 console=ttyS0,115200"]);
    let out = s.ok(&["node", "add", "n[001-128]", "--profile", "serial", "--ip", "10.0.1.250"]);
    assert_eq!(out.trim(), "added 128 nodes");

    let nodes = s.json(&["node", "list", "--json"]);
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 128);
    assert_eq!(nodes[0]["name"], "n001");
    assert_eq!(nodes[0]["settings"]["interfaces"]["eth0"]["ipv4"], "10.0.1.250");
    assert_eq!(nodes[127]["settings"]["interfaces"]["eth0"]["ipv4"], "10.0.2.121", "IPs count up across octets");

    let table = s.ok(&["node", "list", "n[001-002]"]);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.lines().next().unwrap().contains("NAME"), "{table}");

    s.ok(&["node", "set", "n001", "--kernel-args", "debug", "--image", "rocky9-debug"]);
    let merged = s.json(&["node", "show", "n001", "--merged", "--json"]);
    assert_eq!(merged["settings"]["kernel_args"], serde_json::json!(["quiet", "console=ttyS0,115200", "debug"]));
    let source = |field: &str, value: &str| {
        merged["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == field && f["value"] == value)
            .map(|f| f["source"].clone())
    };
    assert_eq!(source("kernel_args", "quiet").unwrap()["name"], "compute");
    assert_eq!(source("kernel_args", "console=ttyS0,115200").unwrap()["name"], "serial");
    assert_eq!(source("kernel_args", "debug").unwrap()["kind"], "node");
    assert_eq!(source("image", "rocky9-debug").unwrap()["kind"], "node");
    let text = s.ok(&["node", "show", "n001", "--merged"]);
    assert!(
        text.lines().any(|l| l.contains("interfaces.eth0.mtu") && l.contains("9000") && l.contains("profile compute")),
        "{text}"
    );
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let s = TestServer::start();
    s.ok(&["node", "add", "n1", "--mac", "52:54:00:00:00:01", "--ip", "10.0.0.1"]);
    let e = s.fails(&["node", "add", "n2", "--mac", "52-54-00-00-00-01"]);
    assert!(e.contains("already used by node n1"), "{e}");
    let e = s.fails(&["node", "add", "n[2-3]", "--ip", "10.0.0.0"]);
    assert!(e.contains("10.0.0.1") && e.contains("already used by node n1"), "{e}");
    assert_eq!(s.json(&["node", "list", "--json"]).as_array().unwrap().len(), 1, "the failed batch added nothing");
    for (args, needle) in [
        (vec!["node", "add", "n[3-1]"], "backwards"),
        (vec!["node", "add", "n[1-"], "hostlist"),
        (vec!["node", "add", "N1"], "node name"),
        (vec!["node", "add", "n9", "--mac", "52:54:00:00:00"], "MAC address"),
        (vec!["node", "add", "n9", "--ip", "10.0.0.300"], "not an IP address"),
        (vec!["node", "add", "n9", "--netmask", "255.0.255.0"], "contiguous"),
        (vec!["node", "add", "n9", "--root", "nfs"], "initramfs, ramfs or tmpfs"),
        (vec!["node", "add", "n9", "--identity", "password"], "network, asset-tag or tpm"),
        (vec!["node", "add", "n9", "--profile", "nosuch"], "unknown profile"),
        (vec!["node", "add", "n[1-2]", "--mac", "52:54:00:00:00:09"], "one node"),
        (vec!["node", "set", "ghost", "--comment", "x"], "not found"),
        (vec!["node", "unset", "n1", "colour"], "unknown field"),
        (vec!["node", "set", "n1"], "nothing to change"),
        (vec!["node", "add", "n9", "--kernel-args", "a;reboot"], "not allowed"),
    ] {
        let e = s.fails(&args);
        assert!(e.starts_with("error: ") && e.contains(needle), "{args:?}: {e}");
    }
    assert_eq!(s.json(&["node", "list", "--json"]).as_array().unwrap().len(), 1);
    let out = s.run(&["node", "list", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn twenty_parallel_writers_lose_no_update() {
    let s = TestServer::start();
    s.ok(&["node", "add", "n1"]);
    let children: Vec<_> = (0..20)
        .map(|i| {
            s.cmd()
                .args(["node", "set", "n1", "--tag", &format!("writer{i}=done")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let adders: Vec<_> = (0..20)
        .map(|i| {
            s.cmd()
                .args(["node", "add", &format!("p{i}"), "--ip", &format!("10.9.0.{}", i + 1)])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children.into_iter().chain(adders) {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let n1 = s.json(&["node", "show", "n1", "--json"]);
    let tags = n1["settings"]["tags"].as_object().unwrap();
    assert_eq!(tags.len(), 20, "lost updates: {tags:?}");
    assert_eq!(n1["revision"], 21);
    assert_eq!(s.json(&["node", "list", "--json"]).as_array().unwrap().len(), 21);
}

#[test]
fn admin_socket_refuses_non_root_peers() {
    require_root();
    let s = TestServer::start();
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin socket mode");
    let as_nobody = |args: &[&str]| {
        let mut c = s.cmd();
        c.args(args).uid(65534).gid(65534);
        c.output().unwrap()
    };
    // Let `nobody` reach the binary's and the socket's directories.
    for dir in [s.dir.path(), s.socket.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = as_nobody(&["node", "add", "evil"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Even if someone loosens the socket's mode, the server checks the peer's uid.
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&["node", "add", "evil"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied: the admin API is for root"), "{err}");
    let out = as_nobody(&["node", "list"]);
    assert_eq!(out.status.code(), Some(1), "reads are refused too");
    assert!(s.json(&["node", "list", "--json"]).as_array().unwrap().is_empty(), "nothing was added");
    assert!(s.log_text().contains("refused a caller"), "the refusal is logged");
}

#[test]
fn admin_users_from_config_may_connect() {
    require_root();
    let s = TestServer::start_with("admin_users = [\"65534\"]\nlog_format = \"json\"", "127.0.0.1:8470");
    for dir in [s.dir.path(), s.socket.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = s.cmd().args(["node", "add", "n1"]).uid(65534).gid(65534).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let audit = s.ok(&["audit", "--node", "n1"]);
    assert!(audit.contains("uid:65534"), "the audit log names the actor: {audit}");
    let first_log_line = s.log_text().lines().next().unwrap_or_default().to_owned();
    assert!(serde_json::from_str::<serde_json::Value>(&first_log_line).is_ok(), "json logs: {first_log_line}");
}

#[test]
fn asset_tag_never_appears_in_output_or_logs() {
    const TAG: &str = "ASSET-4b1d-SECRET";
    let s = TestServer::start();
    s.ok(&["profile", "add", "compute"]);
    let mut child = s
        .cmd()
        .args(["node", "add", "n1", "-P", "compute", "--asset-tag-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{TAG}\n").as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let file = s.dir.path().join("tag2");
    std::fs::write(&file, "OTHER-TAG-77aa").unwrap();
    s.ok(&["node", "add", "n2", "--asset-tag-file", file.to_str().unwrap()]);
    let mut seen = String::new();
    for args in [
        vec!["node", "list"],
        vec!["node", "list", "--json"],
        vec!["node", "show", "n1"],
        vec!["node", "show", "n1", "--json"],
        vec!["node", "show", "n1", "--merged"],
        vec!["node", "show", "n1", "--merged", "--json"],
        vec!["audit", "--json"],
        vec!["profile", "list", "--json"],
    ] {
        seen += &s.ok(&args);
    }
    assert!(seen.contains("\"asset_tag\": \"set\""), "state is shown: {seen}");
    // An invalid tag is refused without echoing it.
    let mut child = s
        .cmd()
        .args(["node", "set", "n1", "--asset-tag-stdin"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"BAD\x07TAG-SECRET\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    seen += &String::from_utf8_lossy(&out.stderr);
    let mut server = s;
    server.stop();
    seen += &server.log_text();
    for secret in [TAG, "OTHER-TAG-77aa", "TAG-SECRET"] {
        assert!(!seen.contains(secret), "{secret} leaked");
    }
    for f in std::fs::read_dir(server.dir.path().join("data")).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(!bytes.windows(TAG.len()).any(|w| w == TAG.as_bytes()), "clear asset tag on disk");
    }
}

/// Finding 6 of the outside review: a short or low-entropy asset tag is set (it may be
/// what the firmware holds) but the admin is warned, without the tag being echoed.
#[test]
fn short_or_guessable_asset_tags_are_set_with_a_warning() {
    let s = TestServer::start();
    let set = |node: &str, tag: &str| {
        let file = s.dir.path().join(format!("{node}.tag"));
        std::fs::write(&file, tag).unwrap();
        let out = s.run(&["node", "add", node, "--identity", "asset-tag", "--asset-tag-file", file.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (node, weak) in [("n1", "CZ1234567X"), ("n2", "1234567890123456"), ("n3", "aaaaaaaaaaaaaaaaaaaaaaaa")] {
        let err = set(node, weak);
        assert!(err.contains("warning: this asset tag is short or easy to guess"), "{weak}: {err}");
        assert!(!err.contains(weak), "the tag is not echoed: {err}");
    }
    let err = set("n4", "3f9c2a7b1e6d4c8f0a5b9e2d7c1f4a6b");
    assert!(!err.contains("warning"), "a random 32-character tag: {err}");
    assert_eq!(s.json(&["node", "show", "n1", "--json"])["asset_tag"], "set", "warned, not refused");
}

#[test]
fn serve_needs_no_config_and_reports_bad_config() {
    let s = TestServer::start();
    assert!(s.dir.path().join("data/ferry.db").exists());
    let key = s.dir.path().join("data/secrets.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let status = s.json(&["node", "list", "--json"]);
    assert!(status.as_array().unwrap().is_empty());
    // A second server on the same socket refuses to steal it.
    let out = std::process::Command::new(FERRY)
        .args(["serve", "--data-dir"])
        .arg(s.dir.path().join("data2"))
        .arg("--socket")
        .arg(&s.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already listening"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = s.dir.path().join("bad.toml");
    std::fs::write(&cfg, "data_dri = \"/tmp/x\"\n").unwrap();
    let out = std::process::Command::new(FERRY).args(["serve", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.toml") && err.contains("data_dri"), "{err}");
}

#[test]
fn the_cli_without_a_server_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(FERRY)
        .env("FERRY_ADMIN_SOCKET", dir.path().join("none.sock"))
        .args(["node", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `ferry serve` running?"));
}

#[test]
fn shell_completions() {
    let out = std::process::Command::new(FERRY).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("_ferry") && script.contains("node"), "bash completion script");
}

#[test]
fn audit_since_and_follow() {
    use std::io::BufRead;
    let s = TestServer::start();
    s.ok(&["node", "add", "a1"]);
    let recent = s.json(&["audit", "--since", "1h", "--json"]);
    assert!(recent.as_array().unwrap().iter().any(|e| e["subject"] == "node/a1"), "{recent}");
    let future = s.json(&["audit", "--since", "2099-01-01T00:00:00Z", "--json"]);
    assert_eq!(future.as_array().unwrap().len(), 0, "{future}");
    assert!(s.fails(&["audit", "--since", "yesterday-ish"]).contains("--since"));

    // --follow prints what was there, then each new entry as a JSON line.
    let mut follow = s.cmd().args(["audit", "--follow", "--json"]).stdout(Stdio::piped()).spawn().unwrap();
    // A watchdog: if --follow stopped printing, the reads below end instead of hanging.
    let pid = nix::unistd::Pid::from_raw(follow.id() as i32);
    let (done, stop) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if stop.recv_timeout(std::time::Duration::from_secs(20)).is_err() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    });
    let mut lines = std::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    // What was there: the new store's sealing key record, its SSH host CA, the server's
    // own start entry, the audit retention it recorded in the new database, then
    // node/a1, in that order.
    let mut next_entry = || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    let recorded = next_entry();
    assert_eq!(recorded["action"], "store.sealing-key", "{recorded}");
    let ca = next_entry();
    assert_eq!((ca["action"].as_str(), ca["subject"].as_str()), (Some("ssh.ca-created"), Some("ssh-ca/1")), "{ca}");
    let started = next_entry();
    assert_eq!(started["action"], "server.start", "{started}");
    let retention = next_entry();
    assert_eq!(
        (retention["action"].as_str(), retention["detail"].as_str()),
        (Some("audit.retention"), Some("days=365 (was 0)"))
    );
    let first = next_entry();
    assert_eq!(first["subject"], "node/a1");
    s.ok(&["node", "add", "a2"]);
    s.ok(&["node", "delete", "a2"]);
    let next: Vec<serde_json::Value> = (0..2).map(|_| next_entry()).collect();
    let _ = done.send(());
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!((next[0]["action"].as_str(), next[0]["subject"].as_str()), (Some("node.add"), Some("node/a2")));
    assert_eq!(next[1]["action"], "node.delete");
    assert!(next[1]["id"].as_i64() > next[0]["id"].as_i64(), "in order, none twice");
    assert!(next[0]["actor"].as_str().unwrap().starts_with("uid:"), "admin changes name their actor");
}

/// A single server whose key file was lost must not make a new key over its database
/// (finding 15): a fresh key opens none of the sealed values, and would seal new ones
/// that the restored key could not open. It refuses, and says to restore the key.
#[test]
fn a_server_whose_sealing_key_was_replaced_refuses_to_start() {
    let mut s = TestServer::start();
    let mut tag = tempfile::NamedTempFile::new().unwrap();
    tag.write_all(b"ASSET-0042").unwrap();
    s.ok(&["node", "add", "n1", "--asset-tag-file", tag.path().to_str().unwrap()]);
    s.stop();
    let key = s.dir.path().join("data/secrets.key");
    let original = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let status = s.try_launch().expect_err("a regenerated sealing key must not start");
    assert_eq!(status.code(), Some(1));
    let log = s.log_text();
    for needed in ["made at this start", "A single server whose key file was lost must restore it from backup"] {
        assert!(log.contains(needed), "{needed:?} missing: {log}");
    }
    // The key comes back from the backup: the server starts and the tag still opens.
    std::fs::write(&key, original).unwrap();
    s.launch();
    assert!(s.ok(&["node", "show", "n1"]).contains("asset_tag"));
}
