//! One tunnel change at a time per node. A node's enrollment, revocation and deletion
//! each commit in the store and then change the device; two of them racing could reach
//! the device in the other order than they committed (the second enrollment's "remove
//! the first key" before the first's "add it"), leaving a replaced peer on the device
//! until the next reconcile. Holding the node's lock across both steps keeps the orders
//! equal. Different nodes never wait for each other.

use ferry_core::NodeName;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub struct NodeLocks {
    map: Mutex<HashMap<NodeName, Arc<tokio::sync::Mutex<()>>>>,
}

/// A node's lock, held; the entry goes when no one holds or waits for it.
pub struct NodeGuard<'a> {
    locks: &'a NodeLocks,
    node: NodeName,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for NodeGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.node).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.node);
        }
    }
}

impl NodeLocks {
    pub async fn lock(&self, node: &NodeName) -> NodeGuard<'_> {
        let mutex = self.map.lock().unwrap_or_else(|p| p.into_inner()).entry(node.clone()).or_default().clone();
        let guard = mutex.lock_owned().await;
        NodeGuard { locks: self, node: node.clone(), guard: Some(guard) }
    }

    /// Several nodes' locks, taken in name order (so two callers never wait for each
    /// other in a cycle).
    pub async fn lock_all(&self, nodes: &[NodeName]) -> Vec<NodeGuard<'_>> {
        let mut sorted: Vec<&NodeName> = nodes.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut guards = Vec::with_capacity(sorted.len());
        for node in sorted {
            guards.push(self.lock(node).await);
        }
        guards
    }

    /// Nodes with a lock held or awaited.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_node_others_go_on_and_entries_are_dropped() {
        let locks = Arc::new(NodeLocks::default());
        let (n1, n2) = (NodeName::parse("n1").unwrap(), NodeName::parse("n2").unwrap());
        let held = locks.lock(&n1).await;
        let waiter = {
            let (locks, n1) = (locks.clone(), n1.clone());
            tokio::spawn(async move {
                let _g = locks.lock(&n1).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the second holder of n1 waits");
        drop(locks.lock(&n2).await);
        drop(held);
        waiter.await.unwrap();
        assert_eq!(locks.in_use(), 0, "no entry left once nobody holds or waits");
        let all = locks.lock_all(&[n2.clone(), n1.clone(), n2.clone()]).await;
        assert_eq!(all.len(), 2);
    }
}
