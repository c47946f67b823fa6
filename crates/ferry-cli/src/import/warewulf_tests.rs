//! nodes.conf files written for these tests in Warewulf's format (4.6, and the older
//! spellings it still reads).

use super::*;

/// Warewulf 4.6: a profile chain, IPMI and overlays on the default profile, asset keys.
const CURRENT: &str = r#"
WW_INTERNAL: 45
nodeprofiles:
  default:
    comment: This profile is automatically included for each node
    image name: rockylinux-9
    kernel:
      args:
        - quiet
        - crashkernel=no
    root: tmpfs
    runtime overlay:
      - hosts
    system overlay:
      - wwinit
      - wwclient
    ipmi:
      username: admin
      password: IPMI-PASSWORD-d41d8
      template: ipmitool.tmpl
    network devices:
      default:
        device: eth0
        netmask: 255.255.255.0
        gateway: 10.0.0.254
        mtu: "9000"
  gpu:
    profiles:
      - default
    kernel:
      args:
        - nvidia-drm.modeset=1
    tags:
      partition: gpu
      gres: "gpu:a100:4"
nodes:
  n1:
    profiles:
      - gpu
    asset key: ASSET-KEY-77c0-a9d3-5e1f-0b2c
    network devices:
      default:
        hwaddr: 52:54:00:00:00:01
        ipaddr: 10.0.0.1
  n2:
    profiles:
      - default
    kernel:
      version: 6.1.0-28-amd64
    network devices:
      default:
        hwaddr: 52:54:00:00:00:02
        ipaddr: 10.0.0.2
"#;

fn settings_of<'a>(plan: &'a Plan, node: &str) -> &'a NewNode {
    plan.nodes.iter().find(|n| n.name.as_str() == node).unwrap_or_else(|| panic!("no node {node}"))
}

#[test]
fn profiles_inherit_and_nodes_keep_their_own_addresses() {
    let plan = convert(CURRENT).unwrap();
    let names: Vec<&str> = plan.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["default", "gpu"]);
    let default = &plan.profiles[0].settings;
    assert_eq!(default.image.as_deref(), Some("rockylinux-9"));
    assert_eq!(default.kernel_args, ["quiet", "crashkernel=no"]);
    assert_eq!(default.root, Some(RootMode::Tmpfs));
    let eth0 = &default.interfaces["eth0"];
    assert_eq!((eth0.netmask.unwrap().to_string(), eth0.mtu), ("255.255.255.0".into(), Some(9000)));
    assert_eq!(eth0.gateway.unwrap().to_string(), "10.0.0.254");
    assert_eq!(plan.profiles[1].profiles, [ProfileName::parse("default").unwrap()], "gpu inherits default");
    assert_eq!(plan.profiles[1].settings.tags["gres"], "gpu:a100:4");

    let n1 = settings_of(&plan, "n1");
    assert_eq!(n1.profiles, [ProfileName::parse("gpu").unwrap()]);
    // The node's part of network "default" lands on the profile's device, eth0.
    let eth0 = &n1.settings.interfaces["eth0"];
    assert_eq!(
        (eth0.mac.unwrap().to_string(), eth0.ipv4.unwrap().to_string()),
        ("52:54:00:00:00:01".into(), "10.0.0.1".into())
    );
    assert_eq!(n1.asset_tag.as_ref().map(|t| t.expose()), Some("ASSET-KEY-77c0-a9d3-5e1f-0b2c"));
    let n2 = settings_of(&plan, "n2");
    assert_eq!((n2.settings.kernel.as_deref(), n2.asset_tag.is_none()), (Some("6.1.0-28-amd64"), true));

    // Listed, by field name: IPMI (all three fields) and both overlays.
    let skipped: Vec<(&str, &str)> = plan.skipped.iter().map(|s| (s.owner.as_str(), s.field.as_str())).collect();
    for field in ["ipmi.username", "ipmi.password", "ipmi.template", "runtime overlay", "system overlay"] {
        assert!(skipped.contains(&("profile default", field)), "{field} not listed: {skipped:?}");
    }
    // Never a secret in what is shown: not the IPMI password, not the asset key.
    let shown = crate::import::describe(&plan);
    assert!(!shown.contains("IPMI-PASSWORD") && !shown.contains("ASSET-KEY"), "{shown}");
    assert!(shown.contains("n1 <- gpu") && shown.contains("asset tag (sealed)"), "{shown}");
    assert!(shown.contains("profile default: ipmi.password, ipmi.template, ipmi.username (IPMI"), "{shown}");
    // n2 has no asset key: the admin is told it will be refused until it gets one.
    assert!(plan.notes.iter().any(|n| n.contains("1 node(s) have no asset key (n2)")), "{:?}", plan.notes);
}

/// The spellings before 4.6 (container name, kernel args as one string, keys, flat IPMI
/// fields, ip6addr with its prefix), several network devices and a primary network.
const OLDER: &str = r#"
nodeprofiles:
  compute:
    container name: rocky-8
    kernel args: quiet crashkernel=no vga=791
    keys:
      rack: r01
    ipmi username: admin
    ipmi password: OLD-IPMI-SECRET
    network devices:
      default:
        device: eth0
        netmask: 255.255.0.0
      ib:
        device: ib0
        type: infiniband
        netmask: 255.255.255.0
nodes:
  N0001.cluster:
    profiles: compute
    primary network: ib
    ipxe template: default
    network devices:
      default:
        hwaddr: 52:54:00:aa:00:01
        ipaddr: 10.1.0.1
        ip6addr: fd00::1/64
      ib:
        ipaddr: 10.2.0.1
"#;

#[test]
fn older_spellings_and_several_network_devices() {
    let plan = convert(OLDER).unwrap();
    let compute = &plan.profiles[0].settings;
    assert_eq!(compute.image.as_deref(), Some("rocky-8"));
    assert_eq!(compute.kernel_args, ["quiet", "crashkernel=no", "vga=791"]);
    assert_eq!(compute.tags["rack"], "r01");
    assert_eq!(compute.interfaces.keys().collect::<Vec<_>>(), ["eth0", "ib0"]);
    // A dotted, upper-case Warewulf name becomes a ferry host name, and the admin is told.
    let node = &plan.nodes[0];
    assert_eq!(node.name.as_str(), "n0001");
    assert!(plan.notes.iter().any(|n| n.contains("N0001.cluster is imported as n0001")), "{:?}", plan.notes);
    let (eth0, ib0) = (&node.settings.interfaces["eth0"], &node.settings.interfaces["ib0"]);
    assert_eq!(eth0.ipv6.unwrap().to_string(), "fd00::1");
    assert_eq!(eth0.ipv6_prefix, Some(64));
    assert_eq!((ib0.ipv4.unwrap().to_string(), ib0.primary), ("10.2.0.1".into(), Some(true)));
    let skipped: Vec<&str> = plan.skipped.iter().map(|s| s.field.as_str()).collect();
    for field in ["ipmi username", "ipmi password", "network devices.ib.type", "ipxe template"] {
        assert!(skipped.contains(&field), "{field}: {skipped:?}");
    }
    assert!(!crate::import::describe(&plan).contains("OLD-IPMI-SECRET"));
}

#[test]
fn duplicate_macs_are_refused_naming_both_nodes() {
    let text = r#"
nodes:
  n1:
    network devices:
      default: {device: eth0, hwaddr: "52:54:00:00:00:01", ipaddr: 10.0.0.1}
  n2:
    network devices:
      default: {device: eth0, hwaddr: "52:54:00:00:00:01", ipaddr: 10.0.0.2}
"#;
    let err = format!("{:#}", convert(text).unwrap_err());
    assert!(err.contains("MAC 52:54:00:00:00:01: node n1 (eth0) and node n2 (eth0)"), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    let same_ip = text.replace("00:00:00:01\", ipaddr: 10.0.0.2", "00:00:00:02\", ipaddr: 10.0.0.1");
    let err = format!("{:#}", convert(&same_ip).unwrap_err());
    assert!(err.contains("IP 10.0.0.1: node n1 (eth0) and node n2 (eth0)"), "{err}");
}

#[test]
fn bad_files_are_clear_errors() {
    let cases: [(&str, &str); 7] = [
        ("nodes: [n1, n2]", "nodes must be a mapping"),
        ("- just\n- a list", "expected a mapping with nodeprofiles and nodes"),
        ("nodes:\n  n1:\n    network devices:\n      default: {hwaddr: not-a-mac}", "node n1: network devices"),
        ("nodes:\n  n1:\n    network devices:\n      default: {ipaddr: 10.0.0.300}", "ipaddr: not a valid value"),
        ("a: &x [1]\nnodes:\n  n1:\n    tags: *x", "aliases"),
        ("nodes:\n  bad_name: {}", "cannot be a ferry node name"),
        (
            "nodeprofiles:\n  p: {network devices: {default: {device: eth0}}}\nnodes:\n  n1:\n    network devices:\n      default: {device: eth1}",
            "network default is device eth0 (profile p) and eth1 (node n1)",
        ),
    ];
    for (text, expected) in cases {
        let err = format!("{:#}", convert(text).unwrap_err());
        assert!(err.contains(expected), "{text:?}: {err}");
    }
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    assert!(convert(&deep).is_err());
    assert!(convert(&" ".repeat(MAX_FILE_BYTES + 1)).unwrap_err().to_string().contains("larger than"));
}

#[test]
fn profile_addresses_and_asset_keys_are_listed_not_imported() {
    // Warewulf lets a profile carry a MAC, an IP and an asset key; in ferry they identify
    // one node, so they stay on nodes.
    let text = r#"
nodeprofiles:
  p:
    asset key: PROFILE-KEY-SECRET
    network devices:
      default: {device: eth0, hwaddr: "52:54:00:00:00:09", ipaddr: 10.0.0.9, netmask: 255.255.255.0}
"#;
    let plan = convert(text).unwrap();
    let eth0 = &plan.profiles[0].settings.interfaces["eth0"];
    assert_eq!((eth0.mac, eth0.ipv4, eth0.netmask.map(|m| m.to_string())), (None, None, Some("255.255.255.0".into())));
    let skipped: Vec<&str> = plan.skipped.iter().map(|s| s.field.as_str()).collect();
    assert_eq!(skipped, ["asset key", "network devices.default.hwaddr", "network devices.default.ipaddr"]);
    assert!(!crate::import::describe(&plan).contains("PROFILE-KEY-SECRET"));
}
