//! The asset-tag boot gate's defence against guessing. The gate (`--boot-asset-gate`)
//! is Warewulf compatibility: iPXE sends the node's SMBIOS asset tag in clear in the
//! artifact URL, and the server compares it. Without a bound, that comparison answers
//! "right or wrong" for any guess, and the tag is also the key of the node's asset-tag
//! enrollment proof. So: guesses go through the enrollment rate limits first (`boot`),
//! and after `max_failures` wrong tags for one node within `lockout` its gate locks for
//! `lockout` — every request is refused, the right tag too, so a lock tells a guesser
//! nothing.
//!
//! The state is per server and in memory (a restart clears it); it holds gated nodes
//! that were guessed at, which the inventory bounds.

use ferry_core::NodeName;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries beyond which finished windows and locks are swept on the next failure.
const SWEEP_ABOVE: usize = 4_096;

pub struct GateGuard {
    max_failures: u32,
    lockout: Duration,
    nodes: Mutex<HashMap<NodeName, Failures>>,
}

struct Failures {
    /// When the latest wrong tags came, within the last `lockout`, oldest first.
    recent: VecDeque<Instant>,
    locked_until: Option<Instant>,
}

/// A wrong tag, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Wrong tags for this node within the last `lockout`, this one included.
    pub count: u32,
    /// This failure locked the node's gate.
    pub locked: bool,
}

impl GateGuard {
    /// From validated settings (`boot_gate_max_failures`, `boot_gate_lockout_secs`:
    /// [`crate::Config::validate`]).
    pub fn new(max_failures: u32, lockout_secs: u64) -> GateGuard {
        GateGuard { max_failures, lockout: Duration::from_secs(lockout_secs), nodes: Mutex::new(HashMap::new()) }
    }

    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    pub fn lockout(&self) -> Duration {
        self.lockout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeName, Failures>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the node's gate stays locked, if it is locked at `now`.
    pub fn locked(&self, node: &NodeName, now: Instant) -> Option<Duration> {
        let nodes = self.lock();
        nodes.get(node)?.locked_until.filter(|until| *until > now).map(|until| until - now)
    }

    /// Records a wrong tag for `node` at `now`. `max_failures` of them within any
    /// `lockout` lock the gate (a lock is not extended by failures during it).
    pub fn failed(&self, node: &NodeName, now: Instant) -> Failure {
        let lockout = self.lockout;
        let mut nodes = self.lock();
        if nodes.len() > SWEEP_ABOVE {
            nodes.retain(|_, f| {
                f.locked_until.is_some_and(|u| u > now)
                    || f.recent.back().is_some_and(|t| now.duration_since(*t) < lockout)
            });
        }
        let f = nodes.entry(node.clone()).or_insert(Failures { recent: VecDeque::new(), locked_until: None });
        while f.recent.front().is_some_and(|t| now.duration_since(*t) >= lockout) {
            f.recent.pop_front();
        }
        if f.locked_until.is_some_and(|u| u > now) {
            return Failure { count: f.recent.len() as u32, locked: false };
        }
        f.recent.push_back(now);
        let count = f.recent.len() as u32;
        let locked = count >= self.max_failures;
        if locked {
            // Counting starts again when the lock ends.
            f.locked_until = Some(now + lockout);
            f.recent.clear();
        }
        Failure { count, locked }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::parse(s).unwrap()
    }

    #[test]
    fn n_wrong_tags_within_the_window_lock_the_node_for_the_lockout() {
        let g = GateGuard::new(3, 60);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(g.failed(&n("a"), t0), Failure { count: 1, locked: false });
        assert_eq!(g.failed(&n("a"), t0 + s(10)), Failure { count: 2, locked: false });
        assert_eq!(g.failed(&n("b"), t0 + s(10)), Failure { count: 1, locked: false }, "per node");
        assert_eq!(g.locked(&n("a"), t0 + s(20)), None);
        assert_eq!(g.failed(&n("a"), t0 + s(20)), Failure { count: 3, locked: true });
        assert_eq!(g.locked(&n("a"), t0 + s(30)), Some(s(50)));
        assert_eq!(g.locked(&n("b"), t0 + s(30)), None, "another node is not locked");
        // Failures during the lock do not extend it.
        g.failed(&n("a"), t0 + s(70));
        assert_eq!(g.locked(&n("a"), t0 + s(79)), Some(s(1)));
        assert_eq!(g.locked(&n("a"), t0 + s(80)), None, "the lock passes");
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_lock() {
        let g = GateGuard::new(3, 60);
        let t0 = Instant::now();
        for i in 0..10 {
            let f = g.failed(&n("a"), t0 + Duration::from_secs(31 * i));
            assert!(!f.locked && f.count <= 2, "{i}: {f:?}");
        }
        // Any 60 s holding 3 does: no window boundary to hide behind.
        let g = GateGuard::new(3, 60);
        g.failed(&n("a"), t0 + Duration::from_secs(59));
        g.failed(&n("a"), t0 + Duration::from_secs(60));
        assert!(g.failed(&n("a"), t0 + Duration::from_secs(61)).locked);
        // The bounds of both settings moved to `config::validate` (its tests).
    }
}
