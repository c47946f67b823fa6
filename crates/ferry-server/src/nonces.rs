//! Single-use enrollment nonces, held in memory: a nonce is only good for the server
//! that issued it, for a short time, once.

use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct NonceStore {
    ttl: Duration,
    capacity: usize,
    pending: Mutex<HashMap<[u8; 32], Instant>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum NonceError {
    /// Too many outstanding challenges: the caller should retry later.
    Full,
}

impl NonceStore {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        NonceStore { ttl, capacity, pending: Mutex::new(HashMap::new()) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self) -> Result<[u8; 32], NonceError> {
        let mut nonce = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= self.capacity {
            pending.retain(|_, expiry| *expiry > now);
            if pending.len() >= self.capacity {
                return Err(NonceError::Full);
            }
        }
        pending.insert(nonce, now + self.ttl);
        Ok(nonce)
    }

    /// Consumes a nonce: true once, if it was issued here and has not expired.
    pub fn take(&self, nonce: &[u8]) -> bool {
        let Ok(key) = <[u8; 32]>::try_from(nonce) else { return false };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        matches!(pending.remove(&key), Some(expiry) if expiry > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_expiring_and_bounded() {
        let s = NonceStore::new(Duration::from_secs(60), 2);
        let a = s.issue().unwrap();
        assert!(s.take(&a));
        assert!(!s.take(&a), "single use");
        assert!(!s.take(&[0u8; 32]), "never issued");
        assert!(!s.take(&a[..16]), "wrong length");
        s.issue().unwrap();
        s.issue().unwrap();
        assert_eq!(s.issue(), Err(NonceError::Full));
        let short = NonceStore::new(Duration::from_millis(1), 10);
        let b = short.issue().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!short.take(&b), "expired");
    }
}
