//! ferry's userspace device under a boot storm, a handshake flood and a peer lying
//! about its address, and driven by the standard tools. The nodes are real WireGuard
//! peers made with boringtun's Noise state machine, sending real UDP to the device.
//! Needs root, `wg` and `wireguard-go` (missing ones fail the test, they never skip it).

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use common::{in_netns, require_root_and_tools, run, Lab};
use ferry_wg::userspace::UserspaceDevice;
use ferry_wg::{DeviceUpdate, InterfaceSetup, PeerConfig, PrivateKey, PublicKey, WgDevice};

const PORT: u16 = 51820;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn net(s: &str) -> ferry_wg::IpNet {
    s.parse().expect("test network")
}

async fn device(name: &str, key: &PrivateKey) -> UserspaceDevice {
    let setup = InterfaceSetup {
        addresses: vec![net("100.64.0.1/16")],
        private_key: Some(key.clone()),
        listen_port: Some(PORT),
        ..InterfaceSetup::default()
    };
    UserspaceDevice::create(name, &setup).await.expect("create the userspace device")
}

fn node_address(i: usize) -> String {
    format!("100.64.{}.{}", 1 + i / 250, 1 + i % 250)
}

/// A simulated node: a WireGuard peer with its own UDP socket.
struct Node {
    tunn: Tunn,
    sock: UdpSocket,
    buf: Vec<u8>,
}

impl Node {
    fn new(key: &PrivateKey, server: PublicKey, index: u32, source: Ipv4Addr) -> Node {
        let secret = boringtun::x25519::StaticSecret::from(*key.as_bytes());
        let tunn = Tunn::new(secret, boringtun::x25519::PublicKey::from(server.0), None, None, index, None);
        let sock = UdpSocket::bind((source, 0)).expect("node socket");
        sock.connect(("127.0.0.1", PORT)).expect("connect to the device");
        sock.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        Node { tunn, sock, buf: vec![0; 2048] }
    }

    /// Sends a handshake initiation (a new one if `again`).
    fn initiate(&mut self, again: bool) {
        match self.tunn.format_handshake_initiation(&mut self.buf, again) {
            TunnResult::WriteToNetwork(init) => {
                self.sock.send(init).expect("send initiation");
            }
            other => panic!("no initiation: {other:?}"),
        }
    }

    /// Receives one datagram and hands it to the Noise state; returns its message
    /// type (2 response, 3 cookie reply, 4 data). A keepalive that completes the
    /// handshake is sent back.
    fn receive(&mut self) -> u8 {
        let mut datagram = [0u8; 2048];
        let n = self.sock.recv(&mut datagram).expect("an answer from the device");
        if let TunnResult::WriteToNetwork(reply) = self.tunn.decapsulate(None, &datagram[..n], &mut self.buf) {
            self.sock.send(reply).expect("send");
        }
        datagram[0]
    }

    /// Handshakes, answering a cookie reply at once with a second initiation (a real
    /// node waits 5 s for its retransmission).
    fn handshake(&mut self) -> u32 {
        let mut cookies = 0;
        self.initiate(false);
        loop {
            match self.receive() {
                2 => return cookies,
                3 => {
                    cookies += 1;
                    self.initiate(true);
                }
                other => panic!("unexpected message type {other} during the handshake"),
            }
        }
    }

    fn send_packet(&mut self, packet: &[u8]) {
        match self.tunn.encapsulate(packet, &mut self.buf) {
            TunnResult::WriteToNetwork(d) => {
                self.sock.send(d).expect("send data");
            }
            other => panic!("no session to send with: {other:?}"),
        }
    }
}

/// A boot storm's nodes handshake at once: more than boringtun's device allowed per
/// second before demanding cookies (100), far less than a loaded device's queue.
#[test]
fn a_storm_sized_burst_of_handshakes_gets_no_cookies() {
    require_root_and_tools();
    let mut lab = Lab::new("s");
    let ns = lab.netns("a");
    let name = lab.ifname("s");
    in_netns(&ns, move || {
        runtime().block_on(async move {
            let server = PrivateKey::generate();
            let dev = device(&name, &server).await;
            const NODES: usize = 250;
            let keys: Vec<PrivateKey> = (0..NODES).map(|_| PrivateKey::generate()).collect();
            let peers = keys
                .iter()
                .enumerate()
                .map(|(i, k)| PeerConfig::new(k.public_key()).allowed_ip(net(&format!("{}/32", node_address(i)))));
            dev.apply(DeviceUpdate::new().add_peers(peers)).await.expect("add peers");
            let mut nodes: Vec<Node> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| Node::new(k, server.public_key(), i as u32 + 1, Ipv4Addr::new(127, 0, 1, 1 + i as u8)))
                .collect();
            let started = Instant::now();
            for node in &mut nodes {
                node.initiate(false);
            }
            let cookies: usize = nodes.iter_mut().map(|n| usize::from(n.receive() == 3)).sum();
            println!("{NODES} handshakes in {:?}, {cookies} cookie replies", started.elapsed());
            assert_eq!(cookies, 0, "a burst of {NODES} handshakes is not an attack: no cookies");
            let counters = dev.handshake_counters();
            assert_eq!((counters.handshakes, counters.cookie_replies), (NODES as u64, 0), "{counters:?}");
            assert_eq!(counters.sessions_created, NODES as u64, "one Noise state per node that handshook");
            Box::new(dev).close().await.expect("close");
        })
    });
}

/// An attacker floods the device with handshake initiations (valid MAC1: the server's
/// public key is no secret) from one address, far more than one handshake thread can
/// take. Once under load the device answers them with cookie replies instead of
/// Diffie-Hellman work, and a real node (which answers the cookie) still gets in.
#[test]
fn a_handshake_flood_gets_cookies_and_a_real_node_still_gets_in() {
    require_root_and_tools();
    let mut lab = Lab::new("f");
    let ns = lab.netns("a");
    let name = lab.ifname("s");
    in_netns(&ns, move || {
        runtime().block_on(async move {
            let server = PrivateKey::generate();
            let dev = device(&name, &server).await;
            let node_key = PrivateKey::generate();
            dev.apply(
                DeviceUpdate::new().add_peer(PeerConfig::new(node_key.public_key()).allowed_ip(net("100.64.0.2/32"))),
            )
            .await
            .expect("add the node");
            // The attacker's initiation (its key is no peer's), replayed: each copy costs
            // the device a Diffie-Hellman to find out who sent it, unless it is under load.
            let mut attacker = Node::new(&PrivateKey::generate(), server.public_key(), 99, Ipv4Addr::new(127, 0, 9, 9));
            let initiation = match attacker.tunn.format_handshake_initiation(&mut attacker.buf, false) {
                TunnResult::WriteToNetwork(i) => i.to_vec(),
                other => panic!("no initiation: {other:?}"),
            };
            let stop = Arc::new(AtomicBool::new(false));
            let (sent, cookies) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let flood = {
                let (stop, sent) = (stop.clone(), sent.clone());
                let sock = attacker.sock.try_clone().expect("socket");
                std::thread::spawn(move || {
                    // ~5,000 initiations a second: several times what the handshake thread
                    // takes (in a debug build), not more than the receiving thread takes.
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..50 {
                            let _ = sock.send(&initiation);
                        }
                        sent.fetch_add(50, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            };
            let listener = {
                let (stop, cookies) = (stop.clone(), cookies.clone());
                let sock = attacker.sock.try_clone().expect("socket");
                sock.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
                std::thread::spawn(move || {
                    let mut buf = [0u8; 256];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(n) = sock.recv(&mut buf) {
                            if n == 64 && buf[0] == 3 {
                                cookies.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            while cookies.load(Ordering::Relaxed) == 0 {
                assert!(Instant::now() < deadline, "the flood never put the device under load");
                std::thread::sleep(Duration::from_millis(20));
            }
            // Under load now: the real node gets a cookie, answers it, and gets in.
            let mut node = Node::new(&node_key, server.public_key(), 1, Ipv4Addr::new(127, 0, 1, 1));
            let node_cookies = tokio::task::spawn_blocking(move || node.handshake()).await.expect("node");
            std::thread::sleep(Duration::from_millis(500)); // more flood while under load
            stop.store(true, Ordering::Relaxed);
            flood.join().expect("flood");
            listener.join().expect("listener");
            let counters = dev.handshake_counters();
            let sent = sent.load(Ordering::Relaxed);
            println!("flood: {sent} initiations sent, {counters:?}, the node got {node_cookies} cookie(s)");
            assert_eq!(counters.handshakes, 1, "the real node handshook: {counters:?}");
            assert!(node_cookies >= 1, "under load the node too must prove its address");
            // What the flood cost: most initiations were answered with a cookie (a MAC
            // and an XChaCha20 seal), not with a Diffie-Hellman.
            assert!(counters.cookie_replies > 0);
            assert!(
                counters.initiations_processed < sent / 2,
                "{} of {sent} flood initiations got the Diffie-Hellman work",
                counters.initiations_processed
            );
            Box::new(dev).close().await.expect("close");
        })
    });
}

/// An IPv4 header and UDP datagram (checksum 0: none, allowed over IPv4).
fn ipv4_udp(source: [u8; 4], destination: [u8; 4], port: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&source);
    p[16..20].copy_from_slice(&destination);
    let sum: u32 = p[..20].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    p[10..12].copy_from_slice(&(!((folded & 0xffff) + (folded >> 16)) as u16).to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&port.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// WireGuard's cryptokey routing, on which ferry's "the tunnel address is the node's
/// identity" rests: a peer's packets are delivered only if they come from its own
/// allowed IPs, never from another node's tunnel address.
#[test]
fn a_peer_cannot_send_from_another_nodes_address() {
    require_root_and_tools();
    let mut lab = Lab::new("c");
    let ns = lab.netns("a");
    let name = lab.ifname("s");
    in_netns(&ns, move || {
        runtime().block_on(async move {
            let server = PrivateKey::generate();
            let dev = device(&name, &server).await;
            let (liar, victim) = (PrivateKey::generate(), PrivateKey::generate());
            dev.apply(
                DeviceUpdate::new()
                    .add_peer(PeerConfig::new(liar.public_key()).allowed_ip(net("100.64.0.2/32")))
                    .add_peer(PeerConfig::new(victim.public_key()).allowed_ip(net("100.64.0.3/32"))),
            )
            .await
            .expect("add peers");
            let datasource = UdpSocket::bind("100.64.0.1:7000").expect("bind on the tunnel address");
            datasource.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
            let mut node = Node::new(&liar, server.public_key(), 1, Ipv4Addr::new(127, 0, 1, 1));
            assert_eq!(node.handshake(), 0);
            // First a packet claiming the victim's address, then an honest one.
            node.send_packet(&ipv4_udp([100, 64, 0, 3], [100, 64, 0, 1], 7000, b"spoofed"));
            node.send_packet(&ipv4_udp([100, 64, 0, 2], [100, 64, 0, 1], 7000, b"genuine"));
            let mut buf = [0u8; 64];
            let (n, from) = datasource.recv_from(&mut buf).expect("the honest packet arrives");
            assert_eq!((&buf[..n], from), (&b"genuine"[..], "100.64.0.2:40000".parse::<SocketAddr>().expect("addr")));
            Box::new(dev).close().await.expect("close");
        })
    });
}

/// `wg show` and `wg set` on the device, as on any WireGuard interface; a change the
/// device refuses changes nothing.
#[test]
fn wg_show_and_wg_set_work_on_the_device() {
    require_root_and_tools();
    let mut lab = Lab::new("w");
    let ns = lab.netns("a");
    let name = lab.ifname("s");
    let ns2 = ns.clone();
    let peer_key = PrivateKey::generate().public_key();
    let new_key = PrivateKey::generate();
    let keyfile = lab.secret_file("new.key", &new_key.to_base64());
    in_netns(&ns, move || {
        runtime().block_on(async move {
            let server = PrivateKey::generate();
            let dev = device(&name, &server).await;
            let wg = |args: &[&str]| {
                let mut all = vec!["ip", "netns", "exec", &ns2, "wg"];
                all.extend_from_slice(args);
                run(&all)
            };
            let b64 = peer_key.to_base64();
            wg(&["set", &name, "peer", &b64, "allowed-ips", "100.64.0.9/32,fd00::9/128"]);
            wg(&["set", &name, "peer", &b64, "endpoint", "198.18.0.9:51821", "persistent-keepalive", "25"]);
            let st = dev.status().await.expect("status");
            let p = st.peer(&peer_key).expect("added by wg set");
            assert_eq!(p.allowed_ips, vec![net("100.64.0.9/32"), net("fd00::9/128")], "kept by the second wg set");
            assert_eq!(
                (p.endpoint, p.persistent_keepalive),
                (Some("198.18.0.9:51821".parse().expect("addr")), Some(25))
            );
            assert_eq!(wg(&["show", &name, "public-key"]).trim(), server.public_key().to_base64());
            assert_eq!(wg(&["show", &name, "listen-port"]).trim(), PORT.to_string());
            let dump = wg(&["show", &name, "dump"]);
            let line = dump.lines().nth(1).expect("one peer line");
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields[0], b64);
            assert_eq!(fields[2], "198.18.0.9:51821");
            assert_eq!(fields[3], "100.64.0.9/32,fd00::9/128");
            assert_eq!(fields[4], "0", "never handshook");
            assert_eq!(fields[7], "25");
            // A port in use: refused, and nothing changed.
            let taken = UdpSocket::bind("0.0.0.0:51998").expect("take a port");
            let mut all = vec!["ip", "netns", "exec", &ns2, "wg", "set", &name, "listen-port", "51998"];
            all.extend_from_slice(&["peer", &b64, "remove"]);
            let out = std::process::Command::new(all[0]).args(&all[1..]).output().expect("wg");
            assert!(!out.status.success(), "the device must refuse a port in use");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("in use"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let st = dev.status().await.expect("status");
            assert_eq!(st.listen_port, Some(PORT));
            assert!(st.peer(&peer_key).is_some(), "the refused request removed nothing");
            drop(taken);
            // A new port, a new key, the peer removed.
            wg(&["set", &name, "listen-port", "51999", "private-key", keyfile.to_str().expect("path")]);
            wg(&["set", &name, "peer", &b64, "remove"]);
            let st = dev.status().await.expect("status");
            assert_eq!((st.listen_port, st.public_key, st.peers.len()), (Some(51999), Some(new_key.public_key()), 0));
            let sockets = run(&["ip", "netns", "exec", &ns2, "ss", "-uanH"]);
            assert!(sockets.contains(":51999") && !sockets.contains(&format!(":{PORT}")), "{sockets}");
            Box::new(dev).close().await.expect("close");
        })
    });
}

/// A device dropped without `close` (an error path, a panic) still takes its
/// interface and socket away.
#[test]
fn a_dropped_device_leaves_nothing_behind() {
    require_root_and_tools();
    let mut lab = Lab::new("d");
    let ns = lab.netns("a");
    let name = lab.ifname("s");
    let ns2 = ns.clone();
    in_netns(&ns, move || {
        runtime().block_on(async move {
            let dev = device(&name, &PrivateKey::generate()).await;
            assert!(run(&["ip", "-n", &ns2, "-o", "link", "show"]).contains(&name));
            drop(dev);
            let deadline = Instant::now() + Duration::from_secs(10);
            while run(&["ip", "-n", &ns2, "-o", "link", "show"]).contains(&name) {
                assert!(Instant::now() < deadline, "interface {name} left behind");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(!ferry_wg::uapi::socket_path(&name).exists(), "socket left behind");
        })
    });
}
