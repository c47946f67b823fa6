//! The audit log's growth, on both backends: a bounded queue that holds callers back
//! instead of growing, repeated events folded into counts, and retention that deletes
//! only what is older than the retention the database records.

#[macro_use]
mod common;

use common::{Kind, TestDb};
use ferry_store::prelude::*;
use ferry_store::{Actor, AUDIT_BATCH_MAX, AUDIT_QUEUE_CAPACITY, WRITE_LOCK_KEY};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DAY: i64 = 86_400;

fn actor() -> Actor {
    Actor("uid:0".into())
}

async fn count(pool: &sqlx::AnyPool, filter: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM audit {filter}")).fetch_one(pool).await.unwrap()
}

fn refused(e: sqlx::Error) -> String {
    let e = e.to_string();
    assert!(e.contains("append-only") || e.contains("cannot be deleted"), "{e}");
    e
}

async fn old_entries_are_pruned_and_younger_ones_stay_undeletable(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = db.open().await;
    s.record_event(&actor(), "test.young", "node/n1", "").await.unwrap();
    s.flush().await.unwrap();
    let pool = db.raw().await;
    let now = ferry_store::now_secs();
    for (age_days, action) in [(400, "test.old"), (400, "test.old"), (400, "test.old"), (100, "test.middle")] {
        sqlx::query("INSERT INTO audit (at, actor, action, subject, detail) VALUES ($1, 'x', $2, 'node/n1', '')")
            .bind(now - age_days * DAY)
            .bind(action)
            .execute(&pool)
            .await
            .unwrap();
    }
    // No retention recorded yet (0: keep all): even a 400-day-old entry stays.
    refused(sqlx::query("DELETE FROM audit WHERE action = 'test.old'").execute(&pool).await.unwrap_err());
    assert_eq!(s.prune_audit().await.unwrap(), 0);

    assert_eq!(s.set_audit_retention(365).await.unwrap(), Some(0));
    assert_eq!(s.set_audit_retention(365).await.unwrap(), None, "unchanged: nothing written");
    let changes: Vec<_> =
        s.audit(Some("audit"), 100).await.unwrap().into_iter().filter(|e| e.action == "audit.retention").collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(changes[0].detail.contains("days=365 (was 0)") && changes[0].actor.starts_with("database"), "{changes:?}");

    assert_eq!(s.prune_audit().await.unwrap(), 3, "the three entries older than 365 days");
    assert_eq!(count(&pool, "WHERE action = 'test.old'").await, 0);
    assert_eq!(count(&pool, "WHERE action = 'test.middle'").await, 1, "100 days old: kept");
    let pruned = s.audit(Some("audit"), 100).await.unwrap();
    assert!(pruned.iter().any(|e| e.action == "audit.pruned" && e.detail.contains("deleted=3")), "{pruned:?}");
    assert_eq!(s.prune_audit().await.unwrap(), 0, "nothing more is old enough");

    // By hand, as an intruder with sqlite3 or psql: every younger entry is still safe.
    let total = count(&pool, "").await;
    let young: i64 =
        sqlx::query_scalar("SELECT id FROM audit WHERE action = 'test.young'").fetch_one(&pool).await.unwrap();
    refused(sqlx::query("DELETE FROM audit WHERE id = $1").bind(young).execute(&pool).await.unwrap_err());
    refused(sqlx::query("DELETE FROM audit").execute(&pool).await.unwrap_err());
    refused(sqlx::query("UPDATE audit SET at = 0 WHERE id = $1").bind(young).execute(&pool).await.unwrap_err());
    if kind == Kind::Postgres {
        refused(sqlx::query("TRUNCATE audit").execute(&pool).await.unwrap_err());
        refused(sqlx::query("TRUNCATE audit_retention").execute(&pool).await.unwrap_err());
    }
    refused(sqlx::query("DELETE FROM audit_retention").execute(&pool).await.unwrap_err());
    assert_eq!(count(&pool, "").await, total, "nothing was deleted");

    // Shortening the retention by hand works only through the recorded value, and the
    // database writes the change to the log itself.
    sqlx::query("UPDATE audit_retention SET days = 30").execute(&pool).await.unwrap();
    sqlx::query("DELETE FROM audit WHERE action = 'test.middle'").execute(&pool).await.unwrap();
    assert_eq!(count(&pool, "WHERE action = 'audit.retention' AND detail LIKE 'days=30 (was 365)%'").await, 1);
    pool.close().await;
}

/// Stops the store's writers: holds the database's write lock, as a long transaction
/// would, until [`release_write_lock`].
async fn hold_write_lock(kind: Kind, holder: &mut sqlx::AnyConnection) {
    match kind {
        Kind::Sqlite => sqlx::query("BEGIN IMMEDIATE").execute(&mut *holder).await.unwrap(),
        Kind::Postgres => {
            sqlx::query("SELECT pg_advisory_lock($1)").bind(WRITE_LOCK_KEY).execute(&mut *holder).await.unwrap()
        }
    };
}

async fn release_write_lock(kind: Kind, holder: &mut sqlx::AnyConnection) {
    match kind {
        Kind::Sqlite => sqlx::query("ROLLBACK").execute(&mut *holder).await.unwrap(),
        Kind::Postgres => {
            sqlx::query("SELECT pg_advisory_unlock($1)").bind(WRITE_LOCK_KEY).execute(&mut *holder).await.unwrap()
        }
    };
}

async fn a_full_audit_queue_holds_callers_back_and_loses_nothing(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = Arc::new(db.open().await);
    s.flush().await.unwrap();
    let pool = db.raw().await;
    let before = count(&pool, "").await;
    let mut holder = pool.acquire().await.unwrap();
    hold_write_lock(kind, &mut holder).await;
    let total = AUDIT_BATCH_MAX + AUDIT_QUEUE_CAPACITY + 2_000;
    let sent = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (s, sent) = (s.clone(), sent.clone());
        tokio::spawn(async move {
            for i in 0..total {
                s.record_event(&actor(), "test.flood", "node/n1", &format!("i={i}")).await.unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // The producer stops making progress: the queue is full and it waits for room.
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sent.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        assert!(now < total, "all {total} entries were queued while the writer was stopped: the queue is unbounded");
        last = now;
    }
    // At most a queue's worth waiting, plus the batch the writer holds.
    assert!(last <= AUDIT_QUEUE_CAPACITY + AUDIT_BATCH_MAX + 1, "{last} queued");
    assert!(!producer.is_finished());
    release_write_lock(kind, &mut holder).await;
    drop(holder);
    producer.await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(count(&pool, "").await, before + total as i64, "every entry written");
    assert_eq!(s.audit_counts().lost, 0);
    pool.close().await;
}

async fn repeated_events_are_folded_into_one_counted_entry(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = db.open().await;
    let mac = Actor("mac:52:54:00:00:00:01".into());
    for _ in 0..1_000 {
        s.record_repeatable_event(&mac, "boot.script", "node/n1", "image=rocky9").await.unwrap();
    }
    s.record_repeatable_event(&mac, "boot.script", "node/n2", "image=rocky9").await.unwrap();
    s.record_event(&actor(), "enroll.refused", "node/n1", "reason=x").await.unwrap();
    s.record_event(&actor(), "enroll.refused", "node/n1", "reason=x").await.unwrap();
    // A reader sees the first fetch at once; the repeats are being counted.
    let n1 = s.audit(Some("node/n1"), 100).await.unwrap();
    assert_eq!(n1.iter().filter(|e| e.action == "boot.script").count(), 1, "{n1:?}");
    assert_eq!(n1.iter().filter(|e| e.action == "enroll.refused").count(), 2, "plain events are never folded");
    assert_eq!(s.audit_counts().folded, 999);
    // At the end of the window (here: the shutdown flush) the count is written.
    s.flush().await.unwrap();
    let n1: Vec<String> = s
        .audit(Some("node/n1"), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "boot.script")
        .map(|e| e.detail)
        .collect();
    assert_eq!(n1, ["image=rocky9", "image=rocky9 repeated=999"]);
    let n2 = s.audit(Some("node/n2"), 100).await.unwrap();
    assert_eq!(n2.len(), 1, "a single fetch needs no count: {n2:?}");
}

/// Entries that pile up while the writer waits are written as one batch of multi-row
/// inserts of several sizes (here 1 + 199 = 64 + 64 + 64 + 4 + 2 + 1): every entry, once,
/// in the order it was recorded.
async fn a_batch_of_entries_is_written_whole_and_in_order(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = db.open().await;
    s.flush().await.unwrap();
    let pool = db.raw().await;
    let mut holder = pool.acquire().await.unwrap();
    hold_write_lock(kind, &mut holder).await;
    for i in 0..200 {
        s.record_event(&actor(), "test.batch", &format!("node/n{}", i % 3), &format!("i={i}")).await.unwrap();
    }
    release_write_lock(kind, &mut holder).await;
    drop(holder);
    s.flush().await.unwrap();
    let written: Vec<(String, String, String)> =
        sqlx::query_as("SELECT actor, subject, detail FROM audit WHERE action = 'test.batch' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let expected: Vec<(String, String, String)> =
        (0..200).map(|i| (actor().0, format!("node/n{}", i % 3), format!("i={i}"))).collect();
    assert_eq!(written, expected);
    pool.close().await;
}

both_backends!(
    old_entries_are_pruned_and_younger_ones_stay_undeletable,
    a_batch_of_entries_is_written_whole_and_in_order,
    a_full_audit_queue_holds_callers_back_and_loses_nothing,
    repeated_events_are_folded_into_one_counted_entry,
);
