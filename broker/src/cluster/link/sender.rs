//! The sending end of one peer's link: one task takes the peer's queue in
//! order, opens (and reopens) the stream and cuts batches. It is the one
//! place that orders what the peer gets, so it alone writes and reads the
//! peer's hand-off log:
//!
//! - **Down** (the stream cannot open): QoS 1/2 messages go to the log,
//!   their publishers' confirmations completed once the append is on disk;
//!   QoS 0 messages are dropped (counted).
//! - **Replaying** (the stream is up, the log is not empty): the log is
//!   sent from the first record the peer has not acknowledged; QoS 1/2
//!   messages that arrive meanwhile are appended behind it, QoS 0 ones ride
//!   in the next batch.
//! - **Direct** (the log is drained): batches from the queue. A QoS 1/2
//!   message's confirmation completes on the peer's acknowledgement; a copy
//!   is kept until then, and when the stream ends first, the copies go to
//!   the log.
//!
//! A stream that takes longer than `stall` to open, to take a batch or to
//! acknowledge one is given up as if it had broken (a hung peer, a
//! partition that drops packets rather than resetting connections), so
//! that what it holds is kept before its publishers stop waiting.
//!
//! Every message gets a number, one more than the last this node gave the
//! peer (across restarts), so the peer can skip what a replay sends again:
//! a replayed message whose number is not above the last it routed. That
//! holds because messages go out in the order of their numbers, except
//! the QoS 0 ones that ride in a replay batch ahead of QoS 1/2 messages
//! numbered before them; those go unnumbered.
//! Without a hand-off log (storage off) forwarding is at most once: what a
//! down peer or a broken stream would lose is dropped, and nobody waits
//! for it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tidemq_meta::NodeId;
use tidemq_meta::channels::ChannelPool;
use tidemq_proto::grpc::v1 as pb;
use tidemq_proto::grpc::v1::broker_link_client::BrokerLinkClient;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::{info, warn};

use super::{Confirm, LinkLimits, MAX_BATCH_BYTES, Outgoing, PeerMetrics, StateCell};
use crate::cluster::Peers;
use crate::cluster::handoff::HandoffLog;
use crate::log_every::LogEvery;

/// Batches in flight on one stream before the sender waits (HTTP/2 flow
/// control pushes back past this).
const BATCHES_IN_FLIGHT: usize = 8;

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The batches a stream sent and the peer has not acknowledged yet, by
/// batch number.
type Unconfirmed = Arc<Mutex<HashMap<u64, Sent>>>;

/// A batch on its way.
struct Sent {
    at: Instant,
    /// Its QoS 1/2 messages' confirmations, each with a copy of its message
    /// when there is a hand-off log to keep it in if the batch is lost.
    waiting: Vec<(Confirm, Option<pb::ForwardedMessage>)>,
    /// A batch read from the hand-off log: the records it carries.
    replayed: Option<Range<u64>>,
}

/// How a stream's turn ended.
enum Ended {
    /// The stream ended or broke: reconnect.
    Stream,
    /// The queue closed: the link is done.
    Queue,
}

/// The sending end of one peer's link.
pub(super) struct Link {
    pub(super) state: Arc<StateCell>,
    pub(super) retry: Arc<Notify>,
    /// Streams opened so far.
    pub(super) streams: u64,
    pub(super) me: NodeId,
    pub(super) peer: NodeId,
    pub(super) peers: Arc<Peers>,
    pub(super) channels: ChannelPool,
    pub(super) limits: LinkLimits,
    pub(super) metrics: PeerMetrics,
    /// Numbers the batches of every stream.
    pub(super) batches: u64,
    /// The number the next message gets.
    pub(super) next_message: u64,
    pub(super) handoff: Option<Arc<HandoffLog>>,
}

impl Link {
    /// Connects, streams until the stream ends, keeps what it lost,
    /// reconnects. Ends when the queue closes.
    pub(super) async fn run(mut self, mut queue: mpsc::Receiver<Outgoing>) {
        let log = LogEvery::new(1000);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let Some(mut open) = self.connect(&log).await else {
                self.state.unreachable();
                if !self.wait_down(&mut queue, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            };
            backoff = FIRST_BACKOFF;
            let ended = self.stream(&mut queue, &mut open).await;
            self.state.ended(self.streams);
            let lost = open.take_unconfirmed();
            let dropped = self.keep(lost).await;
            self.metrics.link_broken.inc_by(dropped);
            if matches!(ended, Ended::Queue) {
                return;
            }
        }
    }

    /// Waits `backoff` (or a call to retry) before the next attempt to
    /// connect; what arrives meanwhile is kept or dropped. Returns whether
    /// the queue is still open.
    async fn wait_down(&mut self, queue: &mut mpsc::Receiver<Outgoing>, backoff: Duration) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        let retry = Arc::clone(&self.retry);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                () = retry.notified() => return true,
                next = queue.recv() => {
                    let Some(first) = next else { return false };
                    let mut messages = vec![self.number(first)];
                    messages.extend(self.drain(queue));
                    let dropped = self.keep(messages).await;
                    self.metrics.unreachable.inc_by(dropped);
                }
            }
        }
    }

    /// Opens the stream to the peer's current address.
    async fn connect(&mut self, log: &LogEvery) -> Option<OpenStream> {
        let addr = self.peers.addr_of(self.peer)?;
        let channel = match self.channels.get(&addr) {
            Ok(channel) => channel,
            Err(e) => {
                warn!(peer = self.peer, %addr, error = %e, "cannot reach a peer");
                return None;
            }
        };
        let mut client = BrokerLinkClient::new(channel)
            .max_encoding_message_size(MAX_BATCH_BYTES)
            .max_decoding_message_size(MAX_BATCH_BYTES);
        let (tx, rx) = mpsc::channel(BATCHES_IN_FLIGHT);
        let opened =
            tokio::time::timeout(self.limits.stall, client.forward(ReceiverStream::new(rx)))
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded("the peer did not answer"))
                });
        match opened {
            Ok(response) => {
                self.streams += 1;
                self.metrics.connects.inc();
                info!(peer = self.peer, %addr, "link to peer up");
                self.state.up(self.streams);
                let unconfirmed = Unconfirmed::default();
                let ended = CancellationToken::new();
                let acks = Acks {
                    peer: self.peer,
                    unconfirmed: Arc::clone(&unconfirmed),
                    latency: self.metrics.latency.clone(),
                    handoff: self.handoff.clone(),
                };
                tokio::spawn(acks.run(response.into_inner(), ended.clone()));
                Some(OpenStream {
                    batches: tx,
                    unconfirmed,
                    ended,
                })
            }
            Err(status) => {
                if let Some(held) = log.admit_now() {
                    warn!(peer = self.peer, %addr, error = %status, held, "cannot open the link to a peer");
                }
                None
            }
        }
    }

    /// Sends on `open` until it ends: the hand-off log first, then the
    /// queue.
    async fn stream(
        &mut self,
        queue: &mut mpsc::Receiver<Outgoing>,
        open: &mut OpenStream,
    ) -> Ended {
        if let Some(handoff) = self.handoff.clone()
            && !handoff.backlog(self.peer).is_empty()
            && !self.replay(&handoff, queue, open).await
        {
            return Ended::Stream;
        }
        let mut check = tokio::time::interval(self.limits.stall / 4);
        loop {
            let first = tokio::select! {
                message = queue.recv() => match message {
                    Some(message) => message,
                    None => return Ended::Queue,
                },
                () = open.ended.cancelled() => {
                    warn!(peer = self.peer, "link to peer closed; reconnecting");
                    return Ended::Stream;
                }
                _ = check.tick() => {
                    if open.stalled(self.limits.stall) {
                        warn!(peer = self.peer, "link to peer stalled (no acknowledgement); reconnecting");
                        return Ended::Stream;
                    }
                    continue;
                }
            };
            let mut messages = vec![self.number(first)];
            messages.extend(self.drain_batch(queue));
            let (batch, waiting) = self.direct_batch(messages);
            let sent = Sent {
                at: Instant::now(),
                waiting,
                replayed: None,
            };
            if !self.send(open, batch, sent).await {
                return Ended::Stream;
            }
        }
    }

    /// Sends the hand-off log from the first record the peer has not
    /// acknowledged to its end; what arrives meanwhile goes behind it.
    /// Returns whether the stream is still up once the log is sent.
    async fn replay(
        &mut self,
        handoff: &HandoffLog,
        queue: &mut mpsc::Receiver<Outgoing>,
        open: &OpenStream,
    ) -> bool {
        let mut next = handoff.backlog(self.peer).from;
        info!(
            peer = self.peer,
            from = next,
            "replaying the hand-off log to a peer"
        );
        loop {
            // QoS 1/2 behind the log, QoS 0 in the next batch.
            let (later, now): (Vec<_>, Vec<_>) = self
                .drain(queue)
                .into_iter()
                .partition(|out| out.confirm.is_some());
            // Each carries a confirmation: none is dropped.
            self.keep(later).await;
            let limits = self.limits;
            let replay = match handoff
                .read(self.peer, next, limits.batch_messages, limits.batch_bytes)
                .await
            {
                Ok(replay) => replay,
                Err(e) => {
                    warn!(peer = self.peer, error = %e, "cannot read the hand-off log; reconnecting");
                    return false;
                }
            };
            if replay.next == next && now.is_empty() {
                return true;
            }
            let mut messages = replay.messages;
            // Unnumbered: the receiver must not see a number above those of
            // the QoS 1/2 messages that went behind the log, or it would
            // take them for copies when they come.
            messages.extend(now.into_iter().map(|out| pb::ForwardedMessage {
                sequence: 0,
                ..out.message
            }));
            let replayed = next..replay.next;
            next = replay.next;
            let batch = pb::ForwardBatch {
                origin: self.me,
                sequence: self.next_batch(),
                messages,
                replay: true,
            };
            let sent = Sent {
                at: Instant::now(),
                waiting: Vec::new(),
                replayed: Some(replayed),
            };
            if !self.send(open, batch, sent).await {
                return false;
            }
        }
    }

    /// Sends `batch`, recording it as `sent` first (the peer's ack may come
    /// back at once); returns whether the stream took it.
    async fn send(&mut self, open: &OpenStream, batch: pb::ForwardBatch, sent: Sent) -> bool {
        let count = batch.messages.len();
        let bytes: usize = batch.messages.iter().map(|m| m.publish.len()).sum();
        open.unconfirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(batch.sequence, sent);
        let taken = tokio::select! {
            sent = open.batches.send(batch) => sent.is_ok(),
            () = open.ended.cancelled() => false,
            () = tokio::time::sleep(self.limits.stall) => false,
        };
        if !taken {
            warn!(peer = self.peer, "link to peer broken; reconnecting");
            return false;
        }
        self.metrics.batches.inc();
        self.metrics.messages.inc_by(count as u64);
        self.metrics.bytes.inc_by(bytes as u64);
        true
    }

    /// A direct batch of `messages`, and the confirmations (with copies,
    /// when there is a hand-off log) of its QoS 1/2 ones.
    fn direct_batch(
        &mut self,
        messages: Vec<Outgoing>,
    ) -> (
        pb::ForwardBatch,
        Vec<(Confirm, Option<pb::ForwardedMessage>)>,
    ) {
        let keeps = self.handoff.is_some();
        let mut waiting = Vec::new();
        let messages = messages
            .into_iter()
            .map(|out| {
                if let Some(confirm) = out.confirm {
                    waiting.push((confirm, keeps.then(|| out.message.clone())));
                }
                out.message
            })
            .collect();
        let batch = pb::ForwardBatch {
            origin: self.me,
            sequence: self.next_batch(),
            messages,
            replay: false,
        };
        (batch, waiting)
    }

    /// Keeps the QoS 1/2 messages of `lost` in the hand-off log, their
    /// confirmations completed with the append's outcome; without a log,
    /// and for QoS 0, drops them, and nobody waits. Returns how many it
    /// dropped.
    async fn keep(&mut self, lost: Vec<Outgoing>) -> u64 {
        let Some(handoff) = &self.handoff else {
            return lost.len() as u64;
        };
        let (kept, gone): (Vec<_>, Vec<_>) = lost.into_iter().partition(|o| o.confirm.is_some());
        let dropped = gone.len() as u64;
        if kept.is_empty() {
            return dropped;
        }
        let (messages, confirms): (Vec<_>, Vec<_>) =
            kept.into_iter().map(|o| (o.message, o.confirm)).unzip();
        let kept = handoff.append(self.peer, &messages).await;
        if let Err(e) = &kept {
            warn!(peer = self.peer, error = %e, messages = messages.len(), "messages for a peer refused");
        }
        for confirm in confirms.into_iter().flatten() {
            let _ = confirm.send(kept.clone());
        }
        dropped
    }

    /// What is queued now, numbered: the whole queue.
    fn drain(&mut self, queue: &mut mpsc::Receiver<Outgoing>) -> Vec<Outgoing> {
        let mut messages = Vec::new();
        while let Ok(out) = queue.try_recv() {
            messages.push(self.number(out));
        }
        messages
    }

    /// What is queued now, numbered, up to a batch's limits with the one
    /// message taken before.
    fn drain_batch(&mut self, queue: &mut mpsc::Receiver<Outgoing>) -> Vec<Outgoing> {
        let mut messages = Vec::new();
        let mut bytes = 0;
        while messages.len() + 1 < self.limits.batch_messages && bytes < self.limits.batch_bytes {
            let Ok(out) = queue.try_recv() else { break };
            bytes += out.message.publish.len();
            messages.push(self.number(out));
        }
        messages
    }

    /// `out`, taken from the queue and numbered.
    fn number(&mut self, mut out: Outgoing) -> Outgoing {
        self.metrics.queued.dec();
        out.message.sequence = self.next_message;
        self.next_message += 1;
        out
    }

    fn next_batch(&mut self) -> u64 {
        self.batches += 1;
        self.batches
    }
}

/// An open `Forward` stream: where batches go, those not acknowledged yet,
/// and the signal that the peer's side ended.
struct OpenStream {
    batches: mpsc::Sender<pb::ForwardBatch>,
    unconfirmed: Unconfirmed,
    ended: CancellationToken,
}

impl OpenStream {
    /// Whether a batch has waited longer than `stall` for its
    /// acknowledgement.
    fn stalled(&self, stall: Duration) -> bool {
        self.unconfirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|sent| sent.at.elapsed() > stall)
    }

    /// The QoS 1/2 messages of the direct batches the peer never
    /// acknowledged, in the order they were sent (a replayed batch's
    /// records are still in the log).
    fn take_unconfirmed(&self) -> Vec<Outgoing> {
        let taken = std::mem::take(
            &mut *self
                .unconfirmed
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut batches: Vec<(u64, Sent)> = taken.into_iter().collect();
        batches.sort_unstable_by_key(|(sequence, _)| *sequence);
        batches
            .into_iter()
            .flat_map(|(_, sent)| sent.waiting)
            .filter_map(|(confirm, copy)| {
                copy.map(|message| Outgoing {
                    message,
                    confirm: Some(confirm),
                })
            })
            .collect()
    }
}

/// The receiving side of a stream's acknowledgements.
struct Acks {
    peer: NodeId,
    unconfirmed: Unconfirmed,
    latency: prometheus::Histogram,
    handoff: Option<Arc<HandoffLog>>,
}

impl Acks {
    /// Completes the confirmations of the batches the peer acknowledges
    /// (timing each batch's round trip) and moves the hand-off log's
    /// acknowledged point, until the peer's side ends; then says so.
    async fn run(self, mut acks: Streaming<pb::ForwardAck>, ended: CancellationToken) {
        // The end of the highest replayed batch acknowledged so far.
        let mut replayed_to = 0;
        while let Ok(Some(ack)) = acks.message().await {
            let (sent, unacked_replay) = {
                let mut unconfirmed = self
                    .unconfirmed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let sent = unconfirmed.remove(&ack.sequence);
                let first = unconfirmed
                    .values()
                    .filter_map(|s| s.replayed.as_ref().map(|r| r.start))
                    .min();
                (sent, first)
            };
            let Some(sent) = sent else { continue };
            self.latency.observe(sent.at.elapsed().as_secs_f64());
            for (confirm, _) in sent.waiting {
                let _ = confirm.send(Ok(()));
            }
            if let (Some(range), Some(handoff)) = (sent.replayed, &self.handoff) {
                replayed_to = replayed_to.max(range.end);
                let upto = unacked_replay.map_or(replayed_to, |first| first.min(replayed_to));
                let count = range.end - range.start;
                handoff.acknowledged(self.peer, upto, count).await;
            }
        }
        ended.cancel();
    }
}
