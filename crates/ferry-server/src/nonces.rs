//! Single-use enrollment nonces, held in memory: a nonce is only good for the server
//! that issued it, for a short time, once. A nonce may carry the state of one step
//! between challenge and enrollment (the TPM credential challenge): it lives and dies
//! with the nonce, so it is bounded by the same cap and TTL.

use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct NonceStore<T = ()> {
    ttl: Duration,
    capacity: usize,
    pending: Mutex<HashMap<[u8; 32], Entry<T>>>,
}

struct Entry<T> {
    expiry: Instant,
    attached: Option<T>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum NonceError {
    /// Too many outstanding challenges: the caller should retry later.
    Full,
    /// Not issued here, used or expired.
    Unknown,
    /// This nonce already carries its step's state.
    AlreadyAttached,
}

impl<T> NonceStore<T> {
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
            pending.retain(|_, e| e.expiry > now);
            if pending.len() >= self.capacity {
                return Err(NonceError::Full);
            }
        }
        pending.insert(nonce, Entry { expiry: now + self.ttl, attached: None });
        Ok(nonce)
    }

    /// Attaches state to a live nonce, once.
    pub fn attach(&self, nonce: &[u8; 32], state: T) -> Result<(), NonceError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(nonce) {
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
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        matches!(pending.get(nonce), Some(e) if e.expiry > Instant::now())
    }

    /// Consumes a nonce: `Some(attached state)` once, if it was issued here and has not
    /// expired.
    pub fn take(&self, nonce: &[u8]) -> Option<Option<T>> {
        let key = <[u8; 32]>::try_from(nonce).ok()?;
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.remove(&key) {
            Some(e) if e.expiry > Instant::now() => Some(e.attached),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_expiring_and_bounded() {
        let s = NonceStore::<()>::new(Duration::from_secs(60), 2);
        let a = s.issue().unwrap();
        assert!(s.take(&a).is_some());
        assert!(s.take(&a).is_none(), "single use");
        assert!(s.take(&[0u8; 32]).is_none(), "never issued");
        assert!(s.take(&a[..16]).is_none(), "wrong length");
        s.issue().unwrap();
        s.issue().unwrap();
        assert_eq!(s.issue(), Err(NonceError::Full));
        let short = NonceStore::<()>::new(Duration::from_millis(1), 10);
        let b = short.issue().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!short.is_live(&b));
        assert!(short.take(&b).is_none(), "expired");
    }

    #[test]
    fn attached_state_lives_and_dies_with_its_nonce() {
        let s = NonceStore::<u32>::new(Duration::from_secs(60), 10);
        let a = s.issue().unwrap();
        assert!(s.is_live(&a));
        s.attach(&a, 7).unwrap();
        assert_eq!(s.attach(&a, 8), Err(NonceError::AlreadyAttached), "once per nonce");
        assert_eq!(s.attach(&[1; 32], 8), Err(NonceError::Unknown));
        assert_eq!(s.take(&a), Some(Some(7)));
        assert_eq!(s.attach(&a, 9), Err(NonceError::Unknown), "consumed");
        let b = s.issue().unwrap();
        assert_eq!(s.take(&b), Some(None));
    }
}
