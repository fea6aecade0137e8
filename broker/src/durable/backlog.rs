//! The bound on what waits for the partition writers.
//!
//! Records are handed to a partition's writer without waiting (the
//! connection's read pass must not block on the disk), so the queue in front
//! of the writers is bounded here instead: every job's bytes are counted
//! from the moment it is sent until its writer takes it, and while the count
//! is over the limit the connections that wait for the store stop reading
//! new packets ([`Backlog::is_full`]) and wait for it to drain
//! ([`Backlog::drained`]). The queue then holds at most the limit plus one
//! read pass per connection (a pass ends with a connection's turn, or at
//! its first record once it is over the limit).

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntGauge;
use tokio::sync::Notify;

/// Bytes queued for the partition writers, against a limit.
pub(crate) struct Backlog {
    bytes: AtomicUsize,
    limit: usize,
    drained: Notify,
    gauge: IntGauge,
}

impl Backlog {
    /// An empty backlog that is full above `limit` bytes.
    pub(crate) fn new(limit: usize, gauge: IntGauge) -> Self {
        Self {
            bytes: AtomicUsize::new(0),
            limit,
            drained: Notify::new(),
            gauge,
        }
    }

    /// Counts bytes handed to a writer.
    pub(crate) fn add(&self, bytes: usize) {
        let now = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.gauge.set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// Counts bytes a writer took; wakes the waiting connections when the
    /// backlog drops to its limit.
    pub(crate) fn take(&self, bytes: usize) {
        // Never below zero (a wrapped count would read as full forever).
        let before = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            })
            .unwrap_or_else(|b| b);
        let now = before.saturating_sub(bytes);
        self.gauge.set(i64::try_from(now).unwrap_or(i64::MAX));
        if before > self.limit && now <= self.limit {
            self.drained.notify_waiters();
        }
    }

    /// Whether the backlog is over its limit: take no more input.
    pub(crate) fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > self.limit
    }

    /// Resolves once the backlog is at or below its limit.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_full() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Backlog;

    fn backlog(limit: usize) -> Arc<Backlog> {
        let gauge = prometheus::IntGauge::new("backlog", "test").expect("gauge");
        Arc::new(Backlog::new(limit, gauge))
    }

    #[tokio::test]
    async fn full_above_the_limit_and_drained_at_it() {
        let backlog = backlog(100);
        backlog.add(100);
        assert!(!backlog.is_full(), "at the limit is not over it");
        backlog.add(1);
        assert!(backlog.is_full());
        let waiter = tokio::spawn({
            let backlog = Arc::clone(&backlog);
            async move { backlog.drained().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "still over the limit");
        backlog.take(50);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken once drained")
            .expect("no panic");
        assert_eq!(backlog.gauge.get(), 51);
    }

    #[test]
    fn taking_more_than_was_added_does_not_wrap_to_full() {
        let backlog = backlog(100);
        backlog.add(10);
        backlog.take(30);
        assert!(!backlog.is_full());
        backlog.add(50);
        assert!(!backlog.is_full(), "the count restarted from zero");
    }
}
