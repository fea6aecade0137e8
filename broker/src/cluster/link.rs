//! Outbound links: one long-lived `BrokerLink.Forward` stream per peer,
//! fed from a bounded queue in publish order and cut into batches by count
//! and bytes, like the storage writer's.
//!
//! A link opens its stream when it is first used and keeps it: it notices
//! a stream that ends (even an idle one) and reconnects by itself, and
//! while it cannot, what is queued for the peer is dropped. What was in a
//! batch the stream lost is lost (forwarding is at most once until the
//! hand-off logs of `docs/cluster.md` exist). A QoS 1/2
//! message carries a confirmation, completed when the peer acknowledges its
//! batch (routed, and stored for its persistent sessions); a lost batch
//! drops its confirmations, so nobody waits for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use tidemq_meta::NodeId;
use tidemq_meta::channels::ChannelPool;
use tidemq_proto::grpc::v1 as pb;
use tidemq_proto::grpc::v1::broker_link_client::BrokerLinkClient;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing::{info, warn};

use super::Peers;
use crate::log_every::LogEvery;

/// Batches in flight on one stream before the sender waits (HTTP/2 flow
/// control pushes back past this).
const BATCHES_IN_FLIGHT: usize = 8;

/// Largest batch a link sends or accepts.
pub(crate) const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// The limits of every link.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkLimits {
    pub(crate) queue_messages: usize,
    pub(crate) batch_messages: usize,
    pub(crate) batch_bytes: usize,
}

/// Per-peer link counters.
#[derive(Clone)]
pub(crate) struct LinkMetrics {
    pub(crate) messages: IntCounterVec,
    pub(crate) bytes: IntCounterVec,
    pub(crate) batches: IntCounterVec,
    pub(crate) dropped: IntCounterVec,
    pub(crate) connects: IntCounterVec,
    pub(crate) queued: IntGaugeVec,
    pub(crate) latency: prometheus::HistogramVec,
}

impl LinkMetrics {
    /// The series of `peer`, looked up once for its link's life.
    fn of(&self, peer: NodeId) -> PeerMetrics {
        let label = peer.to_string();
        let one = [label.as_str()];
        PeerMetrics {
            messages: self.messages.with_label_values(&one),
            bytes: self.bytes.with_label_values(&one),
            batches: self.batches.with_label_values(&one),
            queue_full: self
                .dropped
                .with_label_values(&[label.as_str(), "queue_full"]),
            peer_down: self
                .dropped
                .with_label_values(&[label.as_str(), "peer_down"]),
            unreachable: self
                .dropped
                .with_label_values(&[label.as_str(), "unreachable"]),
            link_broken: self
                .dropped
                .with_label_values(&[label.as_str(), "link_broken"]),
            connects: self.connects.with_label_values(&one),
            queued: self.queued.with_label_values(&one),
            latency: self.latency.with_label_values(&one),
        }
    }
}

/// One peer's series of [`LinkMetrics`].
#[derive(Clone)]
struct PeerMetrics {
    messages: IntCounter,
    bytes: IntCounter,
    batches: IntCounter,
    queue_full: IntCounter,
    peer_down: IntCounter,
    unreachable: IntCounter,
    link_broken: IntCounter,
    connects: IntCounter,
    queued: IntGauge,
    latency: prometheus::Histogram,
}

/// A message for a peer, and who waits for the peer to confirm it.
pub(crate) struct Outgoing {
    pub(crate) message: pb::ForwardedMessage,
    pub(crate) confirm: Option<oneshot::Sender<()>>,
}

/// The batches a stream sent and the peer has not acknowledged yet, by
/// batch sequence number: when each went, and its messages'
/// confirmations; dropped with the stream.
type Unconfirmed = Arc<Mutex<HashMap<u64, Sent>>>;

/// A batch on its way.
struct Sent {
    at: std::time::Instant,
    confirms: Vec<oneshot::Sender<()>>,
}

/// Why a message did not go into a peer's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotQueued {
    QueueFull,
}

/// Where a link stands, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// Not opened yet: nothing was sent to the peer.
    Idle,
    /// Its stream is open.
    Up,
    /// Its last attempt to open or use the stream failed.
    Down,
}

impl LinkState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            LinkState::Idle => "idle",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

/// A link's queue and its state, shared by the link task and [`Links`].
#[derive(Clone)]
struct LinkHandle {
    queue: mpsc::Sender<Outgoing>,
    state: Arc<StateCell>,
    /// Cuts a reconnect's backoff short.
    retry: Arc<Notify>,
    metrics: PeerMetrics,
}

/// A [`LinkState`] and the number of the stream it is about, so that the
/// end of an old stream cannot mark its successor down.
#[derive(Default)]
struct StateCell(AtomicU64);

impl StateCell {
    fn get(&self) -> LinkState {
        match self.0.load(Ordering::Relaxed) & 0xff {
            s if s == LinkState::Up as u64 => LinkState::Up,
            s if s == LinkState::Down as u64 => LinkState::Down,
            _ => LinkState::Idle,
        }
    }

    /// Stream `stream` is up.
    fn up(&self, stream: u64) {
        self.0
            .store(stream << 8 | LinkState::Up as u64, Ordering::Relaxed);
    }

    /// Stream `stream` ended, unless a newer one is up already.
    fn ended(&self, stream: u64) {
        let up = stream << 8 | LinkState::Up as u64;
        let down = stream << 8 | LinkState::Down as u64;
        let _ = self
            .0
            .compare_exchange(up, down, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// No stream could be opened.
    fn unreachable(&self) {
        self.0.store(LinkState::Down as u64, Ordering::Relaxed);
    }
}

/// The queues of the links to every peer, created on first use.
pub(crate) struct Links {
    me: NodeId,
    queues: DashMap<NodeId, LinkHandle>,
    peers: Arc<Peers>,
    channels: ChannelPool,
    limits: LinkLimits,
    metrics: LinkMetrics,
}

impl Links {
    pub(crate) fn new(
        me: NodeId,
        peers: Arc<Peers>,
        channels: ChannelPool,
        limits: LinkLimits,
        metrics: LinkMetrics,
    ) -> Self {
        Links {
            me,
            queues: DashMap::new(),
            peers,
            channels,
            limits,
            metrics,
        }
    }

    /// Queues `message` for `peer`, starting its link on first use (on the
    /// calling task's runtime).
    pub(crate) fn send(&self, peer: NodeId, message: Outgoing) -> Result<(), NotQueued> {
        let link = self.queues.entry(peer).or_insert_with(|| self.start(peer));
        match link.queue.try_send(message) {
            Ok(()) => {
                link.metrics.queued.inc();
                Ok(())
            }
            Err(_) => {
                link.metrics.queue_full.inc();
                Err(NotQueued::QueueFull)
            }
        }
    }

    /// Whether the link to `peer` could not open or lost its stream and has
    /// not reopened it yet.
    pub(crate) fn is_down(&self, peer: NodeId) -> bool {
        self.queues
            .get(&peer)
            .is_some_and(|handle| handle.state.get() == LinkState::Down)
    }

    /// Waits until the link to `peer` is not down (reconnecting at once if
    /// it is), until `deadline` at most; returns whether it is.
    pub(crate) async fn ensure_up(&self, peer: NodeId, deadline: tokio::time::Instant) -> bool {
        let handle = self
            .queues
            .entry(peer)
            .or_insert_with(|| self.start(peer))
            .clone();
        while handle.state.get() == LinkState::Down {
            handle.retry.notify_one();
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Counts a message for `peer` not sent because its link is down.
    pub(crate) fn passed_over(&self, peer: NodeId) {
        if let Some(link) = self.queues.get(&peer) {
            link.metrics.peer_down.inc();
        }
    }

    /// The state of the link to `peer` and the messages queued for it.
    pub(crate) fn state(&self, peer: NodeId) -> (LinkState, usize) {
        let Some(handle) = self.queues.get(&peer) else {
            return (LinkState::Idle, 0);
        };
        let state = handle.state.get();
        let queued = handle.queue.max_capacity() - handle.queue.capacity();
        (state, queued)
    }

    fn start(&self, peer: NodeId) -> LinkHandle {
        let (tx, rx) = mpsc::channel(self.limits.queue_messages);
        let state = Arc::new(StateCell::default());
        let retry = Arc::new(Notify::new());
        let metrics = self.metrics.of(peer);
        let link = Link {
            state: Arc::clone(&state),
            retry: Arc::clone(&retry),
            streams: 0,
            me: self.me,
            peer,
            peers: Arc::clone(&self.peers),
            channels: self.channels.clone(),
            limits: self.limits,
            metrics: metrics.clone(),
            sequence: 0,
        };
        tokio::spawn(link.run(rx));
        LinkHandle {
            queue: tx,
            state,
            retry,
            metrics,
        }
    }
}

/// The sending end of one peer's link.
struct Link {
    state: Arc<StateCell>,
    retry: Arc<Notify>,
    /// Streams opened so far.
    streams: u64,
    me: NodeId,
    peer: NodeId,
    peers: Arc<Peers>,
    channels: ChannelPool,
    limits: LinkLimits,
    metrics: PeerMetrics,
    sequence: u64,
}

impl Link {
    /// Connects, streams until the stream ends, reconnects; while the peer
    /// cannot be reached, what is queued for it is dropped. Ends when the
    /// queue closes.
    async fn run(mut self, mut queue: mpsc::Receiver<Outgoing>) {
        let log = LogEvery::new(1000);
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(open) = self.connect(&log).await else {
                // Nobody waits on a peer that cannot be reached (until the
                // hand-off logs exist): everything queued goes.
                self.state.unreachable();
                let mut lost = 0;
                while queue.try_recv().is_ok() {
                    lost += 1;
                }
                self.taken(lost);
                self.metrics.unreachable.inc_by(lost as u64);
                if queue.is_closed() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = self.retry.notified() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            };
            backoff = Duration::from_millis(50);
            let queue_open = self.stream(&mut queue, open).await;
            self.state.ended(self.streams);
            if !queue_open {
                return;
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
        match client.forward(ReceiverStream::new(rx)).await {
            Ok(response) => {
                self.streams += 1;
                self.metrics.connects.inc();
                info!(peer = self.peer, %addr, "link to peer up");
                self.state.up(self.streams);
                let unconfirmed = Unconfirmed::default();
                let (ended_tx, ended) = oneshot::channel();
                tokio::spawn(confirm_acks(
                    response.into_inner(),
                    Arc::clone(&unconfirmed),
                    self.metrics.latency.clone(),
                    ended_tx,
                ));
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

    /// Sends batches on `open` until it ends; returns whether the queue is
    /// still open.
    async fn stream(&mut self, queue: &mut mpsc::Receiver<Outgoing>, mut open: OpenStream) -> bool {
        loop {
            let first = tokio::select! {
                message = queue.recv() => match message {
                    Some(message) => message,
                    None => return false,
                },
                _ = &mut open.ended => {
                    warn!(peer = self.peer, "link to peer closed; reconnecting");
                    return true;
                }
            };
            self.taken(1);
            let (batch, confirms, bytes) = self.batch(first, queue);
            let count = batch.messages.len();
            // Before the send: the peer's ack may come back at once.
            let sent = Sent {
                at: std::time::Instant::now(),
                confirms,
            };
            open.unconfirmed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(batch.sequence, sent);
            if open.batches.send(batch).await.is_err() {
                warn!(
                    peer = self.peer,
                    lost = count,
                    "link to peer broken; reconnecting"
                );
                self.metrics.link_broken.inc_by(count as u64);
                return true;
            }
            self.metrics.batches.inc();
            self.metrics.messages.inc_by(count as u64);
            self.metrics.bytes.inc_by(bytes as u64);
        }
    }

    /// `first` and what follows it in the queue, up to a batch's limits:
    /// the batch, its messages' confirmations and its PUBLISH bytes.
    fn batch(
        &mut self,
        first: Outgoing,
        queue: &mut mpsc::Receiver<Outgoing>,
    ) -> (pb::ForwardBatch, Vec<oneshot::Sender<()>>, usize) {
        let mut bytes = 0;
        let mut messages = Vec::new();
        let mut confirms = Vec::new();
        let mut next = Some(first);
        while let Some(out) = next.take() {
            bytes += out.message.publish.len();
            messages.push(out.message);
            confirms.extend(out.confirm);
            if messages.len() < self.limits.batch_messages && bytes < self.limits.batch_bytes {
                next = queue.try_recv().ok();
            }
        }
        self.taken(messages.len() - 1);
        self.sequence += 1;
        let batch = pb::ForwardBatch {
            origin: self.me,
            sequence: self.sequence,
            messages,
        };
        (batch, confirms, bytes)
    }

    fn taken(&self, count: usize) {
        self.metrics.queued.sub(count as i64);
    }
}

/// An open `Forward` stream: where batches go, the confirmations of those
/// not acknowledged yet, and the signal that the peer's side ended.
struct OpenStream {
    batches: mpsc::Sender<pb::ForwardBatch>,
    unconfirmed: Unconfirmed,
    ended: oneshot::Receiver<()>,
}

/// Completes the confirmations of the batches the peer acknowledges (and
/// times each batch's round trip), until its side of the stream ends; then
/// drops the rest (they never will be) and says so on `ended`.
async fn confirm_acks(
    mut acks: Streaming<pb::ForwardAck>,
    unconfirmed: Unconfirmed,
    latency: prometheus::Histogram,
    ended: oneshot::Sender<()>,
) {
    while let Ok(Some(ack)) = acks.message().await {
        let done = unconfirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&ack.sequence);
        let Some(sent) = done else { continue };
        latency.observe(sent.at.elapsed().as_secs_f64());
        for confirm in sent.confirms {
            let _ = confirm.send(());
        }
    }
    unconfirmed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    let _ = ended.send(());
}
