//! Template secrets end to end: set write-only through the admin CLI, sealed at rest,
//! rendered only into the documents a node fetches through its own tunnel (node over
//! profile over global), every delivery audited by name — and the values nowhere else:
//! not in the server's log, the audit log, any admin output or the database files.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::cluster::Cluster;
use common::eventually;
use std::io::Write;
use std::process::Stdio;

const USER_DATA: &str = "#cloud-config\nwrite_files:\n- path: /etc/munge/munge.key\n  encoding: b64\n  content: {{ secret_base64('munge.key') }}\n- path: /etc/site-token\n  content: '{{ secret('site.token') }}'\n";

fn set_from_stdin(c: &Cluster, args: &[&str], value: &[u8]) -> std::process::Output {
    let mut child = c
        .server
        .cmd()
        .args(["secret", "set"])
        .args(args)
        .arg("--value-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn secrets_reach_only_their_nodes_through_the_tunnel_and_nowhere_else() {
    common::require_root();
    let c = Cluster::new(2);
    let ud = c.nodes[0].path("user-data.tmpl");
    std::fs::write(&ud, USER_DATA).unwrap();
    c.server.ok(&["profile", "add", "compute", "--user-data", ud.to_str().unwrap()]);
    c.add_nodes(&["-P", "compute", "--identity", "network"]);

    // A binary munge key (from a file) for every node; a token, global and for n2.
    let munge: Vec<u8> = (0..1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let munge_file = c.nodes[0].path("munge.key");
    std::fs::write(&munge_file, &munge).unwrap();
    let out = c.server.ok(&[
        "secret",
        "set",
        "munge.key",
        "--from-file",
        munge_file.to_str().unwrap(),
        "--profile",
        "compute",
    ]);
    assert!(out.contains("1024 bytes"), "{out}");
    let (global, own) = ("TOKEN-GLOBAL-51d0c4", "TOKEN-N2-e7a293");
    assert!(set_from_stdin(&c, &["site.token"], global.as_bytes()).status.success());
    assert!(set_from_stdin(&c, &["site.token", "--node", "n2"], own.as_bytes()).status.success());

    // Bad input: clear errors, nothing changed.
    let bad = set_from_stdin(&c, &["bad name"], b"x");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid secret name"));
    let unknown = set_from_stdin(&c, &["x", "--node", "n9"], b"x");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"), "{unknown:?}");
    let both = c.server.run(&["secret", "set", "x", "--value-stdin", "--node", "n1", "--profile", "compute"]);
    assert_eq!(both.status.code(), Some(2), "usage error");
    let listed = c.server.json(&["secret", "list", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");

    for i in 0..2 {
        let out = c.agent(i, "fetch").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "agent {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let user = |i: usize| std::fs::read_to_string(c.nodes[i].path("seed/user-data")).unwrap();
    for (i, token) in [(0, global), (1, own)] {
        let u = user(i);
        assert!(u.contains(&format!("content: {}", B64.encode(&munge))), "node {i}: {u}");
        assert!(u.contains(&format!("content: '{token}'")), "node {i} gets its token: {u}");
    }
    assert!(!user(0).contains(own), "n1 never sees n2's secret");

    let audit = c.server.ok(&["audit", "--limit", "500"]);
    for node in ["n1", "n2"] {
        for name in ["munge.key", "site.token"] {
            assert!(
                audit.lines().any(|l| l.contains("secret.delivered")
                    && l.contains(&format!("node/{node}"))
                    && l.contains(&format!("name={name} "))),
                "{node} {name}: {audit}"
            );
        }
    }
    assert!(audit.contains("secret.set"), "{audit}");

    c.server.ok(&["secret", "rm", "site.token", "--node", "n2"]);
    assert!(c.server.fails(&["secret", "rm", "site.token", "--node", "n2"]).contains("not found"));
    eventually(10, "tunnels closed", || c.server.wg_peers().is_empty());

    // The values appear nowhere an admin, a log reader or a disk thief looks.
    let mut seen = String::new();
    for args in [
        vec!["secret", "list"],
        vec!["secret", "list", "--json"],
        vec!["audit", "--limit", "1000", "--json"],
        vec!["node", "show", "n2", "--json"],
        vec!["node", "show", "n2", "--merged", "--json"],
        vec!["profile", "show", "compute", "--json"],
    ] {
        seen.push_str(&c.server.ok(&args));
    }
    seen.push_str(&c.server.log_text());
    let (_, metrics) = c.server.admin_get("/metrics");
    assert!(metrics.contains("ferry_secrets_delivered_total 4"), "{metrics}");
    seen.push_str(&metrics);
    let munge_b64 = B64.encode(&munge);
    for v in [global, own, munge_b64.as_str()] {
        assert!(!seen.contains(v), "{v} leaked into admin output or the server log");
    }
    for entry in walk(c.server.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        for v in [global.as_bytes(), own.as_bytes(), &munge[..64]] {
            assert!(!bytes.windows(v.len()).any(|w| w == v), "a secret in clear in {}", entry.display());
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}
