use super::*;
use crate::uapi::proto::parse_get_reply;
use std::time::SystemTime;

fn hex(b: u8) -> String {
    format!("{b:02x}").repeat(32)
}

/// What `wg setconf` / `wg set` send (wireguard-tools' ipc-uapi.h).
#[test]
fn parses_what_wg_sends() {
    let body = format!(
        "private_key={}\nlisten_port=51820\nfwmark=7\nreplace_peers=true\n\
         public_key={}\npreshared_key={}\nendpoint=198.18.0.2:51821\npersistent_keepalive_interval=25\n\
         replace_allowed_ips=true\nallowed_ip=100.64.0.2/32\nallowed_ip=fd00::2/128\n\
         public_key={}\nremove=true\n\
         public_key={}\nupdate_only=true\nendpoint=[2001:db8::1]:51820\nprotocol_version=1\n\n",
        hex(1),
        hex(0x11),
        hex(0x42),
        hex(0x22),
        hex(0x33)
    );
    let patch = parse_set(&body).expect("valid request");
    assert_eq!(patch.private_key.as_ref().map(|k| k.public_key()), Some(PrivateKey::from_bytes([1; 32]).public_key()));
    assert_eq!((patch.listen_port, patch.fwmark, patch.replace_peers), (Some(51820), Some(7), true));
    assert_eq!(patch.peers.len(), 3);
    let a = &patch.peers[0];
    assert_eq!(a.public_key, PublicKey([0x11; 32]));
    assert_eq!(a.preshared_key, Some(Some(Zeroizing::new([0x42; 32]))));
    assert_eq!(a.endpoint, Some("198.18.0.2:51821".parse().expect("addr")));
    assert_eq!((a.keepalive, a.replace_allowed_ips, a.remove), (Some(25), true, false));
    assert_eq!(a.allowed_ips, vec!["100.64.0.2/32".parse().expect("net"), "fd00::2/128".parse().expect("net")]);
    assert!(patch.peers[1].remove);
    assert!(patch.peers[2].update_only);
    // A zero preshared key removes it.
    let cleared = parse_set(&format!("public_key={}\npreshared_key={}\n\n", hex(1), hex(0))).expect("valid");
    assert_eq!(cleared.peers[0].preshared_key, Some(None));
}

#[test]
fn bad_requests_are_refused_whole() {
    let peer = format!("public_key={}\n", hex(0x11));
    for (body, errno) in [
        ("listen_port=70000\n".to_string(), libc::EINVAL),
        ("private_key=zz\n".to_string(), libc::EINVAL),
        (format!("private_key={}\n", hex(0)), libc::EINVAL),
        ("allowed_ip=10.0.0.0/8\n".to_string(), libc::EINVAL), // a peer key outside a peer section
        ("no equals sign\n".to_string(), libc::EINVAL),
        ("public_key=short\n".to_string(), libc::EINVAL),
        (format!("{peer}allowed_ip=10.0.0.0/33\n"), libc::EINVAL),
        (format!("{peer}endpoint=nowhere\n"), libc::EINVAL),
        (format!("{peer}remove=yes\n"), libc::EINVAL),
        (format!("{peer}persistent_keepalive_interval=-1\n"), libc::EINVAL),
        (format!("{peer}protocol_version=2\n"), libc::EPROTO),
        (format!("{peer}unknown_key=1\n"), libc::EINVAL),
    ] {
        assert_eq!(parse_set(&body).err(), Some(errno), "{body:?}");
    }
    // Arbitrary bytes never panic (a cheap deterministic fuzz).
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..3000 {
        let mut s = String::new();
        for _ in 0..(x % 120) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            s.push(b"=\n0123456789abcdef_ptkyrlvnoie/.:[]%-"[(x % 37) as usize] as char);
        }
        let _ = parse_set(&s);
    }
}

/// Our `get` reply reads back as written, through the client parser (the one ferry
/// uses on wireguard-go): what `wg show` reads.
#[test]
fn get_replies_read_back() {
    let handshake = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
    let mut a = PeerStatus::new(PublicKey([0x11; 32]));
    a.allowed_ips = vec!["100.64.0.2/32".parse().expect("net")];
    a.endpoint = Some("198.18.0.2:51821".parse().expect("addr"));
    a.last_handshake = Some(handshake);
    a.rx_bytes = 10;
    a.tx_bytes = 20;
    a.persistent_keepalive = Some(25);
    let b = PeerStatus::new(PublicKey([0x22; 32]));
    let secret = [1u8; 32];
    let device = Device { private_key: Some(&secret), listen_port: 51820, fwmark: 0 };
    let reply = format_get(&device, &[(a.clone(), Some(Zeroizing::new([5; 32]))), (b.clone(), None)]);
    assert!(reply.ends_with("errno=0\n\n"));
    assert!(reply.contains(&format!("preshared_key={}\n", hex(5))));
    let st = parse_get_reply(&reply).expect("our reply parses");
    assert_eq!(st.public_key, Some(PrivateKey::from_bytes(secret).public_key()));
    assert_eq!(st.listen_port, Some(51820));
    assert_eq!(st.peers, vec![a, b]);
    assert!(st.peers[0].last_handshake.is_some_and(|t| t < SystemTime::now()));
}
