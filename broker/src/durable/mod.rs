//! Durable sessions and messages on the storage engine.
//!
//! What the broker promised a persistent session lives in the storage
//! engine's CRC-framed logs ([`record`] describes the records):
//!
//! - **Message partitions** `0..N`: one PUBLISH record per message that a
//!   persistent session must receive at QoS 1 or 2, naming every such
//!   recipient (past ~256 KiB of recipients, the rest in `Recipients`
//!   records appended with it, so that no record outgrows a segment); then, in the same partition, one `Ack` per recipient that
//!   completed it and one `Released` per QoS 2 recipient that answered
//!   PUBREC. A publisher's messages all go to the partition of its session
//!   key, so they keep their order. One writer task per partition appends
//!   everything queued while its previous append was on the way to disk as
//!   one batch (one write, one fsync); the record is on disk before the
//!   publisher gets PUBACK or PUBREC. An `Ack` is waited for by nobody: it
//!   rides with the partition's next batch. A message another node of a
//!   cluster forwarded is followed by a `Forwarded` record (that node and
//!   its number for the message), from which replay tells a cluster's link
//!   service what it stored already ([`Recovered::forwarded`]).
//! - **The session partition**: a `Session` record (epoch, expiry,
//!   subscriptions) on every change of a persistent session, `SessionGone`
//!   when it ends. A node also writes each change through the meta service
//!   ([`SessionCatalog::Meta`]: `MetaClient::put_session`, which shares one
//!   request with the other sessions written at the same time, then one
//!   Raft write through the service's batcher; the session in the record's
//!   opaque payload, and whether it has a connection), and both writes
//!   complete before the client is answered: the cluster's view of who holds a
//!   session is linearizable, and a restart restores from the local copy
//!   without waiting for a quorum.
//! - **The retained partition**: a `Retain` record per retained message set
//!   or cleared.
//!
//! Records of these two partitions carry a revision; the highest of a key
//! is in force, so they are compacted (the records in force copied forward,
//! the rest trimmed) at start and, whenever they have doubled in size, while
//! the node runs, without pausing writers (see `compact`).
//!
//! Memory holds only a [`DiskRef`] (partition and offset) per message an
//! offline session has queued; the message itself is read back when the
//! session reconnects. Connected sessions are still served from memory:
//! nothing on their per-publish path reads the log.
//!
//! [`DurableStore::open`] replays the logs and returns what was promised
//! ([`Recovered`]). Records a session no longer needs are given back by
//! [`DurableStore::trim`], which removes whole segments below the oldest
//! offset any session still holds; a few messages of offline sessions that
//! alone hold the oldest segment are first copied forward (see `forward`).

mod backlog;
pub mod catalog;
mod compact;
mod forward;
mod load;
pub mod record;
mod replay;
mod writer;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge, Registry};
use tidemq_meta::MetaError;
use tidemq_proto::mqtt::Publish;
use tidemq_storage_engine::{FRAME_HEADER_LEN, StorageEngine, StorageError, SyncPolicy};
use tokio::sync::{mpsc, oneshot};

use backlog::Backlog;
pub use catalog::SessionCatalog;
pub use forward::Move;
pub use load::retained_message;
use tracing::{info, warn};

use crate::message::Message;
pub use record::{Origin, Recipient, Record, RecordError, StoredSession, StoredSubscription};
use writer::{WriteJob, partition_writer};

/// Partition id of the session records.
const SESSIONS: u64 = 1 << 32;
/// Partition id of the retained messages.
const RETAINED: u64 = SESSIONS + 1;

/// Errors of the durable layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// A metric could not be created or registered.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The meta service refused or failed a session write or read.
    #[error("meta service: {0}")]
    Meta(#[from] MetaError),
    /// The storage engine failed (I/O, fsync, closed).
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A record cannot be encoded, or a stored one does not decode.
    #[error("record: {0}")]
    Record(#[from] RecordError),
    /// The append a record was batched into failed: the error every job
    /// of the batch shares.
    #[error("storage: {0}")]
    Batch(Arc<StorageError>),
    /// A message for another node of the cluster could be neither sent
    /// nor kept in its hand-off log.
    #[error("forwarding: {0}")]
    Forward(#[from] crate::cluster::ForwardFailure),
    /// A record is larger than a segment holds.
    #[error(
        "a record of {size} bytes exceeds the store's maximum of {max} (storage.segment_bytes)"
    )]
    TooLarge {
        /// Its size.
        size: usize,
        /// The maximum.
        max: usize,
    },
}

impl DurableError {
    /// The storage engine's error behind this one, if it is one: tells a
    /// full disk (`DiskFull`), a partition waiting for repair (`Poisoned`)
    /// and a store that shut down (`Closed`) apart.
    pub fn storage(&self) -> Option<&StorageError> {
        match self {
            DurableError::Storage(e) => Some(e),
            DurableError::Batch(e) => Some(e),
            _ => None,
        }
    }
}

/// Spreads stored messages' offsets over the packet ids (a prime near
/// 2^32 / φ; coprime to 65,535 = 3 · 5 · 17 · 257).
const PACKET_ID_MULTIPLIER: u64 = 0x9E37_79B1;

/// Where a stored message is: its partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiskRef {
    /// Message partition.
    pub partition: u32,
    /// Offset of its PUBLISH record.
    pub offset: u64,
}

impl DiskRef {
    /// The packet id a session sends this message with: fixed by where it
    /// is stored, so a resend after a restart carries the id the client has
    /// seen (which is what makes QoS 2 exactly-once across a crash).
    ///
    /// The multiplier is coprime to 65,535, so consecutive offsets of a
    /// partition use every packet id before one repeats.
    pub fn packet_id(self) -> u16 {
        let mixed = self
            .offset
            .wrapping_mul(PACKET_ID_MULTIPLIER)
            .wrapping_add(u64::from(self.partition));
        (mixed % 65_535) as u16 + 1
    }
}

/// How the store is set up.
#[derive(Debug, Clone)]
pub struct DurableConfig {
    /// Directory of the storage engine.
    pub dir: PathBuf,
    /// Message partitions.
    pub partitions: u32,
    /// I/O threads of the storage engine.
    pub io_threads: usize,
    /// Pin the I/O threads to cores.
    pub pin_cores: bool,
    /// When appends are synced.
    pub sync: SyncPolicy,
    /// Segment file size.
    pub segment_bytes: u64,
    /// Zeros kept written past each active segment's end, so that synced
    /// appends need no journal commit (0 = off).
    pub preallocate_bytes: u64,
    /// Bytes queued for the partition writers above which connections
    /// stop reading.
    pub max_backlog_bytes: usize,
    /// Free space left on the store's filesystem; below it appends fail
    /// (`StorageError::DiskFull`) until space is freed.
    pub min_free_bytes: u64,
    /// Messages older than this are not queued again at replay
    /// (`session.max_message_age_secs`); `None` keeps them all.
    pub max_message_age: Option<Duration>,
}

/// One persistent session as the logs left it.
#[derive(Debug)]
pub struct RecoveredSession {
    /// Its latest `Session` record.
    pub session: StoredSession,
    /// Messages not completed, oldest first, and whether PUBREC was seen.
    pub queue: Vec<(DiskRef, bool)>,
    /// Inbound QoS 2 packet ids received and not released.
    pub inbound_qos2: Vec<u16>,
}

/// Everything [`DurableStore::open`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Persistent sessions.
    pub sessions: Vec<RecoveredSession>,
    /// Retained messages with their expiry (ms since the Unix epoch).
    pub retained: Vec<(Publish, Option<u64>)>,
    /// Per (node, message partition): the highest number of a message that
    /// node forwarded and this one stored in the partition. A node's
    /// messages for one partition are stored in the order of their numbers,
    /// so every one up to it is stored.
    pub forwarded: HashMap<(u64, u32), u64>,
    /// Records replayed.
    pub records: u64,
    /// How long the replay took.
    pub took: Duration,
}

/// The broker's durable store. Cheap to clone.
#[derive(Clone)]
pub struct DurableStore {
    inner: Arc<Inner>,
}

struct Inner {
    engine: StorageEngine,
    partitions: u32,
    /// Appends whose sessions have not been given the offset yet, by
    /// partition; [`DurableStore::trim`] leaves a partition alone while any
    /// is under way.
    appending: Vec<AtomicUsize>,
    /// Records waiting for their partition's writer, by partition.
    writers: Vec<mpsc::UnboundedSender<WriteJob>>,
    /// What those queues hold, against `storage.max_backlog_bytes`.
    backlog: Arc<Backlog>,
    /// Largest record the engine takes.
    max_record: usize,
    /// See [`DurableConfig::max_message_age`].
    max_message_age: Option<Duration>,
    /// Sessions together hold `session.max_stored_messages_total`.
    stored_full: std::sync::atomic::AtomicBool,
    /// The next revision of a session or retained record (see `compact`).
    revision: AtomicU64,
    /// Size of the session and retained partitions after their last
    /// compaction (or scan for one).
    compacted_size: [AtomicU64; 2],
    /// Completions that could not be recorded.
    ack_errors: IntCounter,
    /// Messages copied forward to give an old segment back.
    moved: IntCounter,
}

/// Keeps a partition's in-flight append counted until dropped.
pub struct AppendGuard {
    store: DurableStore,
    partition: u32,
}

impl Drop for AppendGuard {
    fn drop(&mut self) {
        if let Some(count) = self.store.inner.appending.get(self.partition as usize) {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl DurableStore {
    /// Opens (or creates) the store and replays it. A torn or corrupt tail
    /// is cut off by the storage engine and reported; a record that frames
    /// correctly but does not decode is skipped with a warning.
    pub async fn open(
        config: &DurableConfig,
        registry: &Registry,
    ) -> Result<(DurableStore, Recovered), DurableError> {
        let started = Instant::now();
        let max_record = usize::try_from(config.segment_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(FRAME_HEADER_LEN)
            .max(1);
        let engine = StorageEngine::builder(&config.dir)
            .io_threads(config.io_threads.max(1))
            .pin_cores(config.pin_cores)
            .sync_policy(config.sync)
            .segment_bytes(config.segment_bytes)
            .preallocate_bytes(config.preallocate_bytes)
            // A record (a message and its recipients) may fill a segment.
            .max_record_bytes(max_record)
            .min_free_bytes(config.min_free_bytes)
            .registry(registry.clone())
            .open()
            .await?;
        let report = engine.recovery_report();
        if report.truncated_segments > 0 || !report.quarantined.is_empty() {
            warn!(
                truncated_segments = report.truncated_segments,
                truncated_bytes = report.truncated_bytes,
                quarantined = report.quarantined.len(),
                "message store: damaged tails were cut off at the last valid record"
            );
        }
        let partitions = config.partitions.max(1);
        let existing: HashSet<u64> = engine.partitions().into_iter().collect();
        for id in (0..u64::from(partitions)).chain([SESSIONS, RETAINED]) {
            if !existing.contains(&id) {
                engine.create_partition(id).await?;
            }
        }
        let ack_errors = IntCounter::new(
            "tidemq_store_ack_errors_total",
            "Message completions the message store failed to record",
        )?;
        registry.register(Box::new(ack_errors.clone()))?;
        let moved = IntCounter::new(
            "tidemq_store_moved_messages_total",
            "Stored messages copied forward so that the old segment they alone held could be given back",
        )?;
        registry.register(Box::new(moved.clone()))?;
        let queued = IntGauge::new(
            "tidemq_store_queued_bytes",
            "Bytes waiting for the message store's partition writers",
        )?;
        registry.register(Box::new(queued.clone()))?;
        let backlog = Arc::new(Backlog::new(config.max_backlog_bytes, queued));
        let writers = (0..partitions)
            .map(|partition| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(partition_writer(
                    engine.clone(),
                    u64::from(partition),
                    rx,
                    ack_errors.clone(),
                    Arc::clone(&backlog),
                ));
                tx
            })
            .collect();
        let store = DurableStore {
            inner: Arc::new(Inner {
                engine,
                partitions,
                appending: (0..partitions).map(|_| AtomicUsize::new(0)).collect(),
                writers,
                backlog,
                max_record,
                max_message_age: config.max_message_age,
                moved,
                stored_full: std::sync::atomic::AtomicBool::new(false),
                revision: AtomicU64::new(0),
                compacted_size: [AtomicU64::new(0), AtomicU64::new(0)],
                ack_errors,
            }),
        };
        let mut recovered = store.replay().await?;
        recovered.took = started.elapsed();
        info!(
            sessions = recovered.sessions.len(),
            queued = recovered
                .sessions
                .iter()
                .map(|s| s.queue.len())
                .sum::<usize>(),
            retained = recovered.retained.len(),
            records = recovered.records,
            took_ms = recovered.took.as_millis() as u64,
            "message store recovered"
        );
        Ok((store, recovered))
    }

    /// Message partitions.
    pub fn message_partitions(&self) -> u32 {
        self.inner.partitions
    }

    /// The message partition of a session key.
    pub fn partition_for(&self, key: &str) -> u32 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        (hash % u64::from(self.inner.partitions)) as u32
    }

    /// Counts an append to `partition` as under way until the guard drops.
    /// Take it before appending and drop it once every session has the
    /// offset.
    pub fn begin_append(&self, partition: u32) -> AppendGuard {
        if let Some(count) = self.inner.appending.get(partition as usize) {
            count.fetch_add(1, Ordering::AcqRel);
        }
        AppendGuard {
            store: self.clone(),
            partition,
        }
    }

    /// Appends a record to a message partition; durable on return (with
    /// the default sync policy). Returns its offset.
    pub async fn append(&self, partition: u32, record: &Record) -> Result<u64, DurableError> {
        let bytes = self.encode_message(record)?;
        self.append_encoded(partition, bytes).await
    }

    /// Encodes a record for a message partition, refused if larger than a
    /// record may be.
    pub fn encode_message(&self, record: &Record) -> Result<Vec<u8>, DurableError> {
        self.checked_size(record.encode()?)
    }

    /// An encoded record for a message partition, refused if larger than a
    /// record may be.
    pub fn checked_size(&self, bytes: Vec<u8>) -> Result<Vec<u8>, DurableError> {
        if bytes.len() > self.inner.max_record {
            return Err(DurableError::TooLarge {
                size: bytes.len(),
                max: self.inner.max_record,
            });
        }
        Ok(bytes)
    }

    /// Appends an encoded record (see [`DurableStore::encode_message`]) to
    /// a message partition. Returns its offset.
    pub async fn append_encoded(
        &self,
        partition: u32,
        bytes: Vec<u8>,
    ) -> Result<u64, DurableError> {
        self.send_records(partition, vec![bytes])?.await
    }

    /// Hands encoded records to `partition`'s writer now, as one job: they
    /// are appended together, in order, at consecutive offsets. The future
    /// resolves to the first offset once they are written.
    pub fn send_records(
        &self,
        partition: u32,
        records: Vec<Vec<u8>>,
    ) -> Result<impl Future<Output = Result<u64, DurableError>> + Send + 'static, DurableError>
    {
        let (reply, offset) = oneshot::channel();
        self.send(partition, WriteJob::Records { records, reply })?;
        Ok(async move { offset.await.map_err(|_| StorageError::Closed)? })
    }

    /// Hands `job` to `partition`'s writer.
    fn send(&self, partition: u32, job: WriteJob) -> Result<(), StorageError> {
        let writer = self
            .inner
            .writers
            .get(partition as usize)
            .ok_or(StorageError::UnknownPartition(u64::from(partition)))?;
        // Counted before it is sent: the writer may take it at once.
        let size = job.size();
        self.inner.backlog.add(size);
        writer.send(job).map_err(|_| {
            self.inner.backlog.take(size);
            StorageError::Closed
        })
    }

    /// Records whether the sessions together hold as many stored messages
    /// as they may (`session.max_stored_messages_total`, as of the last
    /// count); while they do, new messages are not stored for them.
    pub fn set_stored_full(&self, full: bool) {
        self.inner.stored_full.store(full, Ordering::Relaxed);
    }

    /// See [`DurableStore::set_stored_full`].
    pub fn stored_full(&self) -> bool {
        self.inner.stored_full.load(Ordering::Relaxed)
    }

    /// Whether the partition writers have more queued than
    /// `storage.max_backlog_bytes`: connections take no more input.
    pub fn backlog_full(&self) -> bool {
        self.inner.backlog.is_full()
    }

    /// Resolves once the writers' queue is back within its limit.
    pub async fn backlog_drained(&self) {
        self.inner.backlog.drained().await;
    }

    /// The revision of the next session or retained record.
    fn next_revision(&self) -> u64 {
        self.inner.revision.fetch_add(1, Ordering::Relaxed)
    }

    /// Records, without waiting, that a session completed a message: the
    /// record goes out with the partition's next batch. A failure is logged
    /// and counted (`tidemq_store_ack_errors_total`); the message may then
    /// be delivered again after a restart, which QoS 1 and 2 allow.
    pub fn ack(&self, at: DiskRef, key: &str, epoch: u64) {
        self.acks(at.partition, key, epoch, &[at.offset]);
    }

    /// Records, as [`DurableStore::ack`] does, that a session completed the
    /// messages at `offsets` of `partition`: one record for them all.
    pub fn acks(&self, partition: u32, key: &str, epoch: u64, offsets: &[u64]) {
        let sent = match record::acks_record(key, epoch, offsets) {
            Ok(bytes) => self
                .send(
                    partition,
                    WriteJob::Completion {
                        record: bytes,
                        count: offsets.len() as u64,
                    },
                )
                .map_err(DurableError::from),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = sent {
            self.inner.ack_errors.inc_by(offsets.len() as u64);
            warn!(error = %e, "cannot record a completed message");
        }
    }

    /// Waits until every completion recorded so far is written.
    pub async fn flush_acks(&self) {
        let mut flushed = Vec::with_capacity(self.inner.writers.len());
        for writer in &self.inner.writers {
            let (done, rx) = oneshot::channel();
            if writer.send(WriteJob::Flush(done)).is_ok() {
                flushed.push(rx);
            }
        }
        for rx in flushed {
            let _ = rx.await;
        }
    }

    /// Records that a session answered PUBREC for a message.
    pub async fn released(&self, at: DiskRef, key: &str, epoch: u64) -> Result<(), DurableError> {
        let record = Record::Released {
            key: key.to_string(),
            epoch,
            offset: at.offset,
        };
        self.append(at.partition, &record).await.map(|_| ())
    }

    /// Records that a publisher released an inbound QoS 2 packet id.
    pub async fn inbound_released(
        &self,
        key: &str,
        epoch: u64,
        packet_id: u16,
    ) -> Result<(), DurableError> {
        let record = Record::InboundReleased {
            key: key.to_string(),
            epoch,
            packet_id,
        };
        self.append(self.partition_for(key), &record)
            .await
            .map(|_| ())
    }

    /// Writes a persistent session's state (see [`catalog::put_session`]
    /// for the catalog too).
    pub async fn put_session(&self, session: &StoredSession) -> Result<(), DurableError> {
        let bytes = Record::Session(session.clone()).encode()?;
        let stored = record::with_revision(self.next_revision(), bytes);
        self.inner.engine.append(SESSIONS, &[stored]).await?;
        Ok(())
    }

    /// Records a change of a persistent session's subscriptions (one
    /// SUBSCRIBE or UNSUBSCRIBE) as that change, not as the whole session.
    pub async fn put_subscriptions(
        &self,
        key: &str,
        epoch: u64,
        added: Vec<StoredSubscription>,
        removed: Vec<String>,
    ) -> Result<(), DurableError> {
        let record = Record::Subscriptions {
            key: key.to_string(),
            epoch,
            added,
            removed,
        };
        let stored = record::with_revision(self.next_revision(), record.encode()?);
        self.inner.engine.append(SESSIONS, &[stored]).await?;
        Ok(())
    }

    /// Records that a session ended (see [`catalog::end_session`] for the
    /// catalog too).
    pub async fn session_gone(&self, key: &str) -> Result<(), DurableError> {
        let bytes = record::with_revision(
            self.next_revision(),
            Record::SessionGone {
                key: key.to_string(),
            }
            .encode()?,
        );
        self.inner.engine.append(SESSIONS, &[bytes]).await?;
        Ok(())
    }

    /// Stores a retained message (an empty payload clears the topic).
    pub async fn put_retained(&self, message: &Message) -> Result<(), DurableError> {
        let bytes = record::with_revision(
            self.next_revision(),
            Record::Retain {
                publish: record::message_publish(message),
                expires_at_ms: record::expiry_to_unix(message, Instant::now()),
            }
            .encode()?,
        );
        self.inner.engine.append(RETAINED, &[bytes]).await?;
        Ok(())
    }

    /// Gives back the space of records no session needs: `live` yields every
    /// reference a session still holds. Partitions with an append under
    /// way are left for the next call. Returns the segments removed.
    pub async fn trim(
        &self,
        live: impl FnOnce(&mut dyn FnMut(DiskRef)),
    ) -> Result<usize, DurableError> {
        let engine = &self.inner.engine;
        let mut bound: Vec<Option<u64>> = Vec::with_capacity(self.inner.partitions as usize);
        for partition in 0..self.inner.partitions {
            // The end first: an append that starts after the check below
            // gets an offset at or past it.
            let end = engine.partition_info(u64::from(partition))?.next_offset;
            let idle = self.inner.appending[partition as usize].load(Ordering::Acquire) == 0;
            bound.push(idle.then_some(end));
        }
        live(&mut |at: DiskRef| {
            if let Some(Some(b)) = bound.get_mut(at.partition as usize) {
                *b = (*b).min(at.offset);
            }
        });
        let mut removed = 0;
        for (partition, bound) in bound.into_iter().enumerate() {
            if let Some(bound) = bound {
                removed += engine.trim_before(partition as u64, bound).await?;
            }
        }
        Ok(removed)
    }

    /// Flushes and closes the storage engine.
    pub async fn close(&self) -> Result<(), DurableError> {
        self.flush_acks().await;
        self.inner.engine.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::DiskRef;

    #[test]
    fn consecutive_offsets_use_every_packet_id_before_one_repeats() {
        for partition in [0, 7] {
            let ids: std::collections::HashSet<u16> = (1_000..1_000 + 65_535)
                .map(|offset| DiskRef { partition, offset }.packet_id())
                .collect();
            assert_eq!(ids.len(), 65_535, "partition {partition}");
            assert!(!ids.contains(&0), "0 is no packet id");
        }
    }
}
