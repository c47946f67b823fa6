//! Audit entries that are not part of another change (enrollment verdicts, document
//! deliveries, boot-script fetches) are queued and written in batches: one transaction
//! for everything that arrived while the previous batch was being written. Under a boot
//! storm this turns thousands of one-row transactions through the single writer into a
//! few. Readers of the log flush first, so `ferry audit` always sees every event that
//! happened before it asked.
//!
//! The queue is bounded ([`AUDIT_QUEUE_CAPACITY`]): when the database falls behind, the
//! callers wait for room (back-pressure) instead of the queue growing without end, and
//! no entry is ever dropped to make room.
//!
//! Repeatable entries (a node fetching its boot script or a document again and again)
//! are folded: the first of a minute is written at once; identical ones (same actor,
//! action, subject and detail) in the [`AUDIT_FOLD_WINDOW_SECS`] after it are counted,
//! and the count is written as one more entry, `… repeated=N`, when that window ends
//! (or when the store is flushed at shutdown). Nothing is lost, only summed.

use crate::audit_rows::{AuditBatch, AuditRow};
use crate::now_secs;
use crate::writer::Writer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most entries waiting to be written; beyond it, `record_event` waits for room.
pub const AUDIT_QUEUE_CAPACITY: usize = 16_384;
/// Identical repeatable entries within this many seconds of the first are counted, not
/// written one by one.
pub const AUDIT_FOLD_WINDOW_SECS: i64 = 60;
/// Most entries written in one transaction.
pub const AUDIT_BATCH_MAX: usize = 10_000;
/// Most distinct repeatable entries being counted at once; beyond it, new ones are
/// written as plain entries (never dropped).
const MAX_FOLDS: usize = 100_000;
/// A batch that cannot be written is tried again after 1, 2 and 4 s.
const WRITE_RETRIES: u32 = 3;

pub(crate) enum Item {
    Entry(AuditRow),
    /// An entry whose identical repetitions are folded into a count.
    Repeatable(AuditRow),
    /// Answers once everything queued before it is written.
    Flush(oneshot::Sender<()>),
    /// Also writes the counts of folded entries whose window is still open (shutdown).
    FlushFolds(oneshot::Sender<()>),
}

/// What the audit writer did besides writing: entries folded into counts, and entries
/// lost because the database refused them even after retries.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub folded: AtomicU64,
    pub lost: AtomicU64,
}

type FoldKey = (String, String, String, String);

struct Fold {
    first_at: i64,
    last_at: i64,
    repeated: u64,
}

/// Identical repeatable entries being counted, each for one window after its first.
pub(crate) struct Folds {
    open: HashMap<FoldKey, Fold>,
    window: i64,
    max: usize,
}

impl Folds {
    pub(crate) fn new(window: i64, max: usize) -> Folds {
        Folds { open: HashMap::new(), window, max }
    }

    /// Takes a repeatable entry: pushes what must be written now onto `out` (the entry,
    /// when it is the first of its window, after the count of the window it ends), or
    /// counts it. True if it was counted.
    pub(crate) fn observe(&mut self, row: AuditRow, out: &mut Vec<AuditRow>) -> bool {
        let key = (row.actor, row.action, row.subject, row.detail);
        if let Some(f) = self.open.get_mut(&key) {
            if row.at < f.first_at + self.window {
                f.repeated += 1;
                f.last_at = f.last_at.max(row.at);
                return true;
            }
            let ended = self.open.remove(&key).expect("present");
            out.extend(summary(&key, &ended));
        }
        if self.open.len() < self.max {
            self.open.insert(key.clone(), Fold { first_at: row.at, last_at: row.at, repeated: 0 });
        }
        let (actor, action, subject, detail) = key;
        out.push(AuditRow { at: row.at, actor, action, subject, detail });
        false
    }

    /// The counts of every window that ended by `now` (`i64::MAX`: all of them).
    pub(crate) fn due(&mut self, now: i64) -> Vec<AuditRow> {
        let window = self.window;
        let mut out = Vec::new();
        self.open.retain(|key, f| {
            let ended = f.first_at.saturating_add(window) <= now;
            if ended {
                out.extend(summary(key, f));
            }
            !ended
        });
        out
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.len()
    }
}

/// The entry that stands for a window's repetitions, if there were any.
fn summary(key: &FoldKey, f: &Fold) -> Option<AuditRow> {
    (f.repeated > 0).then(|| {
        let (actor, action, subject, detail) = key.clone();
        let detail = if detail.is_empty() {
            format!("repeated={}", f.repeated)
        } else {
            format!("{detail} repeated={}", f.repeated)
        };
        AuditRow { at: f.last_at, actor, action, subject, detail }
    })
}

/// Starts the writer; it ends when every sender is gone, after writing what it holds
/// (the open folds' counts included).
pub(crate) fn spawn(writer: Arc<Writer>, counters: Arc<Counters>) -> mpsc::Sender<Item> {
    let (tx, mut rx) = mpsc::channel::<Item>(AUDIT_QUEUE_CAPACITY);
    tokio::spawn(async move {
        let mut folds = Folds::new(AUDIT_FOLD_WINDOW_SECS, MAX_FOLDS);
        // Folds whose window ended are written within a second, even when idle.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (mut rows, mut flushes) = (Vec::new(), Vec::new());
            let (mut closing, mut all_folds) = (false, false);
            tokio::select! {
                first = rx.recv() => match first {
                    None => closing = true,
                    // Everything queued meanwhile (up to a batch) goes in one transaction.
                    Some(mut item) => loop {
                        match item {
                            Item::Entry(row) => rows.push(row),
                            Item::Repeatable(row) => {
                                if folds.observe(row, &mut rows) {
                                    counters.folded.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Item::Flush(done) => flushes.push(done),
                            Item::FlushFolds(done) => {
                                all_folds = true;
                                flushes.push(done);
                            }
                        }
                        if rows.len() >= AUDIT_BATCH_MAX {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(more) => item = more,
                            Err(_) => break,
                        }
                    },
                },
                _ = tick.tick() => {}
            }
            rows.extend(folds.due(if closing || all_folds { i64::MAX } else { now_secs() }));
            if !rows.is_empty() {
                write_with_retries(&writer, rows, &counters).await;
            }
            for done in flushes {
                let _ = done.send(());
            }
            if closing {
                break;
            }
        }
    });
    tx
}

/// Writes a batch; a failure is retried (the rows are kept meanwhile, and the bounded
/// queue holds the callers back), and only then logged and counted as lost.
async fn write_with_retries(writer: &Writer, rows: Vec<AuditRow>, counters: &Counters) {
    let rows = Arc::new(rows);
    for attempt in 0..=WRITE_RETRIES {
        // The write path like every other writer (SQLite: the writer thread;
        // PostgreSQL: the advisory lock).
        match writer.run(AuditBatch(rows.clone())).await {
            Ok(()) => return,
            Err(e) if attempt < WRITE_RETRIES => {
                tracing::warn!(error = %e, entries = rows.len(), "cannot write audit entries; retrying");
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
            Err(e) => {
                counters.lost.fetch_add(rows.len() as u64, Ordering::Relaxed);
                tracing::error!(
                    error = %e,
                    entries = rows.len(),
                    "cannot write audit entries after {WRITE_RETRIES} retries; they are lost (see ferry_audit_lost_total)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: i64, subject: &str) -> AuditRow {
        AuditRow {
            at,
            actor: "mac:m".into(),
            action: "boot.script".into(),
            subject: subject.into(),
            detail: "image=i".into(),
        }
    }

    #[test]
    fn repeats_within_a_window_become_one_counted_entry() {
        let mut folds = Folds::new(60, 10);
        let mut out = Vec::new();
        assert!(!folds.observe(row(100, "node/a"), &mut out), "the first is written");
        for t in 101..160 {
            assert!(folds.observe(row(t, "node/a"), &mut out), "repeats are counted");
        }
        assert!(!folds.observe(row(120, "node/b"), &mut out), "another subject is another entry");
        assert_eq!(out, [row(100, "node/a"), row(120, "node/b")]);
        assert!(folds.due(159).is_empty(), "the window is still open");
        let due = folds.due(160);
        assert_eq!(due.len(), 1, "node/b had no repeats: nothing to write for it yet");
        assert_eq!(due[0].detail, "image=i repeated=59");
        assert_eq!(due[0].at, 159, "dated by the last repeat");
        // The next occurrence opens a new window; an expired one found on the way is
        // written first.
        out.clear();
        assert!(!folds.observe(row(181, "node/b"), &mut out), "node/b's window ended at 180");
        assert!(folds.observe(row(190, "node/b"), &mut out));
        assert_eq!(out, [row(181, "node/b")], "{out:?}");
        assert_eq!(folds.due(i64::MAX)[0].detail, "image=i repeated=1", "shutdown writes open counts");
        assert_eq!(folds.len(), 0);
    }

    #[test]
    fn a_full_fold_table_writes_entries_instead_of_dropping_them() {
        let mut folds = Folds::new(60, 2);
        let mut out = Vec::new();
        for s in ["node/a", "node/b", "node/c", "node/c"] {
            folds.observe(row(1, s), &mut out);
        }
        assert_eq!(out.len(), 4, "node/c is not tracked: both written");
        assert_eq!(folds.len(), 2);
    }
}
