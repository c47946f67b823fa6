//! Single-use enrollment nonces, held in memory: a nonce is only good for the server
//! that issued it, for a short time, once. A nonce may carry the state of one step
//! between challenge and enrollment (the TPM credential challenge): it lives and dies
//! with the nonce, so it is bounded by the same cap and TTL.
//!
//! No caller can crowd the others out of the table:
//! - each source ([`crate::client_addr::source_group`]: an IPv4 address, an IPv6 /64)
//!   holds at most `per_source` nonces at once; beyond that it is refused
//!   ([`NonceError::SourceFull`]) until one of its nonces is used or expires;
//! - a full table drops its *oldest* nonce to make room, instead of refusing everyone
//!   until nonces expire. Nonces are issued no faster than the enrollment rate limits
//!   admit challenges, so a nonce lives at least `capacity / that rate` (65,536 / 2,500
//!   per second ≈ 26 s with the defaults) even under a flood — far longer than an
//!   enrollment takes.

use rand::RngCore;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Least time between two log lines about dropped nonces.
const EVICTION_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct NonceStore<T = ()> {
    ttl: Duration,
    capacity: usize,
    per_source: usize,
    table: Mutex<Table<T>>,
}

struct Table<T> {
    pending: HashMap<[u8; 32], Entry<T>>,
    /// Nonces in the order they were issued, which is the order they expire in (one TTL
    /// for all). Nonces already taken are skipped when they reach the front.
    order: VecDeque<[u8; 32]>,
    /// Outstanding nonces per source group.
    by_source: HashMap<IpAddr, usize>,
    /// Nonces dropped to make room, since start; and when that was last logged.
    evicted: u64,
    evictions_logged_at: Option<Instant>,
}

struct Entry<T> {
    expiry: Instant,
    source: IpAddr,
    attached: Option<T>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum NonceError {
    /// This source already holds its share of outstanding nonces: retry shortly.
    SourceFull,
    /// Not issued here, used or expired.
    Unknown,
    /// This nonce already carries its step's state.
    AlreadyAttached,
}

impl<T> Table<T> {
    fn remove(&mut self, nonce: &[u8; 32]) -> Option<Entry<T>> {
        let e = self.pending.remove(nonce)?;
        if let Some(n) = self.by_source.get_mut(&e.source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&e.source);
            }
        }
        Some(e)
    }

    /// Drops expired nonces (and taken ones) from the front of the queue.
    fn expire(&mut self, now: Instant) {
        while let Some(front) = self.order.front().copied() {
            match self.pending.get(&front) {
                Some(e) if e.expiry > now => break,
                Some(_) => {
                    self.remove(&front);
                }
                None => {}
            }
            self.order.pop_front();
        }
    }

    /// Drops the oldest outstanding nonce.
    fn evict_oldest(&mut self) {
        while let Some(front) = self.order.pop_front() {
            if self.remove(&front).is_some() {
                self.evicted += 1;
                return;
            }
        }
    }
}

impl<T> NonceStore<T> {
    /// At most `capacity` nonces, `per_source` of them for one source group.
    pub fn new(ttl: Duration, capacity: usize, per_source: usize) -> Self {
        NonceStore {
            ttl,
            capacity: capacity.max(1),
            per_source: per_source.max(1),
            table: Mutex::new(Table {
                pending: HashMap::new(),
                order: VecDeque::new(),
                by_source: HashMap::new(),
                evicted: 0,
                evictions_logged_at: None,
            }),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table<T>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh nonce for `source` (a [`crate::client_addr::source_group`]).
    pub fn issue(&self, source: IpAddr) -> Result<[u8; 32], NonceError> {
        let mut nonce = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let now = Instant::now();
        let mut t = self.lock();
        t.expire(now);
        if t.by_source.get(&source).is_some_and(|n| *n >= self.per_source) {
            return Err(NonceError::SourceFull);
        }
        let evicted_before = t.evicted;
        while t.pending.len() >= self.capacity {
            t.evict_oldest();
        }
        if t.evicted > evicted_before && t.evictions_logged_at.is_none_or(|at| at.elapsed() >= EVICTION_LOG_EVERY) {
            t.evictions_logged_at = Some(now);
            tracing::warn!(
                capacity = self.capacity,
                evicted_total = t.evicted,
                "the enrollment nonce table is full (a flood of challenges from many sources?); the oldest \
                 outstanding nonces are dropped to make room (logged at most every 10 s)"
            );
        }
        t.pending.insert(nonce, Entry { expiry: now + self.ttl, source, attached: None });
        t.order.push_back(nonce);
        *t.by_source.entry(source).or_insert(0) += 1;
        // Taken nonces linger in `order` until they reach its front; keep it bounded
        // when nonces are issued much faster than they expire.
        if t.order.len() > 2 * self.capacity + 1024 {
            let Table { order, pending, .. } = &mut *t;
            order.retain(|k| pending.contains_key(k));
        }
        Ok(nonce)
    }

    /// Whether `source` already holds its share of outstanding nonces (a challenge from
    /// it would be refused).
    pub fn source_full(&self, source: IpAddr) -> bool {
        let mut t = self.lock();
        t.expire(Instant::now());
        t.by_source.get(&source).is_some_and(|n| *n >= self.per_source)
    }

    /// Attaches state to a live nonce, once.
    pub fn attach(&self, nonce: &[u8; 32], state: T) -> Result<(), NonceError> {
        let mut t = self.lock();
        match t.pending.get_mut(nonce) {
            Some(e) if e.expiry > Instant::now() => match e.attached {
                Some(_) => Err(NonceError::AlreadyAttached),
                None => {
                    e.attached = Some(state);
                    Ok(())
                }
            },
            _ => Err(NonceError::Unknown),
        }
    }

    /// Whether a nonce was issued here, is unused and has not expired.
    pub fn is_live(&self, nonce: &[u8; 32]) -> bool {
        let t = self.lock();
        matches!(t.pending.get(nonce), Some(e) if e.expiry > Instant::now())
    }

    /// Consumes a nonce: `Some(attached state)` once, if it was issued here and has not
    /// expired.
    pub fn take(&self, nonce: &[u8]) -> Option<Option<T>> {
        let key = <[u8; 32]>::try_from(nonce).ok()?;
        let mut t = self.lock();
        match t.remove(&key) {
            Some(e) if e.expiry > Instant::now() => Some(e.attached),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn single_use_and_expiring() {
        let s = NonceStore::<()>::new(Duration::from_secs(60), 10, 10);
        let a = s.issue(ip(1)).unwrap();
        assert!(s.take(&a).is_some());
        assert!(s.take(&a).is_none(), "single use");
        assert!(s.take(&[0u8; 32]).is_none(), "never issued");
        assert!(s.take(&a[..16]).is_none(), "wrong length");
        let short = NonceStore::<()>::new(Duration::from_millis(1), 10, 10);
        let b = short.issue(ip(1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!short.is_live(&b));
        assert!(short.take(&b).is_none(), "expired");
    }

    #[test]
    fn a_source_holds_at_most_its_share_and_gets_it_back_as_nonces_are_used_or_expire() {
        let s = NonceStore::<()>::new(Duration::from_millis(200), 1000, 3);
        let mine: Vec<_> = (0..3).map(|_| s.issue(ip(1)).unwrap()).collect();
        assert_eq!(s.issue(ip(1)), Err(NonceError::SourceFull));
        assert!(s.source_full(ip(1)));
        assert!(s.issue(ip(2)).is_ok(), "another source is not affected");
        assert!(s.take(&mine[0]).is_some());
        assert!(!s.source_full(ip(1)), "a used nonce frees its slot");
        s.issue(ip(1)).unwrap();
        assert_eq!(s.issue(ip(1)), Err(NonceError::SourceFull));
        std::thread::sleep(Duration::from_millis(250));
        assert!(s.issue(ip(1)).is_ok(), "expired nonces free their slots");
    }

    #[test]
    fn a_full_table_drops_its_oldest_nonce_instead_of_refusing() {
        let s = NonceStore::<()>::new(Duration::from_secs(60), 4, 2);
        // A flood from many sources fills the table.
        let flood: Vec<_> = (0..4).map(|i| s.issue(ip(100 + i)).unwrap()).collect();
        // A node still gets a nonce; the oldest of the flood's went.
        let node = s.issue(ip(1)).unwrap();
        assert!(!s.is_live(&flood[0]), "the oldest was dropped");
        assert!(flood[1..].iter().all(|n| s.is_live(n)));
        assert!(s.take(&node).is_some(), "and the node's nonce works");
        // The dropped nonce's source got its slot back.
        s.issue(ip(100)).unwrap();
        s.issue(ip(100)).unwrap();
        assert_eq!(s.issue(ip(100)), Err(NonceError::SourceFull));
    }

    #[test]
    fn the_issue_order_queue_stays_bounded_when_nonces_are_taken_at_once() {
        let s = NonceStore::<()>::new(Duration::from_secs(60), 10, 10);
        for i in 0..100_000 {
            let n = s.issue(ip(i % 7)).unwrap();
            assert!(s.take(&n).is_some());
        }
        let t = s.lock();
        assert!(t.order.len() <= 2 * 10 + 1024 + 1, "{}", t.order.len());
        assert!(t.pending.is_empty() && t.by_source.is_empty());
    }

    #[test]
    fn attached_state_lives_and_dies_with_its_nonce() {
        let s = NonceStore::<u32>::new(Duration::from_secs(60), 10, 10);
        let a = s.issue(ip(1)).unwrap();
        assert!(s.is_live(&a));
        s.attach(&a, 7).unwrap();
        assert_eq!(s.attach(&a, 8), Err(NonceError::AlreadyAttached), "once per nonce");
        assert_eq!(s.attach(&[1; 32], 8), Err(NonceError::Unknown));
        assert_eq!(s.take(&a), Some(Some(7)));
        assert_eq!(s.attach(&a, 9), Err(NonceError::Unknown), "consumed");
        let b = s.issue(ip(1)).unwrap();
        assert_eq!(s.take(&b), Some(None));
    }
}
