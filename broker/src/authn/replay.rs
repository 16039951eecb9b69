//! Single-use JWTs: a bounded memory of the `(iss, jti)` pairs already accepted, each
//! kept until its token expires (RFC 7523 §3 item 7, RFC 8725 §3.10 replay).
//!
//! Memory is bounded by [`ReplayCache::capacity`]. Expired entries are swept when the
//! cache fills; if it is still full, a new token is refused ([`Seen::Full`]) rather than
//! an old entry forgotten, since forgetting would let that token be replayed (fail
//! closed). Every entry needs a token signed by a trusted issuer, so filling the cache
//! takes that many valid signed tokens with a lifetime no longer than the issuer's
//! `max_lifetime`.
//!
//! The memory is this process's. Replicas on a shared state store also record each use
//! there ([`crate::single_use`]), so that a token one replica accepted is refused by
//! all; this memory answers replays at the same replica without asking the store.

use std::collections::HashMap;
use std::sync::Mutex;

/// The outcome of [`ReplayCache::first_use`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before; now remembered until its expiry.
    First,
    /// Already accepted once.
    Replayed,
    /// The cache is full of unexpired entries; the token cannot be checked.
    Full,
}

/// `(iss, jti)` pairs already accepted, with their expiry.
#[derive(Debug)]
pub struct ReplayCache {
    seen: Mutex<HashMap<(String, String), u64>>,
    capacity: usize,
}

impl ReplayCache {
    /// A cache holding at most `capacity` unexpired entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The most entries held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records the use of `(iss, jti)`, valid until `exp`, at `now`.
    pub fn first_use(&self, iss: &str, jti: &str, exp: u64, now: u64) -> Seen {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = (iss.to_owned(), jti.to_owned());
        if let Some(until) = seen.get(&key) {
            if *until >= now {
                return Seen::Replayed;
            }
            seen.remove(&key);
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, until| *until >= now);
            if seen.len() >= self.capacity {
                return Seen::Full;
            }
        }
        seen.insert(key, exp);
        Seen::First
    }

    /// Forgets the use of `(iss, jti)`: it was not completed (the shared record of
    /// other replicas' uses could not be asked), so the token was not accepted.
    pub fn forget(&self, iss: &str, jti: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.remove(&(iss.to_owned(), jti.to_owned()));
    }

    /// Entries held now (for metrics and tests).
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_accepted_once_until_it_expires() {
        let c = ReplayCache::new(10);
        assert_eq!(c.first_use("i", "a", 100, 50), Seen::First);
        assert_eq!(c.first_use("i", "a", 100, 99), Seen::Replayed);
        c.forget("i", "a");
        assert_eq!(c.first_use("i", "a", 100, 99), Seen::First, "forgotten");
        // Same jti from another issuer is another token.
        assert_eq!(c.first_use("j", "a", 100, 99), Seen::First);
        // Past its expiry the token itself is refused as expired; the entry may go.
        assert_eq!(c.first_use("i", "a", 200, 101), Seen::First);
    }

    #[test]
    fn a_full_cache_sweeps_expired_entries_then_refuses() {
        let c = ReplayCache::new(2);
        assert_eq!(c.first_use("i", "a", 10, 0), Seen::First);
        assert_eq!(c.first_use("i", "b", 100, 0), Seen::First);
        assert_eq!(c.first_use("i", "c", 100, 5), Seen::Full);
        // Once `a` has expired it is swept and `c` fits.
        assert_eq!(c.first_use("i", "c", 100, 11), Seen::First);
        assert_eq!(c.len(), 2);
        assert_eq!(c.first_use("i", "b", 100, 12), Seen::Replayed);
    }
}
