//! Rate-limited logging: in a storm of the same event (slow handshakes,
//! failed accepts) one log line a second says as much as a thousand, and
//! costs the node nothing while it is already short of something.

use std::sync::atomic::{AtomicU64, Ordering};

/// Lets one event through per interval and counts the ones held back.
pub(crate) struct LogEvery {
    every_ms: u64,
    /// When the last event was let through (ms since the epoch; 0: never).
    last_ms: AtomicU64,
    held: AtomicU64,
}

impl LogEvery {
    pub(crate) const fn new(every_ms: u64) -> Self {
        Self {
            every_ms,
            last_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(events held back since the last one)` if an event now may be
    /// logged.
    pub(crate) fn admit_now(&self) -> Option<u64> {
        self.admit(crate::durable::record::unix_ms())
    }

    /// `Some(events held back since the last one)` if an event at `now_ms`
    /// may be logged.
    fn admit(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms >= last.saturating_add(self.every_ms);
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_a_second_gets_through_and_the_rest_are_counted() {
        let log = LogEvery::new(1000);
        assert_eq!(log.admit(5_000), Some(0));
        assert_eq!(log.admit(5_001), None);
        assert_eq!(log.admit(5_999), None);
        assert_eq!(log.admit(6_000), Some(2), "two held back");
        assert_eq!(log.admit(6_500), None);
        assert_eq!(log.admit(9_000), Some(1));
    }
}
