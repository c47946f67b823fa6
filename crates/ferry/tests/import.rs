//! `ferry import warewulf` against a real server: nodes.conf files written for the test
//! in Warewulf's format become ferry profiles and nodes in one transaction, or nothing.

mod common;

use common::TestServer;

const NODES_CONF: &str = r#"
WW_INTERNAL: 45
nodeprofiles:
  default:
    image name: rockylinux-9
    kernel:
      args: [quiet, crashkernel=no]
    ipmi:
      username: admin
      password: IPMI-PASSWORD-1b2f
    system overlay: [wwinit]
    network devices:
      default:
        device: eth0
        netmask: 255.255.255.0
  gpu:
    profiles: [default]
    kernel:
      args: [nvidia-drm.modeset=1]
    tags:
      partition: gpu
nodes:
  n1:
    profiles: [gpu]
    asset key: ASSET-KEY-4c9e-aa01-77d3-19b0
    network devices:
      default: {hwaddr: "52:54:00:00:00:01", ipaddr: 10.0.0.1}
      ib:
        device: ib0
        ipaddr: 10.1.0.1
        netmask: 255.255.0.0
  n2:
    profiles: [default]
    network devices:
      default: {hwaddr: "52:54:00:00:00:02", ipaddr: 10.0.0.2}
"#;

fn names(s: &TestServer, what: &str) -> Vec<String> {
    let list = s.json(&[what, "list", "--json"]);
    list.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_warewulf_inventory_is_imported_whole_or_not_at_all() {
    let s = TestServer::start();
    let file = s.dir.path().join("nodes.conf");
    std::fs::write(&file, NODES_CONF).unwrap();
    let file = file.to_str().unwrap();

    // Dry run: the plan, the server's check, nothing written.
    let dry = s.run(&["import", "warewulf", file, "--dry-run"]);
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    assert!(out.contains("+ n1 <- gpu") && out.contains("asset tag (sealed)"), "{out}");
    assert!(out.contains("ipmi.password, ipmi.username (IPMI"), "unsupported fields are listed: {out}");
    assert!(out.contains("would be added; nothing was written"), "{out}");
    assert!(names(&s, "node").is_empty() && names(&s, "profile").is_empty(), "a dry run writes nothing");

    let done = s.run(&["import", "warewulf", file]);
    let out = String::from_utf8_lossy(&done.stdout).into_owned();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(out.contains("imported 2 profile(s) and 2 node(s) in one transaction"), "{out}");
    assert_eq!(names(&s, "profile"), ["default", "gpu"]);
    assert_eq!(names(&s, "node"), ["n1", "n2"]);
    // Inheritance as Warewulf had it: default, then gpu, then the node.
    let merged = s.json(&["node", "show", "n1", "--merged", "--json"]);
    assert_eq!(
        merged["settings"]["kernel_args"],
        serde_json::json!(["quiet", "crashkernel=no", "nvidia-drm.modeset=1"])
    );
    assert_eq!(merged["settings"]["image"], "rockylinux-9");
    let eth0 = &merged["settings"]["interfaces"]["eth0"];
    assert_eq!((eth0["mac"].as_str(), eth0["netmask"].as_str()), (Some("52:54:00:00:00:01"), Some("255.255.255.0")));
    assert_eq!(merged["settings"]["interfaces"]["ib0"]["ipv4"], "10.1.0.1");
    let n1 = s.json(&["node", "show", "n1", "--json"]);
    assert_eq!(n1["asset_tag"], "set");
    assert_eq!(n1["identity"]["factors"], serde_json::json!(["network", "asset-tag"]));

    // Again: the names exist; refused, nothing changes.
    let err = s.fails(&["import", "warewulf", file]);
    assert!(err.contains("already exists") && err.contains("nothing was imported"), "{err}");

    // A new profile and a node whose MAC n1 already has: refused by the server, and the
    // profile that came with it is not left behind.
    let clash = s.dir.path().join("clash.conf");
    std::fs::write(
        &clash,
        "nodeprofiles:\n  login: {}\nnodes:\n  n3:\n    profiles: [login]\n    network devices:\n      default: {device: eth0, hwaddr: \"52:54:00:00:00:01\"}\n",
    )
    .unwrap();
    let err = s.fails(&["import", "warewulf", clash.to_str().unwrap()]);
    assert!(err.contains("52:54:00:00:00:01") && err.contains("already used by node n1"), "{err}");
    assert_eq!(names(&s, "profile"), ["default", "gpu"]);
    assert_eq!(names(&s, "node"), ["n1", "n2"]);

    // Two nodes of one file with one MAC: refused before anything is sent.
    let twice = s.dir.path().join("twice.conf");
    std::fs::write(
        &twice,
        "nodes:\n  n4: {network devices: {default: {device: eth0, hwaddr: \"52:54:00:00:00:04\"}}}\n  n5: {network devices: {default: {device: eth0, hwaddr: \"52:54:00:00:00:04\"}}}\n",
    )
    .unwrap();
    let err = s.fails(&["import", "warewulf", twice.to_str().unwrap()]);
    assert!(err.contains("MAC 52:54:00:00:00:04: node n4 (eth0) and node n5 (eth0)"), "{err}");
    assert_eq!(names(&s, "node"), ["n1", "n2"]);

    // The one import is audited with its source; no secret anywhere.
    let audit = s.ok(&["audit", "--limit", "100"]);
    assert_eq!(audit.matches("inventory.import").count(), 1, "{audit}");
    assert!(audit.contains("source=warewulf:"), "{audit}");
    for text in [out, audit, s.log_text()] {
        assert!(!text.contains("ASSET-KEY-4c9e") && !text.contains("IPMI-PASSWORD"), "a secret leaked: {text}");
    }
}
