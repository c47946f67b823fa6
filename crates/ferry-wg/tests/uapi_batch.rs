//! The UAPI backend attached to wireguard-go: 1,000 peers added and removed, one request each.
//! Needs root, `wg` and `wireguard-go` (missing ones fail the test, they never skip it).

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::{require_root_and_tools, run, Lab};
use ferry_wg::{
    open_device, BackendChoice, BackendKind, DeviceUpdate, InterfaceSetup, PeerConfig, PrivateKey, WgError,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uapi_backend_adds_and_removes_1000_peers_in_one_request_each() {
    require_root_and_tools();
    let mut lab = Lab::new("b");
    let ns = lab.netns("c");
    let name = lab.ifname("g");
    lab.wireguard_go(&ns, &name);

    let key = PrivateKey::generate();
    let setup =
        InterfaceSetup { private_key: Some(key.clone()), listen_port: Some(51830), ..InterfaceSetup::default() };
    let dev = open_device(&name, BackendChoice::Uapi, &setup).await.expect("attach to wireguard-go");
    assert_eq!(dev.backend(), BackendKind::Uapi);
    let st = dev.status().await.expect("status");
    assert_eq!(st.public_key, Some(key.public_key()), "derived from wireguard-go's private_key");
    assert_eq!(st.listen_port, Some(51830));
    assert!(st.peers.is_empty());

    let peers: Vec<PeerConfig> = (0..1000usize)
        .map(|i| {
            PeerConfig::new(PrivateKey::generate().public_key())
                .allowed_ip(format!("100.64.{}.{}/32", 1 + i / 250, 1 + i % 250).parse().expect("network"))
        })
        .collect();
    let t = Instant::now();
    dev.apply(DeviceUpdate::new().add_peers(peers.clone())).await.expect("add 1000 peers");
    let add = t.elapsed();

    let t = Instant::now();
    let st = dev.status().await.expect("status");
    let get = t.elapsed();
    assert_eq!(st.peers.len(), 1000);
    let reported: HashMap<_, _> = st.peers.iter().map(|p| (p.public_key, p.allowed_ips.clone())).collect();
    for p in &peers {
        assert_eq!(reported.get(&p.public_key), Some(&p.allowed_ips), "{:?}", p.public_key);
    }
    // the standard tool agrees
    let listed = run(&["wg", "show", &name, "peers"]);
    assert_eq!(listed.lines().count(), 1000);

    // an update of one existing peer replaces its allowed IPs
    let moved = PeerConfig::new(peers[0].public_key).allowed_ip("100.65.0.1/32".parse().expect("net"));
    dev.apply(DeviceUpdate::new().add_peer(moved.clone())).await.expect("update one peer");
    let st = dev.status().await.expect("status");
    assert_eq!(st.peer(&moved.public_key).map(|p| &p.allowed_ips), Some(&moved.allowed_ips));
    assert_eq!(st.peers.len(), 1000);

    let t = Instant::now();
    dev.apply(DeviceUpdate::new().remove_peers(peers.iter().map(|p| p.public_key))).await.expect("remove 1000 peers");
    let remove = t.elapsed();
    assert!(dev.status().await.expect("status").peers.is_empty());
    assert_eq!(run(&["wg", "show", &name, "peers"]).trim(), "");

    println!("uapi (wireguard-go): add 1000 peers {add:?}, get 1000 peers {get:?}, remove 1000 peers {remove:?}");

    // a rejected request surfaces the errno with a hint: take a UDP port inside
    // wireguard-go's namespace, then ask wireguard-go to listen on it
    let blocker = common::in_netns(&ns, || std::net::UdpSocket::bind("0.0.0.0:0").expect("bind"));
    let taken = blocker.local_addr().expect("addr").port();
    let err = dev.apply(DeviceUpdate::new().listen_port(taken)).await.expect_err("port in use");
    assert!(matches!(err, WgError::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("already in use"), "{err}");

    let err = dev
        .apply(DeviceUpdate::new().add_peer(PeerConfig::new(key.public_key())).remove_peer(key.public_key()))
        .await
        .expect_err("duplicate key in one update");
    assert!(matches!(err, WgError::InvalidUpdate(_)), "{err}");

    dev.close().await.expect("close (detach)");
    // detaching leaves wireguard-go's interface in place
    assert!(ferry_wg::uapi::socket_path(&name).exists());
}

#[tokio::test]
async fn uapi_backend_on_a_missing_interface_says_what_to_do() {
    let err = open_device("fwnothere0", BackendChoice::Uapi, &InterfaceSetup::default())
        .await
        .expect_err("no such interface");
    let msg = err.to_string();
    assert!(matches!(err, WgError::SocketNotFound { .. }), "{msg}");
    assert!(msg.contains("/var/run/wireguard/fwnothere0.sock"), "{msg}");
    assert!(msg.contains("is wireguard-go"), "{msg}");
}
