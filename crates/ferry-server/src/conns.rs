//! The datasource's connections by tunnel, so a tunnel's connections end with the
//! tunnel (PRODUCT.md invariant 13): without this, a node (or any user on it) could
//! open connections during its tunnel window and keep them — and the server's file
//! descriptors — after the tunnel closed.
//!
//! A connection is tagged at accept with the key of the active tunnel owning its source
//! address (or with no key: such a caller is refused every document). When that tunnel
//! ends, [`TunnelConnections::close_tunnel`] closes its connections and the untagged
//! ones from the same address.

use ferry_wg::PublicKey;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

struct Entry {
    id: u64,
    /// The tunnel's WireGuard key when the connection was accepted.
    key: Option<PublicKey>,
    close: CancellationToken,
}

#[derive(Default)]
pub struct TunnelConnections {
    by_address: Mutex<HashMap<IpAddr, Vec<Entry>>>,
    next_id: AtomicU64,
}

/// A registered connection; dropping it (the connection ended) unregisters it.
pub struct Registration {
    registry: Arc<TunnelConnections>,
    address: IpAddr,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.registry.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entries) = map.get_mut(&self.address) {
            entries.retain(|e| e.id != self.id);
            if entries.is_empty() {
                map.remove(&self.address);
            }
        }
    }
}

impl TunnelConnections {
    pub fn register(
        self: &Arc<Self>,
        address: IpAddr,
        key: Option<PublicKey>,
        close: CancellationToken,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(address).or_default().push(Entry { id, key, close });
        Registration { registry: self.clone(), address, id }
    }

    /// Closes the connections of the tunnel `(address, key)` and those from `address`
    /// that belong to no tunnel. Returns how many.
    pub fn close_tunnel(&self, address: IpAddr, key: &PublicKey) -> usize {
        let map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entries) = map.get(&address) else { return 0 };
        let mut closed = 0;
        for e in entries.iter().filter(|e| e.key.as_ref().is_none_or(|k| k == key)) {
            e.close.cancel();
            closed += 1;
        }
        closed
    }

    /// Connections registered from `address`.
    #[cfg(test)]
    pub fn count(&self, address: IpAddr) -> usize {
        self.by_address.lock().unwrap_or_else(|p| p.into_inner()).get(&address).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_a_tunnel_closes_its_connections_and_untagged_ones_only() {
        let r = Arc::new(TunnelConnections::default());
        let (a, b): (IpAddr, IpAddr) = ("100.64.0.2".parse().unwrap(), "100.64.0.3".parse().unwrap());
        let tokens: Vec<CancellationToken> = (0..4).map(|_| CancellationToken::new()).collect();
        let [ka, kold, kb] = [1, 2, 3].map(|b| PublicKey([b; 32]));
        let _ra = r.register(a, Some(ka), tokens[0].clone());
        let _rn = r.register(a, None, tokens[1].clone());
        let _rold = r.register(a, Some(kold), tokens[2].clone());
        let rb = r.register(b, Some(kb), tokens[3].clone());
        assert_eq!(r.close_tunnel(a, &ka), 2);
        let cancelled: Vec<bool> = tokens.iter().map(|t| t.is_cancelled()).collect();
        assert_eq!(cancelled, [true, true, false, false], "another tunnel's and another address's stay");
        assert_eq!(r.count(b), 1);
        drop(rb);
        assert_eq!(r.count(b), 0, "a connection that ended is forgotten");
        assert_eq!(r.close_tunnel(b, &kb), 0);
    }
}
