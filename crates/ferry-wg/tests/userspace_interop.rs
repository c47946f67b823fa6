//! The in-process userspace backend against wireguard-go, across network namespaces.
//! Needs root, `wg` and `wireguard-go` (missing ones fail the test, they never skip it).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{in_netns, require_root_and_tools, run, Lab};
use ferry_wg::{
    open_device, BackendChoice, BackendKind, DeviceUpdate, InterfaceSetup, PeerConfig, PrivateKey, PublicKey, WgError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> tokio::runtime::Runtime {
    // current-thread: everything (netlink, UDP, TCP sockets) is created on this thread,
    // which has joined the test's namespace
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn net(s: &str) -> ferry_wg::IpNet {
    s.parse().expect("test network")
}

/// Node side: connect through the tunnel from namespace `ns`, send a line, read the echo.
fn tcp_client(ns: String, server: SocketAddr) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        in_netns(&ns, move || {
            let mut s =
                TcpStream::connect_timeout(&server, Duration::from_secs(15)).expect("TCP connect through the tunnel");
            s.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
            s.write_all(b"hello from node\n").expect("send");
            let mut reply = String::new();
            s.read_to_string(&mut reply).expect("receive");
            reply
        })
    })
}

#[test]
fn userspace_device_carries_traffic_with_wireguard_go() {
    require_root_and_tools();
    let mut lab = Lab::new("u");
    let ns_a = lab.netns("a");
    let ns_b = lab.netns("b");
    lab.veth(&ns_a, "198.18.0.1/24", &ns_b, "198.18.0.2/24");
    let srv_if = lab.ifname("s");
    let node_if = lab.ifname("n");

    let srv_key = PrivateKey::generate();
    let srv_pub = srv_key.public_key();
    let node_key = PrivateKey::generate();
    let node_pub = node_key.public_key();

    // Node: wireguard-go in B, configured with the standard tools.
    lab.wireguard_go(&ns_b, &node_if);
    let keyfile = lab.secret_file("node.key", &node_key.to_base64());
    let keyfile = keyfile.to_str().expect("utf-8 path");
    let srv_b64 = srv_pub.to_base64();
    run(&[
        "ip",
        "netns",
        "exec",
        &ns_b,
        "wg",
        "set",
        &node_if,
        "private-key",
        keyfile,
        "listen-port",
        "51821",
        "peer",
        &srv_b64,
        "allowed-ips",
        "100.64.0.1/32",
        "endpoint",
        "198.18.0.1:51820",
    ]);
    run(&["ip", "-n", &ns_b, "addr", "add", "100.64.0.2/16", "dev", &node_if]);
    run(&["ip", "-n", &ns_b, "link", "set", &node_if, "up"]);

    // Server: our userspace backend in A.
    let (a, b) = (ns_a.clone(), ns_b.clone());
    let node_if2 = node_if.clone();
    in_netns(&ns_a, move || {
        runtime().block_on(async move {
            let setup = InterfaceSetup {
                addresses: vec![net("100.64.0.1/16")],
                private_key: Some(srv_key),
                listen_port: Some(51820),
                ..InterfaceSetup::default()
            };
            let dev = open_device(&srv_if, BackendChoice::Userspace, &setup).await.expect("open userspace device");
            assert_eq!(dev.backend(), BackendKind::Userspace);
            assert_eq!(dev.name(), srv_if);
            let st = dev.status().await.expect("status");
            assert_eq!(st.public_key, Some(srv_pub));
            assert_eq!(st.listen_port, Some(51820));
            let mtu = run(&["ip", "netns", "exec", &a, "cat", &format!("/sys/class/net/{srv_if}/mtu")]);
            assert_eq!(mtu.trim(), "1420");

            let peer = PeerConfig::new(node_pub).allowed_ip(net("100.64.0.2/32"));
            dev.apply(DeviceUpdate::new().add_peer(peer.clone())).await.expect("add peer");
            // Updating an existing peer must work (boringtun's own device panicked on it).
            dev.apply(DeviceUpdate::new().add_peer(peer.persistent_keepalive(25))).await.expect("update peer");

            // Traffic: a TCP echo between the tunnel addresses.
            let listener = tokio::net::TcpListener::bind("100.64.0.1:7000").await.expect("bind on the tunnel address");
            let started = Instant::now();
            let client = tcp_client(b.clone(), "100.64.0.1:7000".parse().expect("addr"));
            let (mut conn, from) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
                .await
                .expect("no TCP connection through the tunnel within 20 s")
                .expect("accept");
            assert_eq!(from.ip().to_string(), "100.64.0.2", "came through the tunnel");
            let mut line = [0u8; 16];
            conn.read_exact(&mut line).await.expect("read");
            assert_eq!(&line, b"hello from node\n");
            conn.write_all(b"hello from server\n").await.expect("write");
            drop(conn);
            let reply = tokio::task::spawn_blocking(move || client.join()).await.expect("join").expect("client thread");
            assert_eq!(reply, "hello from server\n");
            println!("handshake + TCP echo through the tunnel: {:?}", started.elapsed());

            let st = dev.status().await.expect("status");
            let p = st.peer(&node_pub).expect("peer listed");
            assert_eq!(p.allowed_ips, vec![net("100.64.0.2/32")]);
            assert_eq!(p.persistent_keepalive, Some(25));
            assert_eq!(p.endpoint, Some("198.18.0.2:51821".parse().expect("addr")));
            assert!(p.rx_bytes > 0 && p.tx_bytes > 0, "{p:?}");
            let age = p.last_handshake.expect("handshake done").elapsed().unwrap_or_default();
            assert!(age < Duration::from_secs(60), "handshake {age:?} ago");

            // Standard tooling sees our device and the peer.
            let show = run(&["ip", "netns", "exec", &a, "wg", "show", &srv_if]);
            assert!(show.contains(&format!("peer: {}", node_pub.to_base64())), "{show}");
            assert!(show.contains("allowed ips: 100.64.0.2/32"), "{show}");
            assert!(show.contains("listening port: 51820"), "{show}");
            assert!(show.contains(&format!("public key: {}", srv_pub.to_base64())), "{show}");
            assert!(show.contains("endpoint: 198.18.0.2:51821"), "{show}");
            assert!(show.contains("latest handshake:") && !show.contains("year"), "a recent handshake: {show}");
            // and the node (wireguard-go) saw a real handshake with our key
            let node_show = run(&["ip", "netns", "exec", &b, "wg", "show", &node_if2]);
            assert!(node_show.contains(&format!("peer: {}", srv_pub.to_base64())), "{node_show}");
            assert!(
                node_show.contains("latest handshake:") && !node_show.contains("year"),
                "no recent handshake: {node_show}"
            );

            dev.apply(DeviceUpdate::new().remove_peer(node_pub)).await.expect("remove peer");
            assert!(dev.status().await.expect("status").peers.is_empty());

            dev.close().await.expect("close");
            let links = run(&["ip", "-n", &a, "-o", "link", "show"]);
            assert!(!links.contains(&srv_if), "interface left behind: {links}");
            assert!(!ferry_wg::uapi::socket_path(&srv_if).exists(), "socket left behind");
        })
    });
}

/// The node's side (the agent's userspace backend): our device initiates the handshake
/// on the first packet, with wireguard-go as the server, and keeps the tunnel alive.
#[test]
fn userspace_device_initiates_to_wireguard_go() {
    require_root_and_tools();
    let mut lab = Lab::new("i");
    let ns_a = lab.netns("a");
    let ns_b = lab.netns("b");
    lab.veth(&ns_a, "198.18.0.1/24", &ns_b, "198.18.0.2/24");
    let node_if = lab.ifname("n");
    let srv_if = lab.ifname("s");
    let (srv_key, node_key) = (PrivateKey::generate(), PrivateKey::generate());
    let (srv_pub, node_pub) = (srv_key.public_key(), node_key.public_key());

    // Server: wireguard-go in B, with no endpoint for the node (it learns it).
    lab.wireguard_go(&ns_b, &srv_if);
    let keyfile = lab.secret_file("srv.key", &srv_key.to_base64());
    let keyfile = keyfile.to_str().expect("utf-8 path");
    let node_b64 = node_pub.to_base64();
    run(&[
        "ip",
        "netns",
        "exec",
        &ns_b,
        "wg",
        "set",
        &srv_if,
        "private-key",
        keyfile,
        "listen-port",
        "51820",
        "peer",
        &node_b64,
        "allowed-ips",
        "100.64.0.2/32",
    ]);
    run(&["ip", "-n", &ns_b, "addr", "add", "100.64.0.1/16", "dev", &srv_if]);
    run(&["ip", "-n", &ns_b, "link", "set", &srv_if, "up"]);
    let b = ns_b.clone();
    let server = std::thread::spawn(move || {
        in_netns(&b, || {
            let listener = std::net::TcpListener::bind("100.64.0.1:7000").expect("bind on the tunnel address");
            let (mut conn, from) = listener.accept().expect("accept");
            let mut line = [0u8; 16];
            conn.read_exact(&mut line).expect("read");
            conn.write_all(b"hello from server\n").expect("write");
            (from.ip().to_string(), line)
        })
    });

    // Node: our userspace device in A, as the agent sets it up.
    let a = ns_a.clone();
    let (b2, srv_if2) = (ns_b.clone(), srv_if.clone());
    in_netns(&ns_a, move || {
        runtime().block_on(async move {
            let setup = InterfaceSetup {
                addresses: vec![net("100.64.0.2/32")],
                private_key: Some(node_key),
                ..InterfaceSetup::default()
            };
            let dev = open_device(&node_if, BackendChoice::Userspace, &setup).await.expect("open userspace device");
            let peer = PeerConfig::new(srv_pub)
                .allowed_ip(net("100.64.0.1/32"))
                .endpoint("198.18.0.2:51820".parse().expect("addr"))
                .persistent_keepalive(1);
            dev.apply(DeviceUpdate::new().add_peer(peer)).await.expect("add the server");
            run(&["ip", "-n", &a, "route", "add", "100.64.0.1/32", "dev", &node_if]);
            let mut s = tokio::net::TcpStream::connect("100.64.0.1:7000").await.expect("TCP through the tunnel");
            s.write_all(b"hello from node\n").await.expect("send");
            let mut reply = String::new();
            s.read_to_string(&mut reply).await.expect("receive");
            assert_eq!(reply, "hello from server\n");
            // Persistent keepalive (1 s here): the server keeps hearing from the node.
            let received_by_server = || -> u64 {
                let dump = run(&["ip", "netns", "exec", &b2, "wg", "show", &srv_if2, "dump"]);
                let line = dump.lines().nth(1).expect("the node's line").to_string();
                line.split('\t').nth(5).and_then(|v| v.parse().ok()).expect("transfer-rx")
            };
            let before = received_by_server();
            tokio::time::sleep(Duration::from_millis(2500)).await;
            assert!(received_by_server() > before, "no keepalive reached the server");
            let st = dev.status().await.expect("status");
            assert!(st.peer(&srv_pub).and_then(|p| p.last_handshake).is_some(), "{st:?}");
            dev.close().await.expect("close");
        })
    });
    let (from, line) = server.join().expect("server thread");
    assert_eq!(from, "100.64.0.2");
    assert_eq!(&line, b"hello from node\n");
    let dump = run(&["ip", "netns", "exec", &ns_b, "wg", "show", &srv_if, "dump"]);
    let peer_line = dump.lines().nth(1).expect("the node's line");
    assert!(peer_line.contains("198.18.0.1:"), "wireguard-go learnt our endpoint: {peer_line}");
}

#[test]
fn userspace_device_batches_1000_peers() {
    require_root_and_tools();
    let mut lab = Lab::new("m");
    let ns = lab.netns("a");
    let name = lab.ifname("s");
    in_netns(&ns, move || {
        runtime().block_on(async move {
            let setup = InterfaceSetup { addresses: vec![net("100.64.0.1/16")], ..InterfaceSetup::default() };
            let mask_before = blocked_signals();
            let dev = open_device(&name, BackendChoice::Userspace, &setup).await.expect("open userspace device");
            // The device must not touch the caller's signal mask (boringtun's own blocked
            // SIGINT/SIGTERM in the thread that created it).
            assert_eq!(blocked_signals(), mask_before, "caller's signal mask changed");
            let keys = batch_keys(1000);
            let peers = keys.iter().enumerate().map(|(i, k)| peer_for(i, *k));
            let t = Instant::now();
            dev.apply(DeviceUpdate::new().add_peers(peers)).await.expect("add 1000");
            let add = t.elapsed();
            let st = dev.status().await.expect("status");
            assert_eq!(st.peers.len(), 1000);
            for (i, k) in keys.iter().enumerate() {
                assert_eq!(st.peer(k).map(|p| p.allowed_ips.clone()), Some(peer_for(i, *k).allowed_ips));
            }
            // replace_peers keeps only the named ones
            let keep = PeerConfig::new(keys[0]).allowed_ip(net("100.64.200.1/32"));
            dev.apply(DeviceUpdate::new().replace_peers(true).add_peer(keep.clone())).await.expect("replace peers");
            let st = dev.status().await.expect("status");
            assert_eq!(st.peers.len(), 1);
            assert_eq!(st.peers[0].allowed_ips, keep.allowed_ips);
            dev.apply(DeviceUpdate::new().add_peers(keys.iter().enumerate().map(|(i, k)| peer_for(i, *k))))
                .await
                .expect("re-add 1000, one of them an update");
            let t = Instant::now();
            dev.apply(DeviceUpdate::new().remove_peers(keys.iter().copied())).await.expect("remove 1000");
            let remove = t.elapsed();
            assert!(dev.status().await.expect("status").peers.is_empty());
            println!("userspace: add 1000 peers {add:?}, remove 1000 peers {remove:?}");
            dev.close().await.expect("close");
        })
    });
}

#[test]
fn userspace_device_refuses_a_live_socket() {
    require_root_and_tools();
    let mut lab = Lab::new("r");
    let ns = lab.netns("a");
    let name = lab.ifname("g");
    lab.wireguard_go(&ns, &name);
    in_netns(&ns, move || {
        runtime().block_on(async move {
            let err = open_device(&name, BackendChoice::Userspace, &InterfaceSetup::default())
                .await
                .expect_err("wireguard-go already serves this name");
            assert!(matches!(err, WgError::InUse { .. }), "{err}");
            assert!(err.to_string().contains("BackendChoice::Uapi"), "{err}");
        })
    });
}

pub fn batch_keys(n: usize) -> Vec<PublicKey> {
    (0..n).map(|_| PrivateKey::generate().public_key()).collect()
}

pub fn peer_for(i: usize, key: PublicKey) -> PeerConfig {
    PeerConfig::new(key).allowed_ip(net(&format!("100.64.{}.{}/32", 1 + i / 250, 1 + i % 250)))
}

/// The calling thread's blocked-signal mask, from /proc.
fn blocked_signals() -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("read status");
    status.lines().find(|l| l.starts_with("SigBlk:")).expect("SigBlk line").to_string()
}

/// A boot storm sends the device bursts of handshakes and packets from hundreds of nodes
/// at once: with the system's default receive buffer (208 KiB) its UDP socket dropped
/// ~1 in 40 datagrams in the 2,000-node bench storm, each a TCP retransmission for a
/// node. The device's sockets must take a burst of several MiB.
#[test]
fn userspace_device_sockets_take_a_storm_burst() {
    require_root_and_tools();
    let mut lab = Lab::new("k");
    let ns = lab.netns("a");
    let name = lab.ifname("s");
    let ns2 = ns.clone();
    in_netns(&ns, move || {
        runtime().block_on(async move {
            let setup = InterfaceSetup {
                addresses: vec![net("100.64.0.1/16")],
                listen_port: Some(51820),
                ..InterfaceSetup::default()
            };
            let dev = open_device(&name, BackendChoice::Userspace, &setup).await.expect("open userspace device");
            // `ss -m` shows each socket's receive buffer as `rb<bytes>`.
            let sockets = run(&["ip", "netns", "exec", &ns2, "ss", "-uamnH", "sport", "=", ":51820"]);
            let buffers: Vec<u64> = sockets
                .split("rb")
                .skip(1)
                .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                .collect();
            assert_eq!(buffers.len(), 1, "one socket for IPv4 and IPv6: {sockets}");
            assert!(buffers.iter().all(|&b| b >= 4 << 20), "receive buffers {buffers:?}: {sockets}");
            dev.close().await.expect("close");
        })
    });
}
