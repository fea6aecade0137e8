//! Logins verified recently, so that a client reconnecting skips argon2.
//!
//! An argon2 verification costs tens of milliseconds of CPU on purpose.
//! When a thousand devices reconnect at once (a network blip, a load
//! balancer failing over) that is tens of seconds of CPU, and CONNECTs
//! time out while they queue for it. A device that logged in a minute ago
//! with the same password does not need to prove it at that price again:
//! a successful verification is remembered for `auth.verified_cache_secs`
//! as a keyed BLAKE2b MAC of the user name and the password, under a
//! random key made at start and never stored. The password itself is
//! never kept. A wrong password is still checked with argon2, and a
//! failed login forgets nothing (a guesser cannot push a user back onto
//! the slow path). The cache belongs to one load of the password file:
//! a reload starts an empty one, so a changed or removed password stops
//! working at once.

use std::time::{Duration, Instant};

use blake2::Blake2bMac;
use blake2::digest::consts::U32;
use blake2::digest::{FixedOutput, Mac};
use dashmap::DashMap;

/// The MAC: BLAKE2b with a 32-byte output, keyed.
type Blake2bMac256 = Blake2bMac<U32>;

/// Successful logins of the last `ttl`, at most `max` of them.
pub struct Verified {
    key: [u8; 32],
    ttl: Duration,
    max: usize,
    entries: DashMap<String, Entry>,
}

/// One remembered login.
struct Entry {
    mac: [u8; 32],
    at: Instant,
}

impl Default for Verified {
    /// Remembers nothing.
    fn default() -> Self {
        Self::new(Duration::ZERO, 0)
    }
}

impl Verified {
    /// Remembers logins for `ttl` (zero: never), at most `max` at a time.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            key: rand::random(),
            ttl,
            max,
            entries: DashMap::new(),
        }
    }

    /// Whether `password` is the password `username` logged in with within
    /// the last `ttl`. Compared in constant time.
    pub fn contains(&self, username: &str, password: &[u8]) -> bool {
        let Some(entry) = self.entries.get(username) else {
            return false;
        };
        entry.at.elapsed() < self.ttl
            && self
                .mac(username, password)
                .is_some_and(|mac| mac.verify_slice(&entry.mac).is_ok())
    }

    /// Remembers a login argon2 verified. When `max` logins are remembered
    /// the expired ones go first; if none has expired, this one is not
    /// remembered (it is verified with argon2 next time too).
    pub fn insert(&self, username: &str, password: &[u8]) {
        if self.ttl.is_zero() || self.max == 0 {
            return;
        }
        if self.entries.len() >= self.max && !self.entries.contains_key(username) {
            self.entries
                .retain(|_, entry| entry.at.elapsed() < self.ttl);
            if self.entries.len() >= self.max {
                return;
            }
        }
        if let Some(mac) = self.mac(username, password) {
            let entry = Entry {
                mac: mac.finalize_fixed().into(),
                at: Instant::now(),
            };
            self.entries.insert(username.to_owned(), entry);
        }
    }

    /// Logins remembered now (expired ones included until pruned).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no login is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The MAC of a user name and a password (`None` only if the key were
    /// refused, which a 32-byte key never is).
    fn mac(&self, username: &str, password: &[u8]) -> Option<Blake2bMac256> {
        let mut mac = <Blake2bMac256 as Mac>::new_from_slice(&self.key).ok()?;
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        mac.update(&(username.len() as u64).to_le_bytes());
        mac.update(username.as_bytes());
        mac.update(password);
        Some(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_only_the_password_that_was_verified() {
        let verified = Verified::new(Duration::from_secs(60), 10);
        assert!(!verified.contains("alice", b"wonderland"));
        verified.insert("alice", b"wonderland");
        assert!(verified.contains("alice", b"wonderland"));
        assert!(!verified.contains("alice", b"wonderlan"));
        assert!(!verified.contains("alice", b""));
        assert!(!verified.contains("bob", b"wonderland"));
        // The boundary between name and password is part of the MAC.
        verified.insert("ab", b"c");
        assert!(!verified.contains("a", b"bc"));
    }

    #[test]
    fn forgets_after_the_ttl_and_never_with_zero() {
        let verified = Verified::new(Duration::from_millis(30), 10);
        verified.insert("alice", b"wonderland");
        assert!(verified.contains("alice", b"wonderland"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!verified.contains("alice", b"wonderland"));

        let off = Verified::new(Duration::ZERO, 10);
        off.insert("alice", b"wonderland");
        assert!(off.is_empty() && !off.contains("alice", b"wonderland"));
    }

    #[test]
    fn a_full_cache_makes_room_from_expired_entries_only() {
        let verified = Verified::new(Duration::from_millis(30), 2);
        verified.insert("a", b"1");
        verified.insert("b", b"2");
        verified.insert("c", b"3");
        assert_eq!(verified.len(), 2);
        assert!(!verified.contains("c", b"3"), "no room: not remembered");
        // A user already in it is refreshed, full or not.
        verified.insert("a", b"new");
        assert!(verified.contains("a", b"new"));
        std::thread::sleep(Duration::from_millis(40));
        verified.insert("c", b"3");
        assert!(verified.contains("c", b"3"));
        assert_eq!(verified.len(), 1, "expired entries pruned");
    }
}
