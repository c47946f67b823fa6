//! The server's background chores (reconcile, heartbeat, audit pruning) all run the
//! same way: once at start, then every period until the server stops.

use std::future::Future;
use std::time::Duration;

/// Runs `chore` at once and then every `period` until `stopped`. A run that overruns
/// its period delays the next one instead of bunching them up; a run in progress is
/// not cut short by `stopped` (the next one just never starts).
pub async fn every<F, Fut>(period: Duration, stopped: impl Future<Output = ()>, mut chore: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => chore().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The first run is at once, later ones a period apart, and none after the stop.
    #[tokio::test(start_paused = true)]
    async fn runs_at_once_then_every_period_until_stopped() {
        let runs = AtomicU32::new(0);
        let stopped = tokio::time::sleep(Duration::from_millis(2500));
        every(Duration::from_secs(1), stopped, || async {
            runs.fetch_add(1, Ordering::SeqCst);
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "at 0, 1 and 2 s");
    }
}
