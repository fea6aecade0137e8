//! A connection's turn on its worker.
//!
//! A connection task runs until it has nothing left to do. A client that
//! always has more packets waiting in its socket, or a session that always
//! has more deliveries queued, would keep its worker for milliseconds per
//! poll (tokio's own budget allows 128 socket operations, each up to a read
//! buffer of packets), and every other connection on that worker, however
//! little it asks, waits that long for each turn of each such client.
//!
//! [`Turns`] wraps the connection's future and grants a fresh [`Budget`] at
//! every poll, that is every time the scheduler gives the task a turn. The
//! connection charges what it does (packets handled, deliveries and
//! responses written) and, once the budget is spent, leaves the rest for
//! its next turn and yields: a flooding client then holds its worker for a
//! bounded stretch, and a calm client's packet waits behind one such
//! stretch per busy connection instead of a whole backlog each.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

/// Units charged for one inbound packet decoded and handled (routing,
/// storing, responding).
pub(super) const PACKET: u32 = 4;
/// Units charged for one packet written on the broker's initiative: a
/// delivery, or a response released by a finished store write.
pub(super) const WRITE: u32 = 1;

/// What a connection may still do in its current turn; shared between the
/// connection and the [`Turns`] wrapper that refills it.
#[derive(Clone)]
pub(crate) struct Budget {
    left: Arc<AtomicU32>,
    per_turn: u32,
}

impl Budget {
    /// A budget of `per_turn` units per poll (at least one).
    pub(crate) fn new(per_turn: u32) -> Self {
        let per_turn = per_turn.max(1);
        Self {
            left: Arc::new(AtomicU32::new(per_turn)),
            per_turn,
        }
    }

    /// Charges `units` of work done in this turn.
    pub(super) fn charge(&self, units: u32) {
        // Only the task that owns the budget charges or refills it, one poll
        // at a time: a plain load and store suffice.
        let left = self.left.load(Ordering::Relaxed);
        self.left
            .store(left.saturating_sub(units), Ordering::Relaxed);
    }

    /// Units left in this turn.
    pub(super) fn left(&self) -> u32 {
        self.left.load(Ordering::Relaxed)
    }

    /// Whether this turn's budget is spent: the connection should yield.
    pub(super) fn spent(&self) -> bool {
        self.left() == 0
    }

    /// Wraps `future` so that every poll of it starts with a full budget.
    pub(crate) fn turns<F: Future>(&self, future: F) -> Turns<F> {
        Turns {
            inner: future,
            budget: self.clone(),
        }
    }

    fn refill(&self) {
        self.left.store(self.per_turn, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A future whose every poll is a fresh turn of its [`Budget`].
    pub(crate) struct Turns<F> {
        #[pin]
        inner: F,
        budget: Budget,
    }
}

impl<F: Future> Future for Turns<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.budget.refill();
        this.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charging_spends_the_budget_without_wrapping() {
        let budget = Budget::new(10);
        budget.charge(PACKET);
        budget.charge(PACKET);
        assert_eq!(budget.left(), 2);
        assert!(!budget.spent());
        budget.charge(PACKET);
        assert!(budget.spent());
        budget.charge(WRITE);
        assert_eq!(budget.left(), 0);
    }

    #[tokio::test]
    async fn every_poll_starts_a_fresh_turn() {
        let budget = Budget::new(3);
        let inner = budget.clone();
        let seen = budget
            .turns(async move {
                let mut seen = Vec::new();
                for _ in 0..3 {
                    seen.push(inner.left());
                    inner.charge(5);
                    seen.push(inner.left());
                    tokio::task::yield_now().await;
                }
                seen
            })
            .await;
        assert_eq!(seen, [3, 0, 3, 0, 3, 0]);
    }
}
