use super::*;
use crate::config::PeerConfig;

fn key(b: u8) -> PublicKey {
    PublicKey([b; 32])
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test network")
}

#[test]
fn batched_set_request_standard() {
    let private = PrivateKey::from_bytes([1; 32]);
    let update = DeviceUpdate::new()
        .private_key(private)
        .listen_port(51820)
        .remove_peer(key(0xaa))
        .add_peer(PeerConfig::new(key(0x11)).allowed_ip(net("100.64.0.2/32")))
        .add_peer(
            PeerConfig::new(key(0x22))
                .allowed_ip(net("100.64.0.3/32"))
                .allowed_ip(net("fd00::3/128"))
                .endpoint("[2001:db8::1]:51820".parse().expect("addr"))
                .persistent_keepalive(25),
        );
    let req = set_request(&update);
    let expected = format!(
        "set=1\nprivate_key={}\nlisten_port=51820\n\
         public_key={}\nremove=true\n\
         public_key={}\nreplace_allowed_ips=true\npersistent_keepalive_interval=0\nallowed_ip=100.64.0.2/32\n\
         public_key={}\nreplace_allowed_ips=true\npersistent_keepalive_interval=25\n\
         endpoint=[2001:db8::1]:51820\nallowed_ip=100.64.0.3/32\nallowed_ip=fd00::3/128\n\n",
        "01".repeat(32),
        "aa".repeat(32),
        "11".repeat(32),
        "22".repeat(32),
    );
    assert_eq!(req.as_str(), expected);
}

#[test]
fn set_request_is_one_request_for_many_peers() {
    let update = DeviceUpdate::new().replace_peers(true).add_peers((0..1000u16).map(|i| {
        let mut k = [0u8; 32];
        k[..2].copy_from_slice(&i.to_be_bytes());
        PeerConfig::new(PublicKey(k)).allowed_ip(net(&format!("100.64.{}.{}/32", i / 256, i % 256)))
    }));
    let req = set_request(&update);
    assert!(req.starts_with("set=1\nreplace_peers=true\n"));
    assert_eq!(req.matches("set=1").count(), 1);
    assert_eq!(req.matches("public_key=").count(), 1000);
    assert_eq!(req.matches("allowed_ip=").count(), 1000);
    // exactly one blank line: the terminator
    assert_eq!(req.matches("\n\n").count(), 1);
    assert!(req.ends_with("allowed_ip=100.64.3.231/32\n\n"));
}

#[test]
fn host_bits_are_cleared() {
    let update = DeviceUpdate::new().add_peer(PeerConfig::new(key(1)).allowed_ip(net("10.1.2.3/16")));
    let req = set_request(&update);
    assert!(req.contains("allowed_ip=10.1.0.0/16\n"), "{}", req.as_str());
}

const PRIV_HEX: &str = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
const PEER_HEX: &str = "b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33";

fn good_reply() -> String {
    format!(
        "private_key={PRIV_HEX}\nlisten_port=12912\n\
         public_key={PEER_HEX}\npreshared_key={}\nprotocol_version=1\n\
         endpoint=[abcd:23::33%2]:51820\nlast_handshake_time_sec=1700000000\n\
         last_handshake_time_nsec=5\ntx_bytes=38333\nrx_bytes=2224\n\
         persistent_keepalive_interval=0\nallowed_ip=192.168.4.4/32\n\
         public_key={}\nendpoint=182.122.22.19:3233\npersistent_keepalive_interval=111\n\
         allowed_ip=192.168.4.6/32\nallowed_ip=fd00::/64\nlast_handshake_time_sec=0\n\
         last_handshake_time_nsec=0\nrx_bytes=0\ntx_bytes=0\nerrno=0\n\n",
        "00".repeat(32),
        "58".repeat(32),
    )
}

#[test]
fn parses_good_reply() {
    let st = parse_get_reply(&good_reply()).expect("good reply");
    let own = PrivateKey::from_hex(PRIV_HEX).expect("hex").public_key();
    assert_eq!(st.public_key, Some(own));
    assert_eq!(st.listen_port, Some(12912));
    assert_eq!(st.peers.len(), 2);
    let a = &st.peers[0];
    assert_eq!(a.public_key, PublicKey::from_hex(PEER_HEX).expect("hex"));
    assert_eq!(a.endpoint, "[abcd:23::33%2]:51820".parse().ok(), "numeric zone");
    assert_eq!(a.tx_bytes, 38333);
    assert_eq!(a.rx_bytes, 2224);
    assert_eq!(a.allowed_ips, vec![net("192.168.4.4/32")]);
    assert_eq!(a.last_handshake, Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5)));
    assert_eq!(a.persistent_keepalive, None);
    let b = &st.peers[1];
    assert_eq!(b.endpoint, Some("182.122.22.19:3233".parse().expect("addr")));
    assert_eq!(b.persistent_keepalive, Some(111));
    assert_eq!(b.allowed_ips, vec![net("192.168.4.6/32"), net("fd00::/64")]);
    assert_eq!(b.last_handshake, None);
    // a named zone has no SocketAddr form: unknown endpoint, not a failed status
    let named = good_reply().replace("%2]", "%eth0]");
    let st = parse_get_reply(&named).expect("named zone");
    assert_eq!(st.peers[0].endpoint, None);
}

#[test]
fn parses_empty_device_and_ignores_unknown_device_lines() {
    let st = parse_get_reply("errno=0\n\n").expect("empty");
    assert_eq!(st, DeviceStatus::default());
    let reply = format!(
        "own_public_key={PEER_HEX}\nlisten_port=0\nfwmark=3\npublic_key={PEER_HEX}\n\
         last_handshake_time_sec=10\nlast_handshake_time_nsec=0\nrx_bytes=1\ntx_bytes=2\nerrno=0\n\n"
    );
    let st = parse_get_reply(&reply).expect("reply");
    assert_eq!(st.public_key, None, "a device key comes from private_key only");
    assert_eq!(st.listen_port, None);
    assert_eq!(st.peers[0].last_handshake, Some(UNIX_EPOCH + Duration::from_secs(10)));
}

#[test]
fn truncated_replies_are_errors() {
    let good = good_reply();
    // every prefix that stops before the errno line is truncated or malformed, never Ok
    // and never a panic; cut on char boundaries and also mid-line
    let errno_at = good.find("errno=").expect("errno");
    for cut in 0..errno_at {
        let r = parse_get_reply(&good[..cut]);
        assert!(r.is_err(), "prefix of {cut} bytes parsed as Ok");
    }
    assert_eq!(parse_get_reply("listen_port=1\n"), Err(ReplyError::Truncated));
    assert_eq!(parse_get_reply(""), Err(ReplyError::Truncated));
    assert_eq!(parse_set_reply(""), Err(ReplyError::Truncated));
}

#[test]
fn garbage_is_malformed_not_panic() {
    let cases = [
        "hello world\nerrno=0\n\n",
        "listen_port=99999\nerrno=0\n\n",
        "listen_port=-1\nerrno=0\n\n",
        "public_key=zz\nerrno=0\n\n",
        "private_key=1234\nerrno=0\n\n",
        "\nerrno=0\n\n",
        "errno=abc\n\n",
    ];
    for case in cases {
        assert!(matches!(parse_get_reply(case), Err(ReplyError::Malformed(_))), "{case:?}");
    }
    let bad_peer = [
        "allowed_ip=300.1.1.1/32",
        "allowed_ip=10.0.0.1/33",
        "rx_bytes=18446744073709551616",
        "tx_bytes=1.5",
        "last_handshake_time_nsec=1000000000",
        "persistent_keepalive_interval=65536",
    ];
    for line in bad_peer {
        let reply = format!("public_key={PEER_HEX}\n{line}\nerrno=0\n\n");
        assert!(matches!(parse_get_reply(&reply), Err(ReplyError::Malformed(_))), "{line}");
    }
    // the private key never appears in an error message
    let reply = format!("private_key={}zz\nerrno=0\n\n", &PRIV_HEX[..62]);
    let Err(ReplyError::Malformed(msg)) = parse_get_reply(&reply) else {
        panic!("expected malformed");
    };
    assert!(!msg.contains(&PRIV_HEX[..20]), "{msg}");
    // long garbage is clipped in messages
    let long = format!("{}\nerrno=0\n", "x".repeat(10_000));
    let Err(ReplyError::Malformed(msg)) = parse_get_reply(&long) else {
        panic!("expected malformed");
    };
    assert!(msg.len() < 200);
    // arbitrary bytes never panic (a cheap deterministic fuzz)
    let mut x: u32 = 0x1234_5678;
    for _ in 0..2000 {
        let mut s = String::new();
        for _ in 0..(x % 80) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            s.push(b"=\n0123456789abcdef_xyz/.:[]%-"[(x % 29) as usize] as char);
        }
        let _ = parse_get_reply(&s);
        let _ = parse_set_reply(&s);
    }
}

#[test]
fn errno_is_reported() {
    assert_eq!(parse_get_reply("errno=22\n\n"), Err(ReplyError::Errno(22)));
    assert_eq!(parse_get_reply("listen_port=5\nerrno=-5\n\n"), Err(ReplyError::Errno(-5)));
    assert_eq!(parse_set_reply("errno=0\n\n"), Ok(()));
    assert_eq!(parse_set_reply("errno=98\n\n"), Err(ReplyError::Errno(98)));
    assert!(matches!(parse_set_reply("nonsense\n"), Err(ReplyError::Malformed(_))));
}
