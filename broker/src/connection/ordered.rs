//! A futures queue that holds memory only while it is used.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesOrdered, Stream, StreamExt};

/// A [`FuturesOrdered`] made on first use: an empty `FuturesOrdered`
/// already holds two allocations (its ready queue and a stub task), and
/// most connections never queue anything (nothing to read back from the
/// store, no response waiting for a store write).
/// [`Ordered::release_if_empty`] gives them back once the connection is
/// idle again. Boxed: inline, the queue's own 64 bytes would stay in
/// every connection.
pub(crate) struct Ordered<F: Future>(Option<Box<FuturesOrdered<F>>>);

impl<F: Future> Ordered<F> {
    /// An empty queue, holding no memory.
    pub(crate) fn new() -> Self {
        Self(None)
    }

    /// Queues `future`; its output comes after those queued before it.
    pub(crate) fn push_back(&mut self, future: F) {
        self.0
            .get_or_insert_with(|| Box::new(FuturesOrdered::new()))
            .push_back(future);
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|queue| queue.is_empty())
    }

    /// Gives back the queue's memory if nothing is queued.
    pub(crate) fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

impl<F: Future> Stream for Ordered<F> {
    type Item = F::Output;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        match &mut self.0 {
            Some(queue) => queue.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use futures_util::future::{Ready, ready};

    use super::Ordered;

    #[tokio::test]
    async fn outputs_come_in_order_and_an_empty_queue_holds_nothing() {
        let mut queue: Ordered<Ready<u32>> = Ordered::new();
        assert!(queue.is_empty() && queue.0.is_none());
        assert_eq!(queue.next().await, None);
        queue.push_back(ready(1));
        queue.push_back(ready(2));
        queue.release_if_empty();
        assert!(!queue.is_empty(), "kept while it holds futures");
        assert_eq!(queue.next().await, Some(1));
        assert_eq!(queue.next().await, Some(2));
        assert!(queue.is_empty());
        queue.release_if_empty();
        assert!(queue.0.is_none(), "given back");
    }
}
