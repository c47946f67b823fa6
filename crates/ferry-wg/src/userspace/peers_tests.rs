use super::*;
use crate::keys::PrivateKey;
use std::sync::atomic::{AtomicU64, Ordering};

fn net(s: &str) -> IpNet {
    s.parse().expect("test network")
}

fn add(table: &mut PeerTable, key: PublicKey, nets: &[&str]) {
    let patch = PeerPatch {
        replace_allowed_ips: true,
        keepalive: Some(0),
        allowed_ips: nets.iter().map(|n| net(n)).collect(),
        ..PeerPatch::new(key)
    };
    table.apply(&patch);
}

fn keys() -> Keys {
    Keys::new(x25519::StaticSecret::from(*PrivateKey::generate().as_bytes()))
}

#[test]
fn an_added_peer_has_no_noise_state_until_it_is_used() {
    let mut table = PeerTable::default();
    let created = AtomicU64::new(0);
    let ks: Vec<PublicKey> = (0..1000).map(|_| PrivateKey::generate().public_key()).collect();
    for (i, k) in ks.iter().enumerate() {
        add(&mut table, *k, &[&format!("100.64.{}.{}/32", 1 + i / 250, 1 + i % 250)]);
    }
    assert_eq!(table.iter().count(), 1000);
    assert!(table.iter().all(|p| p.lock().existing_tunn().is_none()), "no Diffie-Hellman when adding peers");
    // The first use creates it, once.
    let keys = keys();
    let peer = table.by_key(&ks[7]).expect("peer").clone();
    assert!(peer.lock().tunn(&peer, Some(&keys), &created).is_some());
    assert!(peer.lock().tunn(&peer, Some(&keys), &created).is_some());
    assert_eq!(created.load(Ordering::Relaxed), 1);
    // Without a device key nothing can be created (and nothing panics).
    let other = table.by_key(&ks[8]).expect("peer").clone();
    assert!(other.lock().tunn(&other, None, &created).is_none());
    // What an idle peer costs, besides its map entries: far below boringtun's ~17 KiB.
    assert!(std::mem::size_of::<Peer>() <= 256, "{} bytes", std::mem::size_of::<Peer>());
    println!("idle peer {} bytes; Noise state {} bytes", std::mem::size_of::<Peer>(), std::mem::size_of::<Tunn>());
}

#[test]
fn receiver_indexes_are_24_bit_unique_and_found() {
    let mut table = PeerTable::default();
    for _ in 0..2000 {
        add(&mut table, PrivateKey::generate().public_key(), &[]);
    }
    let mut seen = std::collections::HashSet::new();
    for peer in table.iter() {
        assert!(peer.index != 0 && peer.index <= INDEX_MASK);
        assert!(seen.insert(peer.index));
        // boringtun's session indexes keep the peer's index in the upper 24 bits
        let found = table.by_receiver((peer.index << 8) | 0x5a).expect("by receiver index");
        assert!(Arc::ptr_eq(found, peer));
    }
}

#[test]
fn routes_take_the_longest_prefix_and_an_allowed_ip_has_one_owner() {
    let mut table = PeerTable::default();
    let (a, b, c) = (PublicKey([1; 32]), PublicKey([2; 32]), PublicKey([3; 32]));
    add(&mut table, a, &["100.64.0.0/16"]);
    add(&mut table, b, &["100.64.0.7/32", "fd00::7/128"]);
    add(&mut table, c, &["100.64.1.0/24", "fd00::/64"]);
    let owner = |t: &PeerTable, ip: &str| t.route(ip.parse().expect("ip")).map(|p| p.public_key);
    assert_eq!(owner(&table, "100.64.0.7"), Some(b));
    assert_eq!(owner(&table, "100.64.1.9"), Some(c));
    assert_eq!(owner(&table, "100.64.2.9"), Some(a));
    assert_eq!(owner(&table, "fd00::7"), Some(b));
    assert_eq!(owner(&table, "fd00::8"), Some(c));
    assert_eq!(owner(&table, "10.0.0.1"), None);
    // Host bits are cleared.
    add(&mut table, c, &["10.9.9.9/8"]);
    assert_eq!(table.by_key(&c).expect("c").lock().allowed_ips, vec![net("10.0.0.0/8")]);
    assert_eq!(owner(&table, "100.64.1.9"), Some(a), "replaced, so c's /24 is gone");
    // Moving an allowed IP takes it from its former owner.
    add(&mut table, c, &["100.64.0.7/32"]);
    assert_eq!(owner(&table, "100.64.0.7"), Some(c));
    assert_eq!(table.by_key(&b).expect("b").lock().allowed_ips, vec![net("fd00::7/128")]);
    // A source is allowed only within the peer's own allowed IPs.
    let st = table.by_key(&c).expect("c").lock().allows("100.64.0.7".parse().expect("ip"));
    assert!(st);
    assert!(!table.by_key(&b).expect("b").lock().allows("100.64.0.7".parse().expect("ip")));
    // Adding without replacing keeps what is there.
    let more = PeerPatch { allowed_ips: vec![net("100.64.9.9/32")], ..PeerPatch::new(b) };
    table.apply(&more);
    assert_eq!(table.by_key(&b).expect("b").lock().allowed_ips.len(), 2);
    // Removal clears every route of the peer.
    table.remove(&c);
    assert_eq!(owner(&table, "100.64.0.7"), Some(a));
    assert_eq!(owner(&table, "10.1.1.1"), None);
    assert!(table.by_key(&c).is_none());
}

#[test]
fn updates_keep_the_session_unless_its_parameters_change() {
    let mut table = PeerTable::default();
    let created = AtomicU64::new(0);
    let keys = keys();
    let k = PrivateKey::generate().public_key();
    add(&mut table, k, &["100.64.0.2/32"]);
    let peer = table.by_key(&k).expect("peer").clone();
    assert!(peer.lock().tunn(&peer, Some(&keys), &created).is_some());
    // Same keepalive, new endpoint and allowed IPs: the session stays.
    let endpoint: SocketAddr = "198.18.0.2:51820".parse().expect("addr");
    table.apply(&PeerPatch { endpoint: Some(endpoint), ..PeerPatch::new(k) });
    add(&mut table, k, &["100.64.0.3/32"]);
    assert!(peer.lock().existing_tunn().is_some());
    assert_eq!(peer.lock().endpoint, Some(endpoint));
    // A new keepalive or preshared key needs a new Noise state.
    table.apply(&PeerPatch { keepalive: Some(25), ..PeerPatch::new(k) });
    assert!(peer.lock().existing_tunn().is_none());
    assert_eq!(peer.status().persistent_keepalive, Some(25));
    assert!(peer.lock().tunn(&peer, Some(&keys), &created).is_some());
    table.apply(&PeerPatch { preshared_key: Some(Some(Zeroizing::new([9; 32]))), ..PeerPatch::new(k) });
    assert!(peer.lock().existing_tunn().is_none());
    // update_only never creates a peer.
    let stranger = PrivateKey::generate().public_key();
    table.apply(&PeerPatch { update_only: true, ..PeerPatch::new(stranger) });
    assert!(table.by_key(&stranger).is_none());
    // A removed peer's state is gone and cannot come back through an old reference.
    table.remove(&k);
    assert!(peer.lock().tunn(&peer, Some(&keys), &created).is_none());
    assert!(peer.lock().allowed_ips.is_empty());
}

#[test]
fn retain_and_reset_sessions() {
    let mut table = PeerTable::default();
    let created = AtomicU64::new(0);
    let keys = keys();
    let ks: Vec<PublicKey> = (0..5).map(|_| PrivateKey::generate().public_key()).collect();
    for k in &ks {
        add(&mut table, *k, &[]);
        let peer = table.by_key(k).expect("peer").clone();
        assert!(peer.lock().tunn(&peer, Some(&keys), &created).is_some());
    }
    table.reset_sessions();
    assert!(table.iter().all(|p| p.lock().existing_tunn().is_none()));
    table.retain(|k| *k == ks[0] || *k == ks[3]);
    let mut left: Vec<PublicKey> = table.iter().map(|p| p.public_key).collect();
    left.sort();
    let mut want = vec![ks[0], ks[3]];
    want.sort();
    assert_eq!(left, want);
}
