//! Waiting idle: the state most of an IoT broker's connections spend their
//! lives in.
//!
//! A connection that has had nothing to do for a while (no packet, no
//! delivery, nothing in flight either way, no bytes buffered) gives back its
//! buffers and leaves the working loop, whose `select!` over every source
//! of work, with its timers and notifications, is the largest state the
//! connection's task has. It then waits for the few things that can wake
//! it (input, a delivery queued, a takeover, shutdown, the keep alive
//! running out) in a state a fraction of that size, and goes back to work
//! on the first of them. The working loop's state lives on the heap only
//! while it runs, so an idle connection's task is sized for this wait.

use std::future::{Future, poll_fn};
use std::task::Poll;

use prometheus::IntGauge;

use super::{Connection, End, Io};

impl Connection {
    /// Whether the connection can wait idle: nothing in flight or held
    /// back, no bytes or memory in either buffer, and a transport that
    /// can wait for input without a buffer.
    pub(super) fn quiet(&self, io: &Io) -> bool {
        self.acks.is_empty()
            && self.loading.is_empty()
            && !self.input_held
            && io.read_buf.capacity() == 0
            && io.write_buf.capacity() == 0
            && !io.writer.pending()
            && io.reader.waits_unbuffered()
    }

    /// Gives back what the connection keeps between packets while it is
    /// working: futures queues, vectors kept for the next read pass, the
    /// room of the session's emptied queues.
    pub(super) fn release_idle_state(&mut self) {
        self.acks.release_if_empty();
        self.loading.release_if_empty();
        self.completions.shrink_to_fit();
        self.session.lock().shrink_idle();
    }

    /// Waits idle (see the [module docs](self)) until there is something to
    /// do (`None`: back to work) or the connection ends. Polled by hand:
    /// the wait keeps no future of its own but the keep-alive timer.
    pub(super) async fn idle(&mut self, io: &mut Io) -> Option<End> {
        let _idle = Counted::new(&self.shared.metrics.connections_idle);
        let keep_alive = self
            .limits
            .keep_alive()
            .map(|k| tokio::time::sleep_until((self.last_packet + k + k / 2).into()));
        tokio::pin!(keep_alive);
        poll_fn(|cx| {
            // A delivery queued, a takeover (seen here: the ring is taken),
            // or the broker shutting down (it rings every session: the
            // working loop sees it). A ring while the connection was
            // working was kept: this is ready at once.
            if self.session.doorbell.poll_rung(cx).is_ready() {
                return Poll::Ready(End::taken_over(&self.session, self.connection_id));
            }
            // Input, the end of the stream or an error: the working loop
            // reads it.
            if io.reader.poll_input(cx).is_ready() {
                return Poll::Ready(None);
            }
            match keep_alive.as_mut().as_pin_mut().map(|timer| timer.poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Some(End::KeepAliveTimeout)),
                _ => Poll::Pending,
            }
        })
        .await
    }
}

/// Counts itself in a gauge while it lives.
struct Counted<'a>(&'a IntGauge);

impl<'a> Counted<'a> {
    fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::super::{Connection, Io, serve};

    fn serve_size<A, B, C, D, F: Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
        size_of::<F>()
    }

    fn method_size<'a, F: Future + 'a>(
        _: impl FnOnce(&'a mut Connection, &'a mut Io) -> F,
    ) -> usize {
        size_of::<F>()
    }

    /// The connection's task is sized for the idle wait, the state most
    /// connections spend their lives in: the working loop (over 1 KB) and
    /// the opening steps must stay out of it, and the wait itself small.
    #[test]
    fn an_idle_connection_task_stays_small() {
        let (serve, idle, work) = (
            serve_size(serve),
            method_size(|c, i| c.idle(i)),
            method_size(|c, i| c.work(i)),
        );
        println!("serve {serve}, idle {idle}, work {work}");
        assert!(idle <= 256, "idle wait: {idle} bytes");
        assert!(
            serve <= idle + 64,
            "serve: {serve} bytes, more than the idle wait's {idle} and the box"
        );
        assert!(
            work > serve,
            "working loop {work} bytes, inline in serve's {serve}?"
        );
    }
}
