//! Audit retention (`audit_retention_days`): the server records the configured value in
//! the database at start — whose triggers then let only older entries be deleted, and
//! log any change — and prunes hourly.

use ferry_store::Store;
use std::sync::Arc;
use std::time::Duration;

/// How often old audit entries are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Records the retention in the database (a change is audited there).
pub async fn record(store: &dyn Store, days: u32) -> anyhow::Result<()> {
    let kept = |d: u32| if d == 0 { "every entry".to_owned() } else { format!("{d} days") };
    match store.set_audit_retention(days).await {
        Ok(Some(before)) => {
            tracing::warn!(
                "audit retention changed from {} to {} (audited); servers sharing this store should agree",
                kept(before),
                kept(days)
            );
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot record the audit retention (audit_retention_days) in the store: {e}")),
    }
}

/// Deletes audit entries older than the recorded retention, at start and every hour,
/// until `stopped`.
pub async fn prune_loop(store: Arc<dyn Store>, stopped: impl std::future::Future<Output = ()>) {
    crate::periodic::every(PRUNE_EVERY, stopped, || async {
        match store.prune_audit().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "old audit entries pruned (audit_retention_days)"),
            Err(e) => tracing::error!(error = %e, "cannot prune the audit log; retrying in an hour"),
        }
    })
    .await
}
