//! Outbound links: one long-lived `BrokerLink.Forward` stream per peer,
//! fed from a bounded queue in publish order and cut into batches by count
//! and bytes, like the storage writer's.
//!
//! A link opens its stream when it is first used (or at start, when the
//! peer's hand-off log holds messages) and keeps it: it notices a stream
//! that ends (even an idle one) and reconnects by itself. A QoS 1/2
//! message carries a confirmation, completed when the peer acknowledges its
//! batch (routed, and stored for its persistent sessions) or, when the peer
//! cannot be reached, once the message is in the peer's hand-off log
//! ([`sender`] says how).

mod sender;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use tidemq_meta::NodeId;
use tidemq_meta::channels::ChannelPool;
use tidemq_proto::grpc::v1 as pb;
use tokio::sync::{Notify, mpsc, oneshot};

use self::sender::Link;
use super::Peers;
use super::handoff::{ForwardFailure, HandoffLog};

/// Largest batch a link sends or accepts.
pub(crate) const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// The limits of every link.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkLimits {
    pub(crate) queue_messages: usize,
    pub(crate) batch_messages: usize,
    pub(crate) batch_bytes: usize,
    /// How long a stream may go without taking or acknowledging a batch
    /// (or take to open) before it is given up as stalled.
    pub(crate) stall: Duration,
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
    /// Set for QoS 1/2 messages.
    pub(crate) confirm: Option<Confirm>,
}

/// Completed when the peer has routed a QoS 1/2 message, or it is kept in
/// the peer's hand-off log (or could not be): what its publisher's
/// acknowledgement waits for. Dropped when nothing keeps it.
pub(crate) type Confirm = oneshot::Sender<Result<(), ForwardFailure>>;

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
    handoff: Option<Arc<HandoffLog>>,
    /// The number of the first message each link sends.
    first_message: u64,
}

impl Links {
    /// The links of node `me`; with a hand-off log, the links to the peers
    /// it holds messages for start at once (on the calling task's runtime).
    pub(crate) async fn new(
        me: NodeId,
        peers: Arc<Peers>,
        channels: ChannelPool,
        limits: LinkLimits,
        metrics: LinkMetrics,
        handoff: Option<Arc<HandoffLog>>,
    ) -> Self {
        // Above every number this node gave before: its last run's clock,
        // and what its hand-off logs hold.
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| {
                u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
            });
        let kept = match &handoff {
            Some(log) => log.last_sequence().await + 1,
            None => 1,
        };
        let links = Links {
            me,
            queues: DashMap::new(),
            peers,
            channels,
            limits,
            metrics,
            first_message: clock.max(kept),
            handoff,
        };
        for peer in links.handoff.iter().flat_map(|log| log.backlogged()) {
            links
                .queues
                .entry(peer)
                .or_insert_with(|| links.start(peer));
        }
        links
    }

    /// Whether what cannot reach a peer is kept for it.
    pub(crate) fn hands_off(&self) -> bool {
        self.handoff.is_some()
    }

    /// The messages `peer`'s hand-off log holds that it has not
    /// acknowledged.
    pub(crate) fn handoff_backlog(&self, peer: NodeId) -> u64 {
        self.handoff
            .as_ref()
            .map_or(0, |log| log.backlog(peer).messages())
    }

    /// Closes the hand-off logs (their I/O thread) at shutdown.
    pub(crate) async fn close(&self) {
        if let Some(log) = &self.handoff {
            log.close().await;
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

    /// Queues a barrier for `peer` behind everything queued for it so far;
    /// the receiver completes once the peer acknowledged it (having routed
    /// all before it) or it is in the peer's hand-off log. `None` when no
    /// link to `peer` was ever used: nothing is queued for it.
    pub(crate) fn barrier(
        &self,
        peer: NodeId,
    ) -> Option<oneshot::Receiver<Result<(), ForwardFailure>>> {
        let link = self.queues.get(&peer)?;
        let (confirm, done) = oneshot::channel();
        let barrier = Outgoing {
            message: pb::ForwardedMessage {
                barrier: true,
                ..pb::ForwardedMessage::default()
            },
            confirm: Some(confirm),
        };
        // A full queue drops it: the caller sees the receiver close.
        if link.queue.try_send(barrier).is_ok() {
            link.metrics.queued.inc();
        }
        Some(done)
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
            batches: 0,
            next_message: self.first_message,
            handoff: self.handoff.clone(),
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
