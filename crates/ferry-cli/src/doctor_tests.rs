//! Each check of `ferry doctor` passes on a sound set-up and fails (or warns) on the
//! broken one it exists for.

use super::*;
use serde_json::json;

fn setup() -> ServerSetup {
    serde_json::from_value(json!({
        "version": "0.1.0", "now": 1_800_000_000, "store": "sqlite", "wireguard_interface": "ferry0",
        "wireguard_backend": "userspace", "wireguard_backend_configured": "auto", "wireguard_listen_port": 51820,
        "provisioning_listen": "0.0.0.0:8470", "provisioning_tls_listen": null, "provisioning_tls_cert": null,
        "datasource_listen": "100.64.0.1:8471", "remote_admin_listen": null, "remote_admin_tls_cert": null,
        "lost_after_secs": 15
    }))
    .unwrap()
}

fn node(name: &str, weak: bool, refused: bool, image: Option<&str>, mac_ip: Option<(&str, &str)>) -> NodeView {
    let mut settings = json!({});
    if let Some(i) = image {
        settings["image"] = json!(i);
    }
    if let Some((mac, ip)) = mac_ip {
        settings["interfaces"] = json!({"eth0": {"mac": mac, "ipv4": ip}});
    }
    serde_json::from_value(json!({
        "name": name, "profiles": [], "asset_tag": "unset", "revision": 1, "updated_at": "",
        "identity": {"factors": ["network"], "explicit": weak, "weak": weak, "refused": refused},
        "settings": settings
    }))
    .unwrap()
}

fn server(id: &str, age: i64, alive: bool, key: &str) -> ServerView {
    serde_json::from_value(json!({
        "id": id, "endpoint": "10.0.0.1:51820", "public_key": "k", "sealing_key_id": key, "started_at": "",
        "heartbeat_age_secs": age, "alive": alive, "active_tunnels": 0, "this": id == "s1"
    }))
    .unwrap()
}

#[test]
fn wireguard_needs_the_device_here_and_prefers_the_module() {
    let s = setup();
    assert_eq!(wireguard(&s, true, true).status, Status::Ok);
    assert_eq!(wireguard(&s, true, false).status, Status::Warn, "auto fell back to userspace");
    let chosen = ServerSetup { wireguard_backend_configured: "userspace".into(), ..setup() };
    assert_eq!(wireguard(&chosen, true, false).status, Status::Ok, "userspace by choice");
    let gone = wireguard(&s, false, true);
    assert_eq!(gone.status, Status::Fail);
    assert!(gone.detail.contains("ferry0") && gone.fix.unwrap().contains("systemctl restart ferry"));
}

#[test]
fn listeners_must_answer_and_provisioning_must_not_be_loopback_only() {
    let mut s = setup();
    let up = [("provisioning", "0.0.0.0:8470".to_owned(), None)];
    assert_eq!(listeners(&s, &up).status, Status::Ok);
    let down = [("datasource", "100.64.0.1:8471".to_owned(), Some("Connection refused".to_owned()))];
    let c = listeners(&s, &down);
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("datasource 100.64.0.1:8471: Connection refused"), "{}", c.detail);
    s.provisioning_listen = "127.0.0.1:8470".into();
    assert_eq!(listeners(&s, &up).status, Status::Warn);
}

#[test]
fn clock_skew_to_this_host_or_between_servers_fails() {
    let now = 1_800_000_000;
    assert_eq!(clock(now, now + 1, &[server("s2", 3, true, "")]).status, Status::Ok);
    assert_eq!(clock(now, now + 60, &[]).status, Status::Fail);
    assert_eq!(clock(now, 1_000_000, &[]).status, Status::Fail, "a clock before 2024");
    let ahead = clock(now, now, &[server("s2", -30, true, "")]);
    assert_eq!(ahead.status, Status::Fail);
    assert!(ahead.detail.contains("s2 (30 s)"), "{}", ahead.detail);
}

#[test]
fn routes_are_read_from_the_kernel_table_and_overlaps_fail() {
    let table = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                 eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                 eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 ferry0\t00004064\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                 ib0\t00C84064\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
    let routes = parse_proc_routes(table);
    assert_eq!(routes[1], Route { destination: "192.0.2.0".parse().unwrap(), prefix: 24, device: "eth0".into() });
    assert_eq!(routes[3].destination, "100.64.200.0".parse::<Ipv4Addr>().unwrap());
    let clash = tunnel_network("100.64.0.0/16", "ferry0", &routes);
    assert_eq!(clash.status, Status::Fail);
    assert!(clash.detail.contains("100.64.200.0/24 dev ib0"), "{}", clash.detail);
    assert!(!clash.detail.contains("ferry0"), "the tunnel's own route is no clash");
    assert_eq!(tunnel_network("100.64.0.0/16", "ferry0", &routes[..3]).status, Status::Ok, "the default route is none");
    assert_eq!(tunnel_network("10.99.0.0/16", "ferry0", &routes).status, Status::Ok);
}

#[test]
fn dnsmasq_leases_must_match_the_inventory() {
    let expected = "dhcp-host=52:54:00:00:00:01,10.0.1.1,n1 # eth0\n";
    assert_eq!(dnsmasq("/etc/f.conf", Ok(format!("enable-tftp\n{expected}")), expected).status, Status::Ok);
    assert_eq!(dnsmasq("/etc/f.conf", Err("No such file".into()), expected).status, Status::Warn);
    let stale = dnsmasq("/etc/f.conf", Ok("dhcp-host=52:54:00:00:00:01,10.0.1.9,n1\n".into()), expected);
    assert_eq!(stale.status, Status::Fail);
    assert!(stale.detail.contains("missing 52:54:00:00:00:01,10.0.1.1,n1"), "{}", stale.detail);
    assert!(stale.detail.contains("not in the inventory 52:54:00:00:00:01,10.0.1.9,n1"), "{}", stale.detail);
}

#[test]
fn images_named_must_exist() {
    let image: ImageRecord = serde_json::from_value(json!({
        "name": "rocky9", "kernel": {"sha256": "a", "size": 1}, "initrd": {"sha256": "b", "size": 1}, "created_at": ""
    }))
    .unwrap_or_else(|e| panic!("ImageRecord: {e}"));
    let ok = [node("n1", false, false, Some("rocky9"), None)];
    assert_eq!(images(&[], &ok, std::slice::from_ref(&image)).status, Status::Ok);
    let missing = images(&[], &[node("n2", false, false, Some("alma9"), None)], &[image]);
    assert_eq!(missing.status, Status::Fail);
    assert!(missing.detail.contains("node n2 → alma9"), "{}", missing.detail);
}

#[test]
fn weak_and_refused_identities_are_named() {
    assert_eq!(identity(&[node("n1", false, false, None, None)]).status, Status::Ok);
    let c = identity(&[node("n1", true, false, None, None), node("n2", true, true, None, None)]);
    assert_eq!(c.status, Status::Warn);
    assert!(c.detail.contains("1 enroll on network position alone (weak): n1"), "{}", c.detail);
    assert!(c.detail.contains("1 have no identity and are refused: n2"), "{}", c.detail);
}

#[test]
fn the_certificate_on_disk_must_be_the_one_served() {
    let mut s = setup();
    assert_eq!(tls(&s, None, None).status, Status::Ok, "TLS off");
    s.provisioning_tls_cert = Some("/var/lib/ferry/provisioning.crt".into());
    assert_eq!(tls(&s, Some("sha256:aa"), Some(CertFile::Pin("sha256:aa".into()))).status, Status::Ok);
    let replaced = tls(&s, Some("sha256:aa"), Some(CertFile::Pin("sha256:bb".into())));
    assert_eq!(replaced.status, Status::Fail);
    assert!(replaced.fix.unwrap().contains("systemctl restart ferry"));
    assert_eq!(tls(&s, Some("sha256:aa"), Some(CertFile::Broken("no such file".into()))).status, Status::Fail);
    // An admin in admin_users, not root: not a finding about the server.
    assert_eq!(tls(&s, Some("sha256:aa"), Some(CertFile::NotAllowed)).status, Status::Skipped);
}

#[test]
fn lost_servers_warn_and_different_sealing_keys_fail() {
    let s = setup();
    assert_eq!(servers(&s, &[server("s1", 0, true, "k1"), server("s2", 1, true, "k1")]).status, Status::Ok);
    let lost = servers(&s, &[server("s1", 0, true, "k1"), server("s2", 99, false, "k1")]);
    assert_eq!(lost.status, Status::Warn);
    assert!(lost.detail.contains("s2") && lost.fix.unwrap().contains("ferry server remove"));
    assert_eq!(servers(&s, &[server("s1", 0, true, "k1"), server("s2", 1, true, "k2")]).status, Status::Fail);
}

#[test]
fn a_stale_secure_boot_export_fails_the_dnsmasq_check() {
    let conf = "dhcp-host=52:54:00:00:00:01,10.0.0.1,n1 # eth0\ndhcp-host=52:54:00:00:00:02,n2\n";
    assert_eq!(configured_macs(conf), ["52:54:00:00:00:01", "52:54:00:00:00:02"]);
    let leases = || Check::ok("dnsmasq", "/etc/dnsmasq.d/ferry.conf: 2 static leases, as in the inventory");
    let c = secure_boot_export(leases(), "/srv/tftp", Ok(vec![]));
    assert_eq!(c.status, Status::Ok, "{c:?}");
    assert!(c.detail.ends_with("the Secure Boot TFTP tree in /srv/tftp is current"), "{c:?}");
    let c = secure_boot_export(leases(), "/srv/tftp", Ok(vec!["boot/images/rocky9/kernel".into()]));
    assert_eq!(c.status, Status::Fail, "{c:?}");
    assert!(c.detail.contains("out of date: boot/images/rocky9/kernel"), "{c:?}");
    assert!(c.fix.as_deref().unwrap().contains("ferry configure dnsmasq --secure-boot"), "{c:?}");
    let c = secure_boot_export(leases(), "/srv/tftp", Err("connection refused".into()));
    assert_eq!(c.status, Status::Fail, "{c:?}");
    // A lease mismatch is reported as such, first.
    let wrong = Check::fail("dnsmasq", "missing n3", "re-run");
    assert_eq!(secure_boot_export(wrong, "/srv/tftp", Ok(vec!["x".into()])).detail, "missing n3");
}
