//! Retained messages across the cluster: every node's retained writes go
//! to the metadata Raft group, and every node applies them, in commit
//! order, into its [`RetainedStore`].
//!
//! A publish sets its retained message in this node's store at once and
//! hands it to the [`RetainedWriter`], which keeps the last wish per topic
//! and sends what is pending as one `SetRetained` at a time, in order,
//! retried until it commits. A QoS 1/2 publisher's acknowledgement waits
//! until the write has committed and every other member has applied it
//! (`RoutesApplied` with the write's index), at most `cluster.route_wait_ms`:
//! after its PUBACK, a subscriber on any node gets the message. A write
//! that does not commit in time (no majority) fails the acknowledgement.
//! Consistency rule: the last write in the metadata group's commit order
//! wins, not a clock ([`crate::router::RetainedStore`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use prometheus::{IntCounter, IntGauge};
use tidemq_meta::{MetaClient, MetaError, NodeId, RetainedEntry};
use tidemq_proto::grpc::v1 as pb;
use tidemq_proto::mqtt::Publish;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use super::Cluster;
use crate::durable::record::{self, Record};
use crate::durable::{self, DurableError, DurableStore};
use crate::log_every::LogEvery;
use crate::message::Message;
use crate::router::{RetainLimits, RetainedStore, Stamp};

/// The most bytes of messages one `SetRetained` carries (a wish larger
/// than this goes alone).
const MAX_WRITE_BYTES: usize = 1 << 20;

/// What the retained writes count.
#[derive(Clone)]
pub(super) struct RetainedMetrics {
    /// `SetRetained` writes that committed.
    pub(super) writes: IntCounter,
    /// Failed `SetRetained` writes (each is retried).
    pub(super) write_errors: IntCounter,
    /// Acknowledgements refused because their write did not commit in time.
    pub(super) write_timeouts: IntCounter,
    /// Applied entries that did not decode (skipped).
    pub(super) malformed: IntCounter,
    /// Topics whose write is not committed yet (queued or in flight).
    pub(super) pending: IntGauge,
}

/// One topic's pending write: the last message published to it, and who
/// waits for a write at least as new.
struct Wish {
    entry: pb::RetainedEntry,
    waiters: Vec<oneshot::Sender<u64>>,
}

/// Writes this node's retained messages to the metadata group.
pub(super) struct RetainedWriter {
    node_id: NodeId,
    /// The next write's number: it starts at the start's Unix time in µs,
    /// so the numbers of a node keep increasing across its restarts.
    next_seq: AtomicU64,
    pending: Mutex<HashMap<String, Wish>>,
    wake: Notify,
    metrics: RetainedMetrics,
    log: LogEvery,
}

impl RetainedWriter {
    pub(super) fn new(node_id: NodeId, metrics: RetainedMetrics) -> Self {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        RetainedWriter {
            node_id,
            next_seq: AtomicU64::new(now_us),
            pending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            metrics,
            log: LogEvery::new(5000),
        }
    }

    /// The stamp of this node's next write.
    pub(super) fn stamp(&self) -> Stamp {
        Stamp {
            node: self.node_id,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Queues `entry`, replacing an older wish for its topic; resolves to
    /// the log index of the write that carries it (or a newer one).
    fn wish(&self, entry: pb::RetainedEntry) -> oneshot::Receiver<u64> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.entry(entry.topic.clone()) {
            Entry::Occupied(mut wish) => {
                let wish = wish.get_mut();
                wish.entry = entry;
                wish.waiters.push(tx);
            }
            Entry::Vacant(slot) => {
                slot.insert(Wish {
                    entry,
                    waiters: vec![tx],
                });
            }
        }
        self.metrics.pending.set(pending.len() as i64);
        drop(pending);
        self.wake.notify_one();
        rx
    }

    /// Takes pending wishes up to [`MAX_WRITE_BYTES`] (one at least).
    fn take(&self) -> Vec<Wish> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let mut bytes = 0;
        let mut topics = Vec::new();
        for (topic, wish) in pending.iter() {
            if !topics.is_empty() && bytes + wish.entry.message.len() > MAX_WRITE_BYTES {
                break;
            }
            bytes += wish.entry.message.len() + topic.len();
            topics.push(topic.clone());
        }
        let taken: Vec<Wish> = topics.iter().filter_map(|t| pending.remove(t)).collect();
        // Taken is not committed yet: still counted.
        self.metrics
            .pending
            .set((pending.len() + taken.len()) as i64);
        taken
    }

    /// Puts back a batch that failed: a topic published to meanwhile keeps
    /// its newer wish, which the failed one's waiters now wait for.
    fn put_back(&self, batch: Vec<Wish>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for wish in batch {
            match pending.entry(wish.entry.topic.clone()) {
                Entry::Occupied(mut newer) => newer.get_mut().waiters.extend(wish.waiters),
                Entry::Vacant(slot) => {
                    slot.insert(wish);
                }
            }
        }
        self.metrics.pending.set(pending.len() as i64);
    }

    /// The writer: sends what is pending, one `SetRetained` at a time,
    /// until the meta service stops answering for good (never, in practice).
    pub(super) async fn run(self: Arc<Self>, client: MetaClient) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let batch = self.take();
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            let entries = batch.iter().map(|wish| wish.entry.clone()).collect();
            match client.set_retained(entries).await {
                Ok(index) => {
                    self.metrics.writes.inc();
                    let left = self
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .len();
                    self.metrics.pending.set(left as i64);
                    backoff = Duration::from_millis(50);
                    for tx in batch.into_iter().flat_map(|wish| wish.waiters) {
                        let _ = tx.send(index);
                    }
                }
                Err(e) => {
                    self.metrics.write_errors.inc();
                    if let Some(held) = self.log.admit_now() {
                        warn!(error = %e, held, "cannot write retained messages to the metadata group; retrying");
                    }
                    self.put_back(batch);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Where the metadata group's retained messages go on this node.
pub(super) struct RetainedSink {
    pub(super) store: Arc<RetainedStore>,
    pub(super) malformed: IntCounter,
}

impl RetainedSink {
    /// Replaces the store's messages by the metadata group's.
    pub(super) fn load(&self, entries: Vec<RetainedEntry>) {
        self.store
            .load(entries.into_iter().filter_map(|e| self.decoded(e)));
    }

    /// Applies committed writes, in order.
    pub(super) fn apply(&self, entries: Vec<RetainedEntry>) {
        for (message, stamp) in entries.into_iter().filter_map(|e| self.decoded(e)) {
            self.store.apply(&message, stamp);
        }
    }

    fn decoded(&self, entry: RetainedEntry) -> Option<(Arc<Message>, Stamp)> {
        let topic = entry.topic.clone();
        decode(entry)
            .inspect_err(|e| {
                self.malformed.inc();
                warn!(%topic, error = %e, "a retained message of the metadata group does not decode; skipped");
            })
            .ok()
    }
}

/// A retained message as the metadata group holds it: the store's own
/// `Retain` record (the PUBLISH and its expiry as Unix time).
fn encode(message: &Message, stamp: Stamp) -> Result<pb::RetainedEntry, DurableError> {
    let bytes = if message.payload.is_empty() {
        Vec::new()
    } else {
        Record::Retain {
            publish: record::message_publish(message),
            expires_at_ms: record::expiry_to_unix(message, std::time::Instant::now()),
        }
        .encode()?
    };
    Ok(pb::RetainedEntry {
        topic: message.topic.clone(),
        origin: stamp.node,
        seq: stamp.seq,
        message: bytes,
    })
}

/// The message and stamp of an entry the metadata group applied; an empty
/// entry clears its topic.
fn decode(entry: RetainedEntry) -> Result<(Arc<Message>, Stamp), DurableError> {
    let stamp = Stamp {
        node: entry.origin,
        seq: entry.seq,
    };
    let message = if entry.message.is_empty() {
        cleared(entry.topic)
    } else {
        match Record::decode(Bytes::from(entry.message))? {
            Record::Retain {
                publish,
                expires_at_ms,
            } => durable::retained_message(publish, expires_at_ms),
            _ => {
                let kind = "a retained entry holds another kind of record";
                return Err(record::RecordError::Message(kind.into()).into());
            }
        }
    };
    Ok((Arc::new(message), stamp))
}

/// A retained message that clears `topic`.
fn cleared(topic: String) -> Message {
    let publish = Publish {
        dup: false,
        qos: tidemq_proto::mqtt::QoS::AtMostOnce,
        retain: true,
        topic,
        packet_id: None,
        properties: Default::default(),
        payload: Bytes::new(),
    };
    durable::retained_message(publish, None)
}

impl Cluster {
    /// The stamp of this node's next retained write.
    pub(crate) fn retained_stamp(&self) -> Stamp {
        self.retained_writer.stamp()
    }

    /// Sends the retained `message` (stamped `stamp`, already set in this
    /// node's store) to the metadata group now; the future resolves once
    /// the write has committed and every other member has applied it (a
    /// member that does not answer in time is passed over, as for a
    /// SUBACK), and fails when the write does not commit within
    /// `cluster.route_wait_ms`. Dropping the future leaves the write queued.
    pub(crate) fn replicate_retained(
        self: &Arc<Self>,
        message: &Message,
        stamp: Stamp,
    ) -> BoxFuture<'static, Result<(), DurableError>> {
        let committed = match encode(message, stamp) {
            Ok(entry) => self.retained_writer.wish(entry),
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        let this = Arc::clone(self);
        async move {
            let deadline = Instant::now() + this.route_wait;
            let index = match tokio::time::timeout_at(deadline, committed).await {
                Ok(Ok(index)) => index,
                Ok(Err(_)) | Err(_) => {
                    this.metrics.retained.write_timeouts.inc();
                    return Err(MetaError::NoQuorum {
                        reason: "a retained message did not commit within cluster.route_wait_ms"
                            .into(),
                    }
                    .into());
                }
            };
            this.applied_everywhere(index, deadline).await;
            Ok(())
        }
        .boxed()
    }

    /// Moves the retained messages this node's store kept before the
    /// cluster held them (written by an earlier version) to the metadata
    /// group; a topic the group holds already keeps the group's message.
    /// Each is cleared from the store once the group has it.
    pub(crate) fn adopt_retained(
        self: &Arc<Self>,
        store: &DurableStore,
        stored: Vec<(Publish, Option<u64>)>,
    ) {
        if stored.is_empty() {
            return;
        }
        let mut moving = Vec::new();
        let mut clear = Vec::new();
        for (publish, expires_at_ms) in stored {
            let message = Arc::new(durable::retained_message(publish, expires_at_ms));
            clear.push(cleared(message.topic.clone()));
            if self.retained.contains(&message.topic) || message.payload.is_empty() {
                continue;
            }
            let stamp = self.retained_stamp();
            let _ = self.retained.set(&message, stamp, RetainLimits::NONE);
            moving.push(self.replicate_retained(&message, stamp));
        }
        info!(
            moving = moving.len(),
            "moving the store's retained messages to the metadata group"
        );
        let store = store.clone();
        tokio::spawn(async move {
            let written = futures_util::future::join_all(moving).await;
            if let Some(Err(e)) = written.into_iter().find(Result::is_err) {
                warn!(error = %e, "retained messages not moved yet; the next start tries again");
                return;
            }
            for message in clear {
                if let Err(e) = store.put_retained(&message).await {
                    warn!(error = %e, "cannot clear a moved retained message from the store");
                }
            }
        });
    }
}
