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
//!
//! With hundreds of flooding publishers that is still hundreds of
//! stretches. So a connection whose turn ended with PUBLISH packets still
//! waiting in its read buffer is *busy* for a while, and handles its input
//! only while it holds one of a few [`Lanes`] (half the broker's workers by
//! default): it takes a lane before it reads on, gives it up when it yields
//! or waits, and busy publishers queue for lanes in order instead of in the
//! workers' run queues. Output (deliveries, responses) is never held back:
//! subscribers keep draining what the busy publishers send, and a calm
//! client's packet waits for the few busy publishers in a lane at most,
//! however many there are. The busy ones share what the calm leave.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Units charged for one inbound packet decoded and handled (routing,
/// storing, responding).
pub(super) const PACKET: u32 = 16;
/// Units charged for one packet written on the broker's initiative: a
/// delivery, or a response released by a finished store write.
pub(super) const WRITE: u32 = 1;
/// Bytes of an inbound packet that cost one unit more (a 1 MB packet spends
/// a whole turn's budget).
pub(super) const BYTES_PER_UNIT: usize = 1024;
/// How long a connection counts as busy after its publishes last
/// outlasted a turn.
const BUSY_FOR: Duration = Duration::from_millis(100);

/// The units handling an inbound packet of `size` bytes costs.
pub(super) fn packet_units(size: usize) -> u32 {
    PACKET.saturating_add(u32::try_from(size / BYTES_PER_UNIT).unwrap_or(u32::MAX))
}

/// What a connection may still do in its current turn; shared between the
/// connection and the [`Turns`] wrapper that refills it. One pointer:
/// every connection keeps one for its life.
#[derive(Clone)]
pub(crate) struct Budget(Arc<Turn>);

struct Turn {
    left: AtomicU32,
    per_turn: u32,
}

impl Budget {
    /// A budget of `per_turn` units per poll (at least one).
    pub(crate) fn new(per_turn: u32) -> Self {
        let per_turn = per_turn.max(1);
        Self(Arc::new(Turn {
            left: AtomicU32::new(per_turn),
            per_turn,
        }))
    }

    /// Charges `units` of work done in this turn.
    pub(super) fn charge(&self, units: u32) {
        // Only the task that owns the budget charges or refills it, one poll
        // at a time: a plain load and store suffice.
        let left = self.0.left.load(Ordering::Relaxed);
        self.0
            .left
            .store(left.saturating_sub(units), Ordering::Relaxed);
    }

    /// Units left in this turn.
    pub(super) fn left(&self) -> u32 {
        self.0.left.load(Ordering::Relaxed)
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
        self.0.left.store(self.0.per_turn, Ordering::Relaxed);
    }
}

/// The lanes busy connections handle their input in (see the [module
/// docs](self)); shared by every connection of a broker.
#[derive(Clone)]
pub(crate) struct Lanes {
    lanes: Option<Arc<Semaphore>>,
    /// Times a busy connection found every lane taken.
    waits: IntCounter,
}

/// A lane held; given up when dropped.
pub(super) type Lane = OwnedSemaphorePermit;

impl Lanes {
    /// `count` lanes; 0 lets busy connections work without one. `waits`
    /// counts the times every lane was taken.
    pub(crate) fn new(count: usize, waits: IntCounter) -> Self {
        Self {
            lanes: (count > 0).then(|| Arc::new(Semaphore::new(count))),
            waits,
        }
    }

    /// Waits for a free lane (first come, first served). `None` without
    /// lanes.
    pub(super) async fn enter(&self) -> Option<Lane> {
        let lanes = self.lanes.as_ref()?;
        if let Ok(lane) = Arc::clone(lanes).try_acquire_owned() {
            return Some(lane);
        }
        self.waits.inc();
        // The semaphore is never closed.
        Arc::clone(lanes).acquire_owned().await.ok()
    }
}

/// When a connection's publishes last outlasted its turn, which makes it
/// busy for a while.
#[derive(Default)]
pub(super) struct Busy(Option<Instant>);

impl Busy {
    /// Records that the connection's turn ended with publishes waiting.
    pub(super) fn spent(&mut self) {
        self.0 = Some(Instant::now());
    }

    /// Whether that happened within the last [`BUSY_FOR`].
    pub(super) fn is_busy(&self) -> bool {
        self.0.is_some_and(|at| at.elapsed() < BUSY_FOR)
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
        let budget = Budget::new(2 * PACKET + 2);
        budget.charge(PACKET);
        budget.charge(PACKET);
        assert_eq!(budget.left(), 2);
        assert!(!budget.spent());
        budget.charge(PACKET);
        assert!(budget.spent());
        budget.charge(WRITE);
        assert_eq!(budget.left(), 0);
    }

    #[test]
    fn big_packets_cost_more() {
        assert_eq!(packet_units(2), PACKET);
        assert_eq!(packet_units(BYTES_PER_UNIT), PACKET + 1);
        assert!(packet_units(1 << 20) >= super::super::TURN_BUDGET);
    }

    #[test]
    fn spending_makes_busy_for_a_while() {
        let mut busy = Busy::default();
        assert!(!busy.is_busy());
        busy.spent();
        assert!(busy.is_busy());
        busy.0 = Instant::now().checked_sub(BUSY_FOR);
        assert!(!busy.is_busy());
    }

    #[tokio::test]
    async fn lanes_admit_in_order_and_none_is_unlimited() {
        let waits = IntCounter::new("waits", "test").expect("counter");
        assert!(Lanes::new(0, waits.clone()).enter().await.is_none());
        let lanes = Lanes::new(1, waits.clone());
        let held = lanes.enter().await.expect("a lane");
        let waiting = tokio::spawn({
            let lanes = lanes.clone();
            async move { lanes.enter().await.is_some() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the only lane is held");
        drop(held);
        assert!(waiting.await.expect("joins"));
        assert_eq!(waits.get(), 1);
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
