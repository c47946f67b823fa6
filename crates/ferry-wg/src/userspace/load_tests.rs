use super::*;
use boringtun::noise::{Packet, Tunn, TunnResult};

fn job() -> Job {
    Job::new(&[1u8; MAX_HANDSHAKE], "198.18.0.2:51820".parse().expect("addr")).expect("fits")
}

#[test]
fn under_load_only_from_a_deep_queue_and_for_a_second_after() {
    let q = HandshakeQueue::default();
    let t0 = Instant::now();
    for _ in 0..UNDER_LOAD_DEPTH - 1 {
        assert!(q.push(job()));
    }
    // A storm's worth of waiting handshakes is not "load".
    assert!(!q.under_load(t0));
    assert!(q.push(job()));
    assert!(q.under_load(t0));
    // Drained: still under load for UNDER_LOAD_FOR, then not.
    while q.len() > 0 {
        q.pop().expect("job");
    }
    assert!(q.under_load(t0 + UNDER_LOAD_FOR - Duration::from_millis(1)));
    assert!(!q.under_load(t0 + UNDER_LOAD_FOR));
}

#[test]
fn the_queue_is_bounded_and_closing_wakes_the_consumer() {
    let q = Arc::new(HandshakeQueue::default());
    for _ in 0..QUEUE_CAPACITY {
        assert!(q.push(job()));
    }
    assert!(!q.push(job()), "full: dropped");
    assert!(Job::new(&[0u8; MAX_HANDSHAKE + 1], "198.18.0.2:1".parse().expect("addr")).is_none());
    while q.len() > 0 {
        q.pop().expect("job");
    }
    let consumer = {
        let q = q.clone();
        std::thread::spawn(move || q.pop().is_none())
    };
    std::thread::sleep(Duration::from_millis(20));
    q.close();
    assert!(consumer.join().expect("join"), "closed: the consumer gets None");
    assert!(!q.push(job()), "closed: nothing more is queued");
}

#[test]
fn a_source_gets_a_burst_then_its_rate() {
    let t0 = Instant::now();
    let mut limiter = SourceLimiter::new(t0);
    let a: IpAddr = "198.18.0.2".parse().expect("ip");
    let b: IpAddr = "198.18.0.3".parse().expect("ip");
    let allowed = (0..20).filter(|_| limiter.allow(a, t0)).count();
    assert_eq!(allowed as u64, PER_SOURCE_BURST);
    assert!(limiter.allow(b, t0), "another source has its own bucket");
    // One more per 1/PER_SOURCE_PER_SECOND seconds.
    let step = Duration::from_nanos(COST);
    assert!(limiter.allow(a, t0 + step));
    assert!(!limiter.allow(a, t0 + step));
    assert!(limiter.allow(a, t0 + step * 2));
    // Over a long flood: the rate, not more.
    let mut t = t0 + step * 2;
    let mut passed = 0;
    for _ in 0..10_000 {
        t += Duration::from_micros(100); // 10,000 per second offered for 1 s
        passed += usize::from(limiter.allow(a, t));
    }
    assert!(passed as u64 <= PER_SOURCE_PER_SECOND + 1, "{passed} passed in one second");
    // Idle sources are forgotten.
    let later = t + Duration::from_secs(2);
    assert!(limiter.allow("198.18.0.9".parse().expect("ip"), later));
    assert_eq!(limiter.tracked(), 1);
}

/// Under load an initiation without a cookie gets a cookie reply; the initiator's next
/// initiation carries the cookie (MAC2) and passes. Not under load, MAC1 is enough.
#[test]
fn cookies_are_demanded_under_load_only_and_then_accepted() {
    let server_secret = x25519::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let server_public = x25519::PublicKey::from(&server_secret);
    let keys = Keys::new(server_secret);
    let node = x25519::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let mut tunn = Tunn::new(node, server_public, None, None, 7, None);
    let from: IpAddr = "198.18.0.2".parse().expect("ip");
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = tunn.format_handshake_initiation(&mut buf, false) else {
        panic!("no initiation")
    };
    let init = init.to_vec();
    assert!(matches!(keys.lenient.verify_packet(Some(from), &init, &mut out), Ok(Packet::HandshakeInit(_))));
    let cookie = match keys.strict.verify_packet(Some(from), &init, &mut out) {
        Err(TunnResult::WriteToNetwork(cookie)) => cookie.to_vec(),
        _ => panic!("under load, an initiation without a cookie must get a cookie reply"),
    };
    assert!(matches!(tunn.decapsulate(None, &cookie, &mut buf), TunnResult::Done), "the node stores the cookie");
    let TunnResult::WriteToNetwork(again) = tunn.format_handshake_initiation(&mut buf, true) else {
        panic!("no second initiation")
    };
    let again = again.to_vec();
    assert!(matches!(keys.strict.verify_packet(Some(from), &again, &mut out), Ok(Packet::HandshakeInit(_))));
    // The cookie is bound to the source address.
    let elsewhere: IpAddr = "198.18.0.3".parse().expect("ip");
    assert!(matches!(keys.strict.verify_packet(Some(elsewhere), &again, &mut out), Err(TunnResult::WriteToNetwork(_))));
    // A message for another server's key fails MAC1, loaded or not: dropped, no reply.
    let other = x25519::PublicKey::from(&x25519::StaticSecret::random_from_rng(rand::rngs::OsRng));
    let mut stranger = Tunn::new(x25519::StaticSecret::random_from_rng(rand::rngs::OsRng), other, None, None, 8, None);
    let TunnResult::WriteToNetwork(wrong) = stranger.format_handshake_initiation(&mut buf, false) else {
        panic!("no initiation")
    };
    let wrong = wrong.to_vec();
    assert!(matches!(keys.lenient.verify_packet(Some(from), &wrong, &mut out), Err(TunnResult::Err(_))));
    assert!(matches!(keys.strict.verify_packet(Some(from), &wrong, &mut out), Err(TunnResult::Err(_))));
}
