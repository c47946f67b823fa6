//! The agent's one retry policy, and the deadlines that bound it.
//!
//! Every retry loop of the agent (enrollment, the datasource probe, the document
//! fetches, phone-home, MAC discovery, re-enrollment after a lost server) waits through
//! a [`RetryPolicy`]: doubling delays from an initial one up to a maximum, each drawn
//! from [d/2, d] ("equal jitter") so that a boot storm of hundreds of nodes does not
//! retry in lockstep; a server's `Retry-After`, when it sent one, instead of the
//! back-off (with up to 10 %, at most 1 s, added); and never a wait that would end
//! after the loop's [`Deadline`] — such a loop gives up at once with its last error.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// How one retry loop waits between attempts (see the module's documentation).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    next: Duration,
    max: Duration,
}

impl RetryPolicy {
    /// Delays doubling from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        RetryPolicy { next: initial, max: max.max(initial) }
    }

    /// The next back-off delay, jittered; doubles the following one.
    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        jitter(d)
    }

    /// The delay before the next attempt: the server's Retry-After when it gave one,
    /// else the back-off.
    pub fn delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let backoff = self.next_delay();
        match retry_after {
            Some(r) => r + rand_upto((r / 10).min(Duration::from_secs(1))),
            None => backoff,
        }
    }

    /// Waits [`RetryPolicy::delay`] if that ends before `deadline`; false, at once and
    /// without waiting, if it would not (the loop gives up).
    pub async fn wait(&mut self, retry_after: Option<Duration>, deadline: &Deadline) -> bool {
        let wait = self.delay(retry_after);
        deadline.sleep_within(wait).await
    }
}

/// A delay drawn uniformly from [d/2, d].
pub fn jitter(d: Duration) -> Duration {
    d / 2 + rand_upto(d / 2)
}

fn rand_upto(d: Duration) -> Duration {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
}

/// The point in time by which the agent must be done (enrolled, fetched).
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    pub fn after(total: Duration) -> Self {
        Deadline { at: Instant::now() + total, total }
    }
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
    pub fn total(&self) -> Duration {
        self.total
    }
    /// `limit`, shortened so it ends by the deadline.
    pub fn cap(&self, limit: Duration) -> Duration {
        limit.min(self.remaining())
    }
    /// Sleeps `wait` if that ends before the deadline; false (without sleeping) if not.
    pub async fn sleep_within(&self, wait: Duration) -> bool {
        if wait >= self.remaining() {
            return false;
        }
        tokio::time::sleep(wait).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_and_are_capped() {
        let mut b = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(8));
        let bounds = [(500, 1000), (1000, 2000), (2000, 4000), (4000, 8000), (4000, 8000)];
        for (lo, hi) in bounds {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(lo) && d <= Duration::from_millis(hi), "{d:?} not in {lo}..{hi} ms");
        }
    }

    #[test]
    fn retry_after_is_honoured() {
        let mut b = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(10));
        let d = b.delay(Some(Duration::from_secs(20)));
        assert!(d >= Duration::from_secs(20) && d <= Duration::from_secs(21), "{d:?}");
        assert_eq!(b.delay(Some(Duration::ZERO)), Duration::ZERO);
        assert!(b.delay(None) <= Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_refuses_sleeps_past_it() {
        let d = Deadline::after(Duration::from_secs(10));
        assert!(d.sleep_within(Duration::from_secs(4)).await);
        assert!(!d.sleep_within(Duration::from_secs(7)).await, "would end after the deadline");
        assert_eq!(d.cap(Duration::from_secs(60)), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_past_the_deadline_gives_up_at_once() {
        let d = Deadline::after(Duration::from_secs(10));
        let mut p = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(10));
        let began = Instant::now();
        assert!(p.wait(Some(Duration::from_secs(3)), &d).await);
        assert!(began.elapsed() >= Duration::from_secs(3), "honoured");
        assert!(!p.wait(Some(Duration::from_secs(60)), &d).await, "would end after the deadline");
        assert!(began.elapsed() < Duration::from_secs(4), "and was not waited for");
        assert!(p.wait(None, &d).await, "the back-off fits");
    }
}
