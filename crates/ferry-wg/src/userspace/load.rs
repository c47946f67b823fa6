//! Denial-of-service defences of the userspace device: handshakes wait in a bounded
//! queue for one handshake thread, the device is "under load" while that queue is deep,
//! and only then does it demand cookies (and limit handshakes per source address).
//!
//! This is how the kernel's WireGuard decides (its queue of incoming handshakes, under
//! load from 1/8 full and for a second after), not boringtun's device, which counts
//! handshake messages and demands cookies from the 101st in a second: a rack powering on
//! then pays WireGuard's 5 s retransmission per node beyond the first 100 each second.
//! Here a boot storm passes without cookies as long as the handshake thread keeps up,
//! and an attacker flooding initiations gets at most that one thread's worth of
//! Diffie-Hellman work: beyond it, initiations without a valid cookie (which proves the
//! sender receives at its source address) cost a MAC check and a cookie reply.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;

/// Handshake messages that may wait for the handshake thread; beyond, they are dropped.
pub(crate) const QUEUE_CAPACITY: usize = 4096;
/// From this depth on the device is under load (the kernel's threshold: 1/8 of its
/// queue). At ~0.2 ms of Diffie-Hellman per handshake it is ~0.1 s of backlog.
pub(crate) const UNDER_LOAD_DEPTH: usize = QUEUE_CAPACITY / 8;
/// How long the device stays under load after the queue was last that deep.
pub(crate) const UNDER_LOAD_FOR: Duration = Duration::from_secs(1);
/// Handshakes per second one source address may have processed while under load, and
/// how many it may send at once (the kernel's figures).
const PER_SOURCE_PER_SECOND: u64 = 20;
const PER_SOURCE_BURST: u64 = 5;
/// Source addresses tracked at once; beyond, new ones are refused while under load.
const MAX_SOURCES: usize = 1 << 16;
/// The largest handshake message (an initiation).
pub(crate) const MAX_HANDSHAKE: usize = 148;

/// The device's key and the two MAC checkers made from it.
pub(crate) struct Keys {
    pub(crate) private: x25519::StaticSecret,
    pub(crate) public: x25519::PublicKey,
    /// Checks MAC1 and demands a valid cookie MAC2 (a limit of 0 means "always under
    /// load"): used while the device is under load.
    pub(crate) strict: RateLimiter,
    /// Checks MAC1 only (a limit never reached): used otherwise, and by every peer's
    /// Noise state (which checks again when it takes the message).
    pub(crate) lenient: Arc<RateLimiter>,
}

impl Keys {
    pub(crate) fn new(private: x25519::StaticSecret) -> Keys {
        let public = x25519::PublicKey::from(&private);
        Keys {
            strict: RateLimiter::new(&public, 0),
            lenient: Arc::new(RateLimiter::new(&public, u64::MAX)),
            private,
            public,
        }
    }
}

/// One handshake message and where it came from.
pub(crate) struct Job {
    pub(crate) from: SocketAddr,
    len: usize,
    data: [u8; MAX_HANDSHAKE],
}

impl Job {
    /// `None` if `datagram` is longer than any handshake message.
    pub(crate) fn new(datagram: &[u8], from: SocketAddr) -> Option<Job> {
        let mut data = [0u8; MAX_HANDSHAKE];
        data.get_mut(..datagram.len())?.copy_from_slice(datagram);
        Some(Job { from, len: datagram.len(), data })
    }

    pub(crate) fn datagram(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// What the defences did, for `wg`-independent inspection (tests, logs, the bench).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Handshake initiations the handshake thread took (one Diffie-Hellman each to
    /// find the sender, whether it is a peer or not).
    pub(crate) initiations_processed: AtomicU64,
    /// Handshake initiations answered with a handshake response.
    pub(crate) handshakes: AtomicU64,
    /// Cookie replies sent (under load, no valid cookie).
    pub(crate) cookie_replies: AtomicU64,
    /// Handshake messages dropped: queue full, over the per-source rate, bad MAC.
    pub(crate) dropped: AtomicU64,
    /// Noise states created (each costs one Diffie-Hellman with the peer's key).
    pub(crate) sessions_created: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The bounded queue between the UDP receiver and the handshake thread.
#[derive(Default)]
pub(crate) struct HandshakeQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
    /// When the queue was last at least [`UNDER_LOAD_DEPTH`] deep.
    deep_at: Option<Instant>,
}

impl HandshakeQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the device is under load at `now`.
    pub(crate) fn under_load(&self, now: Instant) -> bool {
        let mut s = self.lock();
        if s.jobs.len() >= UNDER_LOAD_DEPTH {
            s.deep_at = Some(now);
        }
        s.deep_at.is_some_and(|t| now.saturating_duration_since(t) < UNDER_LOAD_FOR)
    }

    /// Queues a job; false if the queue is full or closed (the job is dropped).
    pub(crate) fn push(&self, job: Job) -> bool {
        let mut s = self.lock();
        if s.closed || s.jobs.len() >= QUEUE_CAPACITY {
            return false;
        }
        s.jobs.push_back(job);
        drop(s);
        self.ready.notify_one();
        true
    }

    /// The next job; blocks while the queue is empty; `None` once closed.
    pub(crate) fn pop(&self) -> Option<Job> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            if let Some(job) = s.jobs.pop_front() {
                return Some(job);
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Wakes the handshake thread for good; queued jobs are dropped.
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.jobs.clear();
        drop(s);
        self.ready.notify_all();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().jobs.len()
    }
}

/// Token buckets per source address, for handshakes while under load. Used by the one
/// UDP receiving thread only.
pub(crate) struct SourceLimiter {
    buckets: HashMap<IpAddr, Bucket>,
    last_sweep: Instant,
}

struct Bucket {
    /// Nanoseconds of budget; a handshake costs one second / [`PER_SOURCE_PER_SECOND`].
    tokens: u64,
    last: Instant,
}

const COST: u64 = 1_000_000_000 / PER_SOURCE_PER_SECOND;
const FULL: u64 = COST * PER_SOURCE_BURST;

impl SourceLimiter {
    pub(crate) fn new(now: Instant) -> SourceLimiter {
        SourceLimiter { buckets: HashMap::new(), last_sweep: now }
    }

    /// Whether `source` may have one more handshake processed at `now`.
    pub(crate) fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if now.saturating_duration_since(self.last_sweep) >= Duration::from_secs(1) {
            self.sweep(now);
        }
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            return false;
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket { tokens: FULL, last: now });
        let elapsed = now.saturating_duration_since(bucket.last).as_nanos().min(u128::from(FULL)) as u64;
        bucket.tokens = (bucket.tokens + elapsed).min(FULL);
        bucket.last = now;
        if bucket.tokens < COST {
            return false;
        }
        bucket.tokens -= COST;
        true
    }

    /// Forgets sources whose bucket has refilled (they are as good as new).
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        self.buckets.retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(1));
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
