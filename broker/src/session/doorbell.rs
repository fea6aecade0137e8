//! How a session wakes the connection attached to it.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Wakes the task of the connection attached to a session when there is
/// something for it: a delivery queued, the broker shutting down. A ring
/// while nobody waits is kept for the next wait, as with
/// [`tokio::sync::Notify::notify_one`]. Unlike a `Notify`, waiting needs
/// no future of its own (a waiter node, 64 bytes, in every connection
/// that waits): the waiting task polls [`Doorbell::poll_rung`] from its
/// own poll. One task waits at a time; a second one takes the place of
/// the first.
#[derive(Default)]
pub struct Doorbell {
    rung: AtomicBool,
    waker: AtomicWaker,
}

impl Doorbell {
    /// Rings: wakes the waiting task, or the next one to wait.
    pub fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready, taking the ring, once the doorbell has rung since the last
    /// time it was taken; otherwise registers `cx` to be woken by the next
    /// ring.
    pub fn poll_rung(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.rung.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A ring between the check and the registration woke nobody.
        if self.rung.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits for [`Doorbell::poll_rung`]. Cancel safe: a ring is taken
    /// only when this resolves.
    pub async fn rung(&self) {
        poll_fn(|cx| self.poll_rung(cx)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Doorbell;

    #[tokio::test]
    async fn a_ring_without_a_waiter_is_kept_for_the_next_wait() {
        let bell = Doorbell::default();
        bell.ring();
        bell.ring();
        tokio::time::timeout(Duration::from_secs(1), bell.rung())
            .await
            .expect("the kept ring");
        // Both rings were taken by that one wait.
        let again = tokio::time::timeout(Duration::from_millis(20), bell.rung()).await;
        assert!(again.is_err(), "no ring left");
    }

    #[tokio::test]
    async fn a_ring_wakes_the_waiting_task() {
        let bell = Arc::new(Doorbell::default());
        let waiting = tokio::spawn({
            let bell = Arc::clone(&bell);
            async move { bell.rung().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "not rung yet");
        bell.ring();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken")
            .expect("joins");
    }
}
