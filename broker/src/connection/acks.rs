//! "Acknowledge in PUBLISH order, after the write": the one place that rule
//! lives.
//!
//! Every response a connection sends to a packet of its client goes through
//! [`AckQueue::push`], whether or not it waits for the message store. A
//! response with nothing to wait for leaves at once when nothing is queued
//! before it; otherwise it queues behind the responses that arrived first.
//! The message records of one read pass of the socket (every PUBLISH whose
//! message must be stored) collect here and go to the store as one writer
//! job at [`AckQueue::end_pass`], or as soon as a response that does not
//! belong to that batch is pushed, so that order is kept.
//!
//! What a finished write releases comes back as [`Done`] from
//! [`AckQueue::next`], strictly in push order. A failed write ends the
//! connection, unless every response it held says how to refuse instead
//! ([`Work::refusal`]: PUBACK/PUBREC 0x97 in 5.0, nothing for QoS 0): then
//! those refusals are released in its place and the connection goes on,
//! never having acknowledged what was not written. When a connection ends, the
//! queue [`finish`](AckQueue::finish)es on its own, so nothing already read
//! from the socket is lost: the records are sent, the writes complete, and
//! their deliveries are queued for their subscribers.
//!
//! The queue is bounded by its user, who asks [`AckQueue::len`] (responses
//! held) and [`AckQueue::unacked_publishes`] (QoS 1/2 messages not yet
//! acknowledged, which count against the receive maximum).

use super::ordered::Ordered;
use futures_util::future::{self, BoxFuture};
use futures_util::{FutureExt, StreamExt};
use tidemq_proto::mqtt::Packet;

use crate::durable::DurableError;
use crate::message::Delivery;

/// Where the records of one read pass are written. The store in the broker;
/// a stand-in in the unit tests.
pub(crate) trait RecordSink: Send + Sync + 'static {
    /// A message record waiting to be written.
    type Record: Send + 'static;
    /// What a written record releases (the deliveries to queue).
    type Stored: Send + 'static;
    /// Writes `records` as one job; resolves to one `Stored` per record, in
    /// order, once they are all on disk.
    fn write(
        &self,
        records: Vec<Self::Record>,
    ) -> BoxFuture<'static, Result<Vec<Self::Stored>, DurableError>>;
}

/// What must be on disk before a response may leave.
pub(crate) enum Write<R, S> {
    /// Nothing.
    None,
    /// A message record, written with the other records of the read pass.
    Record(R),
    /// A write of its own; it may release deliveries when it completes.
    Alone(BoxFuture<'static, Result<Option<S>, DurableError>>),
}

/// A response and what it waits for.
pub(crate) struct Work<R, S> {
    /// The write to wait for.
    pub write: Write<R, S>,
    /// The packet to send once it is done.
    pub response: Option<Packet>,
    /// Deliveries to queue after the response (retained messages after
    /// SUBACK).
    pub then: Vec<Delivery>,
    /// The packet id of an inbound QoS 2 message, recorded as received only
    /// once its write succeeded.
    pub qos2: Option<u16>,
    /// Whether this is a QoS 1/2 PUBLISH still unacknowledged until it is
    /// done (it counts against the receive maximum meanwhile).
    pub publish: bool,
    /// What to answer instead if the write fails (`Some(None)`: nothing);
    /// `None` ends the connection.
    pub refusal: Option<Option<Packet>>,
}

impl<R, S> Work<R, S> {
    /// A response that waits for `write`.
    pub(crate) fn after(write: Write<R, S>, response: Option<Packet>) -> Self {
        Self {
            write,
            response,
            then: Vec::new(),
            qos2: None,
            publish: false,
            refusal: None,
        }
    }

    /// A response that waits for nothing but the responses before it.
    pub(crate) fn reply(response: Packet) -> Self {
        Self::after(Write::None, Some(response))
    }
}

/// A response released by its write: the caller records, sends and queues
/// what it holds, in this order.
pub(crate) struct Done<S> {
    /// What the write released (deliveries to queue on their sessions).
    pub stored: Option<S>,
    /// See [`Work::qos2`].
    pub qos2: Option<u16>,
    /// The packet to send.
    pub response: Option<Packet>,
    /// See [`Work::then`].
    pub then: Vec<Delivery>,
    /// See [`Work::publish`].
    pub publish: bool,
    /// The write failed and `response` is the refusal: nothing was stored.
    pub refused: bool,
}

fn done<R, S>(stored: Option<S>, work: Work<R, S>) -> Done<S> {
    Done {
        stored,
        qos2: work.qos2,
        response: work.response,
        then: work.then,
        publish: work.publish,
        refused: false,
    }
}

/// The responses of works whose write failed with `error`: their refusals
/// when every one has one, otherwise the error (the connection ends).
fn refused<R, S>(
    works: Vec<Work<R, S>>,
    error: DurableError,
) -> Result<Vec<Done<S>>, DurableError> {
    if works.iter().any(|w| w.refusal.is_none()) {
        return Err(error);
    }
    Ok(works
        .into_iter()
        .map(|work| Done {
            stored: None,
            // Kept so the queue stops holding the id; cleared before the
            // caller sees it (the message was not received).
            qos2: work.qos2,
            response: work.refusal.flatten(),
            then: Vec::new(),
            publish: work.publish,
            refused: true,
        })
        .collect())
}

/// The work of a queue writing through sink `K`.
type SinkWork<K> = Work<<K as RecordSink>::Record, <K as RecordSink>::Stored>;

/// One queued unit: the responses of a batch of records, or of one write.
type Step<S> = BoxFuture<'static, Result<Vec<Done<S>>, DurableError>>;

/// Responses waiting for their writes; see the [module docs](self).
pub(crate) struct AckQueue<K: RecordSink> {
    sink: K,
    /// Records of this read pass, and the work each one answers (same
    /// index).
    records: Vec<K::Record>,
    works: Vec<SinkWork<K>>,
    steps: Ordered<Step<K::Stored>>,
    /// Responses held, in `records` and `steps` (at most the receive
    /// maximum, a `u16`, and a few more: see `Connection::max_held`).
    held: u32,
    /// QoS 1/2 PUBLISH packets held (unacknowledged).
    publishes: u32,
    /// Inbound QoS 2 packet ids held (their write is not done yet).
    qos2: Vec<u16>,
}

impl<K: RecordSink> AckQueue<K> {
    /// An empty queue writing records through `sink`.
    pub(crate) fn new(sink: K) -> Self {
        Self {
            sink,
            records: Vec::new(),
            works: Vec::new(),
            steps: Ordered::new(),
            held: 0,
            publishes: 0,
            qos2: Vec::new(),
        }
    }

    /// The one entry point: queues `work`, or hands it back as [`Done`] when
    /// it waits for nothing and nothing is queued before it.
    pub(crate) fn push(&mut self, mut work: SinkWork<K>) -> Option<Done<K::Stored>> {
        match std::mem::replace(&mut work.write, Write::None) {
            Write::Record(record) => {
                self.hold(&work);
                self.records.push(record);
                self.works.push(work);
                None
            }
            Write::None if self.is_empty() => Some(done(None, work)),
            Write::None => {
                self.end_pass();
                self.hold(&work);
                let released = Ok(vec![done(None, work)]);
                self.steps.push_back(future::ready(released).boxed());
                None
            }
            Write::Alone(write) => {
                self.end_pass();
                self.hold(&work);
                self.steps.push_back(
                    async move {
                        match write.await {
                            Ok(stored) => Ok(vec![done(stored, work)]),
                            Err(e) => refused(vec![work], e),
                        }
                    }
                    .boxed(),
                );
                None
            }
        }
    }

    /// Sends the records of this read pass to the store as one job.
    pub(crate) fn end_pass(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let works = std::mem::take(&mut self.works);
        let written = self.sink.write(std::mem::take(&mut self.records));
        self.steps.push_back(
            async move {
                match written.await {
                    Ok(stored) => Ok(stored
                        .into_iter()
                        .zip(works)
                        .map(|(stored, work)| done(Some(stored), work))
                        .collect()),
                    Err(e) => refused(works, e),
                }
            }
            .boxed(),
        );
    }

    /// The next responses released, in push order; `None` when nothing is
    /// waiting for a write. An error means a write failed: the connection
    /// must end, and nothing after it is released. Cancel safe.
    pub(crate) async fn next(&mut self) -> Option<Result<Vec<Done<K::Stored>>, DurableError>> {
        let mut released = self.steps.next().await?;
        if let Ok(done) = &mut released {
            for d in done {
                self.release(d);
                forget_refused(d);
            }
        }
        Some(released)
    }

    /// Whether no response is held (queued records included).
    pub(crate) fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.records.is_empty()
    }

    /// Gives back the memory of an empty queue (its vectors keep their
    /// capacity between read passes).
    pub(crate) fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.steps.release_if_empty();
            self.records.shrink_to_fit();
            self.works.shrink_to_fit();
            self.qos2.shrink_to_fit();
        }
    }

    /// Whether a step is waiting for a write (what [`AckQueue::next`]
    /// waits on).
    pub(crate) fn has_steps(&self) -> bool {
        !self.steps.is_empty()
    }

    /// Responses held.
    pub(crate) fn len(&self) -> usize {
        self.held as usize
    }

    /// QoS 1/2 PUBLISH packets held: received, not yet acknowledged.
    pub(crate) fn unacked_publishes(&self) -> usize {
        self.publishes as usize
    }

    /// Whether an inbound QoS 2 message with this packet id is being written.
    pub(crate) fn qos2_in_progress(&self, packet_id: u16) -> bool {
        self.qos2.contains(&packet_id)
    }

    /// Finishes everything held without a connection to answer on: sends
    /// the records, waits for every write, and resolves to what they
    /// released (up to the first failure, which is returned last).
    pub(crate) fn finish(
        mut self,
    ) -> impl Future<Output = (Vec<Done<K::Stored>>, Option<DurableError>)> + Send + 'static {
        self.end_pass();
        let mut steps = self.steps;
        async move {
            let mut released = Vec::new();
            while let Some(step) = steps.next().await {
                match step {
                    Ok(done) => released.extend(done.into_iter().map(|mut d| {
                        forget_refused(&mut d);
                        d
                    })),
                    Err(e) => return (released, Some(e)),
                }
            }
            (released, None)
        }
    }

    fn hold(&mut self, work: &SinkWork<K>) {
        self.held += 1;
        self.publishes += u32::from(work.publish);
        self.qos2.extend(work.qos2);
    }

    fn release(&mut self, done: &Done<K::Stored>) {
        self.held = self.held.saturating_sub(1);
        self.publishes = self.publishes.saturating_sub(u32::from(done.publish));
        if let Some(id) = done.qos2 {
            self.qos2.retain(|held| *held != id);
        }
    }
}

/// A refused QoS 2 message was not received: its packet id is not
/// recorded.
fn forget_refused<S>(done: &mut Done<S>) {
    if done.refused {
        done.qos2 = None;
    }
}

#[cfg(test)]
mod tests;
