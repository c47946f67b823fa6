//! The userspace device's threads (see the module docs of `userspace`).
//!
//! Each loop looks a peer up under the table's read lock, clones its `Arc` and lets the
//! lock go before taking the peer's own lock; packets are written to TUN or UDP after
//! the peer's lock is released where they can be (the decrypted or encrypted bytes are
//! in the thread's own buffer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use super::load::{Counters, Job, SourceLimiter};
use super::tun::Read;
use super::udp::{Batch, Udp};
use super::{Shared, TIMER_TICK};
use crate::keys::PublicKey;

/// Room for any packet and its WireGuard overhead.
const BUFFER: usize = (1 << 16) + 64;

/// `wg-udp`: datagrams from peers.
pub(super) fn udp_loop(shared: Arc<Shared>) {
    let mut batch = Batch::new();
    let mut out = vec![0u8; BUFFER];
    let mut sources = SourceLimiter::new(Instant::now());
    loop {
        let udp = shared.udp();
        let received = batch.receive(&udp);
        if shared.stopping() {
            return;
        }
        if let Err(e) = received {
            tracing::warn!(interface = %shared.name, error = %e, "receiving from the WireGuard socket failed");
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        for i in 0..batch.len() {
            let (datagram, from) = batch.get(i);
            if let Some(from) = from {
                datagram_from(&shared, &udp, datagram, from, &mut out, &mut sources);
            }
        }
    }
}

fn datagram_from(
    shared: &Shared,
    udp: &Udp,
    datagram: &[u8],
    from: SocketAddr,
    out: &mut [u8],
    sources: &mut SourceLimiter,
) {
    let receiver = match Tunn::parse_incoming_packet(datagram) {
        Ok(Packet::PacketData(p)) => p.receiver_idx,
        Ok(_) => return handshake_from(shared, udp, datagram, from, out, sources),
        Err(_) => return,
    };
    let Some(peer) = shared.peers().by_receiver(receiver).cloned() else { return };
    let mut st = peer.lock();
    let Some(tunn) = st.existing_tunn() else { return };
    let (packet, source) = match tunn.decapsulate(None, datagram, out) {
        TunnResult::WriteToTunnelV4(p, source) => (p, source.into()),
        TunnResult::WriteToTunnelV6(p, source) => (p, source.into()),
        // A keepalive: authenticated, nothing to deliver.
        TunnResult::Done => {
            st.endpoint = Some(from);
            return;
        }
        TunnResult::WriteToNetwork(_) | TunnResult::Err(_) => return,
    };
    // Authenticated: the peer is where this came from (WireGuard's roaming).
    st.endpoint = Some(from);
    // Cryptokey routing: a peer's packets come only from its own allowed IPs.
    let allowed = st.allows(source);
    drop(st);
    if allowed {
        shared.tun.write(packet);
    }
}

/// Handshake messages: MAC checks (and cookies under load) here, the Diffie-Hellman
/// work on the handshake thread.
fn handshake_from(
    shared: &Shared,
    udp: &Udp,
    datagram: &[u8],
    from: SocketAddr,
    out: &mut [u8],
    sources: &mut SourceLimiter,
) {
    let Some(keys) = shared.keys() else { return };
    let now = Instant::now();
    let under_load = shared.queue.under_load(now);
    let checker = if under_load { &keys.strict } else { &*keys.lenient };
    let is_handshake = match checker.verify_packet(Some(from.ip()), datagram, out) {
        Ok(Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)) => true,
        Ok(_) => false,
        Err(TunnResult::WriteToNetwork(cookie)) => {
            Counters::bump(&shared.counters.cookie_replies);
            udp.send_to(cookie, from);
            return;
        }
        Err(_) => {
            Counters::bump(&shared.counters.dropped);
            return;
        }
    };
    if under_load && is_handshake && !sources.allow(from.ip(), now) {
        Counters::bump(&shared.counters.dropped);
        return;
    }
    if !Job::new(datagram, from).is_some_and(|job| shared.queue.push(job)) {
        Counters::bump(&shared.counters.dropped);
    }
}

/// `wg-hs`: handshake messages, one at a time.
pub(super) fn handshake_loop(shared: Arc<Shared>) {
    let mut out = vec![0u8; BUFFER];
    while let Some(job) = shared.queue.pop() {
        let udp = shared.udp();
        handshake(&shared, &udp, &job, &mut out);
    }
}

fn handshake(shared: &Shared, udp: &Udp, job: &Job, out: &mut [u8]) {
    let Some(keys) = shared.keys() else { return };
    let Ok(packet) = Tunn::parse_incoming_packet(job.datagram()) else { return };
    let peer = match &packet {
        Packet::HandshakeInit(init) => {
            // Which peer: its static key is inside, encrypted to ours.
            Counters::bump(&shared.counters.initiations_processed);
            let Ok(half) = parse_handshake_anon(&keys.private, &keys.public, init) else {
                Counters::bump(&shared.counters.dropped);
                return;
            };
            shared.peers().by_key(&PublicKey(half.peer_static_public)).cloned()
        }
        Packet::HandshakeResponse(p) => shared.peers().by_receiver(p.receiver_idx).cloned(),
        Packet::PacketCookieReply(p) => shared.peers().by_receiver(p.receiver_idx).cloned(),
        Packet::PacketData(_) => None,
    };
    let Some(peer) = peer else { return };
    let initiation = matches!(packet, Packet::HandshakeInit(_));
    let mut st = peer.lock();
    let Some(tunn) = st.tunn(&peer, Some(&keys), &shared.counters.sessions_created) else { return };
    match tunn.decapsulate(Some(job.from.ip()), job.datagram(), out) {
        TunnResult::WriteToNetwork(reply) => {
            // Counted before the reply leaves, so a peer that has its answer sees it counted.
            if initiation {
                Counters::bump(&shared.counters.handshakes);
            }
            udp.send_to(reply, job.from);
            // Packets that waited for the session.
            while let TunnResult::WriteToNetwork(queued) = tunn.decapsulate(None, &[], out) {
                udp.send_to(queued, job.from);
            }
            st.endpoint = Some(job.from);
        }
        TunnResult::Done => {} // a cookie reply, stored for our next initiation
        TunnResult::Err(_) | TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
    }
}

/// `wg-tun`: packets from the kernel to peers.
pub(super) fn tun_loop(shared: Arc<Shared>) {
    let mut packet = vec![0u8; BUFFER];
    let mut out = vec![0u8; BUFFER];
    loop {
        let n = match shared.tun.read(&mut packet) {
            Ok(Read::Packet(n)) => n,
            Ok(Read::Gone) => break,
            Err(e) => {
                tracing::error!(interface = %shared.name, error = %e, "reading the TUN interface failed");
                break;
            }
        };
        let packet = &packet[..n];
        let Some(destination) = Tunn::dst_address(packet) else { continue };
        let Some(peer) = shared.peers().route(destination).cloned() else { continue };
        let mut st = peer.lock();
        // No endpoint yet (a node that has not handshaken): nowhere to send.
        let Some(endpoint) = st.endpoint else { continue };
        // The keys are needed only to create the peer's Noise state (its first packet).
        let keys = if st.existing_tunn().is_some() { None } else { shared.keys() };
        let Some(tunn) = st.tunn(&peer, keys.as_deref(), &shared.counters.sessions_created) else { continue };
        if let TunnResult::WriteToNetwork(datagram) = tunn.encapsulate(packet, &mut out) {
            drop(st);
            shared.udp().send_to(datagram, endpoint);
        }
    }
    if !shared.stopping() {
        tracing::warn!(interface = %shared.name, "the interface was deleted: the WireGuard device stops");
    }
}

/// `wg-timers`: WireGuard's timers for every peer with a session, then the teardown.
pub(super) fn timer_loop(shared: Arc<Shared>) {
    let mut out = vec![0u8; BUFFER];
    loop {
        {
            let guard = shared.timer_wake.0.lock().unwrap_or_else(|p| p.into_inner());
            if !shared.stopping() {
                let _ = shared.timer_wake.1.wait_timeout(guard, TIMER_TICK);
            }
        }
        if shared.stopping() {
            super::teardown(&shared.name);
            return;
        }
        let udp = shared.udp();
        for peer in shared.peers().iter() {
            let mut st = peer.lock();
            let Some(endpoint) = st.endpoint else { continue };
            let Some(tunn) = st.existing_tunn() else { continue };
            match tunn.update_timers(&mut out) {
                TunnResult::WriteToNetwork(datagram) => udp.send_to(datagram, endpoint),
                TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => {}
                TunnResult::Err(e) => tracing::debug!(error = ?e, "WireGuard timer"),
                TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
            }
        }
    }
}
