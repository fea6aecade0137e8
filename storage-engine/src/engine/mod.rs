//! The `StorageEngine` facade: partitions of segment logs on the executor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::Registry;
use tracing::{info, warn};

use crate::error::{Result, StorageError};
use crate::executor::{Command, FileWriteExecutor, recv};
use crate::frame::{self, Decoded, FRAME_HEADER_LEN, Record};
use crate::metrics::EngineMetrics;
use crate::partition::{Partition, Retention};
use crate::recovery::{self, RecoveryReport};
use crate::segment::{Segment, segment_path};
use crate::space::FreeSpace;
use heal::Inflight;

mod builder;
mod heal;

pub use builder::EngineBuilder;

/// Name of the directory holding one sub-directory per partition.
const PARTITIONS_DIR: &str = "partitions";

/// What [`StorageEngine::append`] assigned to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Offset of the batch's first record; the rest follow one by one.
    pub first_offset: u64,
    /// Offset of the batch's last record.
    pub last_offset: u64,
    /// The timestamp every record of the batch carries (ms since the epoch).
    pub timestamp_ms: i64,
}

/// A partition's extent, as [`StorageEngine::partition_info`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionInfo {
    /// Oldest offset still held.
    pub log_start: u64,
    /// Offset the next append gets; every offset below it is acknowledged.
    pub next_offset: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes on disk.
    pub size_bytes: u64,
}

/// An embeddable store of append-only partition logs.
///
/// Cheap to clone: clones share the I/O threads and partitions. See the
/// [crate docs](crate) for an example.
#[derive(Clone)]
pub struct StorageEngine {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    executor: FileWriteExecutor,
    partitions: RwLock<HashMap<u64, Arc<Partition>>>,
    segment_bytes: u64,
    index_interval: u64,
    max_record_bytes: usize,
    default_retention: Retention,
    heal_retry: Duration,
    space: FreeSpace,
    metrics: EngineMetrics,
    registry: Registry,
    report: RecoveryReport,
}

impl std::fmt::Debug for StorageEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageEngine")
            .field("dir", &self.inner.dir)
            .field("executor", &self.inner.executor)
            .finish_non_exhaustive()
    }
}

impl StorageEngine {
    /// A builder for an engine storing its data under `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> EngineBuilder {
        EngineBuilder::new(dir.into())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The executor doing this engine's file I/O.
    pub fn executor(&self) -> &FileWriteExecutor {
        &self.inner.executor
    }

    /// The registry holding this engine's metrics.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// What recovery found and repaired when the engine opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// Ids of all partitions, sorted.
    pub fn partitions(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.read_partitions().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Creates a partition with the engine's default retention.
    pub async fn create_partition(&self, id: u64) -> Result<()> {
        self.create_partition_with(id, self.inner.default_retention)
            .await
    }

    /// Creates a partition with its own retention.
    pub async fn create_partition_with(&self, id: u64, retention: Retention) -> Result<()> {
        if self.read_partitions().contains_key(&id) {
            return Err(StorageError::PartitionExists(id));
        }
        let dir = self.inner.dir.join(PARTITIONS_DIR).join(id.to_string());
        let created = dir.clone();
        self.inner
            .executor
            .run_blocking(id, move || {
                std::fs::create_dir_all(&created)?;
                created.parent().map_or(Ok(()), recovery::sync_dir)
            })
            .await?
            .map_err(|e| StorageError::io("create partition", &dir, e))?;
        let file = self.inner.executor.open(id, segment_path(&dir, 0)).await?;
        let partition = Arc::new(Partition::new(
            id,
            dir,
            retention,
            vec![Segment::empty(file, 0)],
        ));
        let mut partitions = self.write_partitions();
        if partitions.contains_key(&id) {
            return Err(StorageError::PartitionExists(id));
        }
        partitions.insert(id, partition);
        self.inner.metrics.partitions.set(partitions.len() as i64);
        Ok(())
    }

    /// Deletes a partition and all its files. Appends in flight fail.
    pub async fn delete_partition(&self, id: u64) -> Result<()> {
        let partition = {
            let mut partitions = self.write_partitions();
            let removed = partitions
                .remove(&id)
                .ok_or(StorageError::UnknownPartition(id))?;
            self.inner.metrics.partitions.set(partitions.len() as i64);
            removed
        };
        let segments = {
            let mut state = partition.lock();
            state.deleted = true;
            std::mem::take(&mut state.segments)
        };
        self.remove_segments(segments.into_values().collect())
            .await?;
        let dir = partition.dir.clone();
        self.inner
            .executor
            .run_blocking(id, move || {
                std::fs::remove_dir_all(&dir)?;
                dir.parent().map_or(Ok(()), recovery::sync_dir)
            })
            .await?
            .map_err(|e| StorageError::io("delete partition", &partition.dir, e))
    }

    /// Appends `records` to `partition` as one batch and returns the offsets
    /// they got. With [`SyncPolicy::Always`](crate::SyncPolicy::Always) they are durable on return.
    ///
    /// Appends to one partition are ordered: offsets are assigned in the order
    /// the calls reach the partition, and each is acknowledged only after all
    /// records before it are.
    pub async fn append<R: AsRef<[u8]>>(
        &self,
        partition: u64,
        records: &[R],
    ) -> Result<AppendResult> {
        let started = Instant::now();
        if records.is_empty() {
            return Err(StorageError::EmptyBatch);
        }
        let mut payload_bytes = 0;
        for record in records {
            let size = record.as_ref().len();
            if size > self.inner.max_record_bytes {
                return Err(StorageError::RecordTooLarge {
                    size,
                    max: self.inner.max_record_bytes,
                });
            }
            payload_bytes += size;
        }
        let part = self.partition(partition)?;
        let batch_bytes = (payload_bytes + records.len() * FRAME_HEADER_LEN) as u64;
        self.inner.space.reserve(batch_bytes)?;
        self.heal_if_poisoned(&part).await?;

        // Three queue slots: a possible segment roll (seal the old, open the
        // new), then the write itself.
        let mut permits = self.inner.executor.reserve(partition, 3).await?;
        let mut inflight = Inflight::new(&part);
        let (reply_rx, first_offset, segment_base, end_position, timestamp_ms, rolled) = {
            let mut state = part.lock();
            state.check_open(partition)?;
            let rolled = state.needs_roll(batch_bytes, self.inner.segment_bytes);
            if rolled {
                let path = segment_path(&part.dir, state.next_offset);
                let file = self.inner.executor.handle(partition, path);
                if let Some(sealed) = state.roll(file.clone())
                    && let Some(permit) = permits.next()
                {
                    permit.send(Command::Seal { file: sealed });
                }
                if let Some(permit) = permits.next() {
                    permit.send(Command::Open { file, reply: None });
                }
            }
            let plan = state
                .plan_append(records, now_ms(), self.inner.index_interval)
                .ok_or(StorageError::UnknownPartition(partition))?;
            let (reply, reply_rx) = oneshot::channel();
            let permit = permits.next().ok_or(StorageError::Closed)?;
            permit.send(Command::Append {
                file: plan.file,
                data: plan.data,
                reply,
            });
            inflight.sent(&mut state);
            let (first, base, end) = (plan.first_offset, plan.segment_base, plan.end_position);
            (reply_rx, first, base, end, plan.timestamp_ms, rolled)
        };
        let last_offset = first_offset + records.len() as u64 - 1;
        let written = recv(reply_rx).await;
        {
            let mut state = part.lock();
            inflight.answered(&mut state);
            if let Err(e) = written {
                // A write the I/O thread never ran because the engine shut
                // down is not a failed write: it must not poison the file.
                if !matches!(e, StorageError::Closed) {
                    state.poison(&e);
                }
                return Err(e);
            }
            state.commit(segment_base, last_offset + 1, end_position);
        }

        let metrics = &self.inner.metrics;
        metrics
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.appended_records.inc_by(records.len() as u64);
        metrics.appended_bytes.inc_by(payload_bytes as u64);
        if rolled && part.retention != Retention::default() {
            self.enforce_partition(&part).await?;
        }
        Ok(AppendResult {
            first_offset,
            last_offset,
            timestamp_ms,
        })
    }

    /// Reads acknowledged records of `partition` starting at `from`, up to
    /// about `max_bytes` of payload (at least one record when one is
    /// available). Returns an empty vector at the end of the log.
    pub async fn read(&self, partition: u64, from: u64, max_bytes: usize) -> Result<Vec<Record>> {
        let part = self.partition(partition)?;
        let max_frame = self.inner.max_record_bytes + FRAME_HEADER_LEN;
        let mut records = Vec::new();
        let mut payload_bytes = 0usize;
        let mut next = from;
        let mut want =
            max_bytes.saturating_add(self.inner.index_interval as usize + FRAME_HEADER_LEN);
        loop {
            let plan = part.lock().plan_read(partition, next, want)?;
            let Some(plan) = plan else { break };
            let buf = self
                .inner
                .executor
                .read_at(&plan.file, plan.position, plan.len)
                .await?;
            let before = next;
            let mut at = 0;
            let mut done = false;
            while at < buf.len() {
                match frame::decode(&buf[at..], max_frame) {
                    Decoded::Frame {
                        offset,
                        timestamp_ms,
                        len,
                    } => {
                        if offset >= plan.committed_offset {
                            done = true;
                            break;
                        }
                        if offset >= next {
                            let size = len - FRAME_HEADER_LEN;
                            if !records.is_empty() && payload_bytes + size > max_bytes {
                                done = true;
                                break;
                            }
                            payload_bytes += size;
                            records.push(Record {
                                offset,
                                timestamp_ms,
                                payload: bytes::Bytes::copy_from_slice(
                                    &buf[at + FRAME_HEADER_LEN..at + len],
                                ),
                            });
                            next = offset + 1;
                        }
                        at += len;
                    }
                    Decoded::Incomplete { len } => {
                        // A record longer than this read: read again, large enough for it.
                        if next == before {
                            want = want.max(at + len);
                        }
                        break;
                    }
                    Decoded::Invalid(reason) => {
                        return Err(StorageError::Corrupt {
                            path: plan.file.path().to_path_buf(),
                            position: plan.position + at as u64,
                            reason: reason.to_string(),
                        });
                    }
                }
            }
            if done || payload_bytes >= max_bytes {
                break;
            }
            if next == before && at >= buf.len() {
                // The planned range held nothing at or after `next`: the
                // rest of this segment is not readable yet.
                break;
            }
        }
        Ok(records)
    }

    /// The offset of the first record whose timestamp is at or after
    /// `timestamp_ms`, or `None` if every record is older.
    pub async fn offset_for_time(&self, partition: u64, timestamp_ms: i64) -> Result<Option<u64>> {
        let part = self.partition(partition)?;
        let Some(mut from) = part.lock().offset_before_time(timestamp_ms) else {
            return Ok(None);
        };
        loop {
            let batch = self.read(partition, from, 64 * 1024).await?;
            let Some(last) = batch.last() else {
                return Ok(None);
            };
            if let Some(found) = batch.iter().find(|r| r.timestamp_ms >= timestamp_ms) {
                return Ok(Some(found.offset));
            }
            from = last.offset + 1;
        }
    }

    /// The extent of a partition.
    pub fn partition_info(&self, partition: u64) -> Result<PartitionInfo> {
        let part = self.partition(partition)?;
        let state = part.lock();
        Ok(PartitionInfo {
            log_start: state.log_start(),
            next_offset: state.committed_offset,
            segments: state.segments.len(),
            size_bytes: state.size(),
        })
    }

    /// The base offsets of a partition's segments, oldest first: segment `i`
    /// holds the offsets from `bases[i]` up to `bases[i + 1]`.
    pub fn segment_bases(&self, partition: u64) -> Result<Vec<u64>> {
        let part = self.partition(partition)?;
        let state = part.lock();
        Ok(state.segments.keys().copied().collect())
    }

    /// Applies every partition's retention now. Returns the segments removed.
    pub async fn enforce_retention(&self) -> Result<usize> {
        let partitions: Vec<Arc<Partition>> = self.read_partitions().values().cloned().collect();
        let mut removed = 0;
        for part in partitions {
            removed += self.enforce_partition(&part).await?;
        }
        Ok(removed)
    }

    /// Removes the sealed segments of `partition` that hold only offsets
    /// below `offset`: a consumer that no longer needs those records hands
    /// their space back. Whole segments go, so some records below `offset`
    /// may stay. When `offset` is past every record and no append is under
    /// way, the segment being written goes too, replaced by an empty one
    /// (so a partition whose records all fit one segment still gives its
    /// space back); otherwise it stays. Returns the number of segments
    /// removed.
    pub async fn trim_before(&self, partition: u64, offset: u64) -> Result<usize> {
        let part = self.partition(partition)?;
        let mut permits = self.inner.executor.reserve(partition, 1).await?;
        let removed = {
            let mut state = part.lock();
            if state.all_below(offset)
                && let Some(permit) = permits.next()
            {
                let path = segment_path(&part.dir, state.next_offset);
                let file = self.inner.executor.handle(partition, path);
                // The segment it replaces is removed below.
                let _ = state.roll(file.clone());
                permit.send(Command::Open { file, reply: None });
            }
            state.take_below(offset)
        };
        drop(permits);
        let count = removed.len();
        if count > 0 {
            info!(
                partition,
                segments = count,
                before = offset,
                "trimming segments"
            );
            self.remove_segments(removed).await?;
        }
        Ok(count)
    }

    /// Makes everything appended so far durable (whatever the sync policy),
    /// stops the I/O threads and waits for them. Later calls on any clone
    /// fail with [`StorageError::Closed`].
    pub async fn close(&self) -> Result<()> {
        info!(dir = %self.inner.dir.display(), "closing storage engine");
        self.inner.executor.shutdown().await
    }

    async fn enforce_partition(&self, part: &Partition) -> Result<usize> {
        let expired = part.lock().take_expired(&part.retention, now_ms());
        let count = expired.len();
        if count > 0 {
            info!(
                partition = part.id,
                segments = count,
                "retention removes segments"
            );
            self.remove_segments(expired).await?;
        }
        Ok(count)
    }

    async fn remove_segments(&self, segments: Vec<Segment>) -> Result<()> {
        for segment in segments {
            let (reply, rx) = oneshot::channel();
            let mut permits = self
                .inner
                .executor
                .reserve(segment.file.partition(), 1)
                .await?;
            if let Some(permit) = permits.next() {
                permit.send(Command::Close {
                    file: segment.file,
                    remove: true,
                    reply: Some(reply),
                });
            }
            recv(rx).await?;
            self.inner.metrics.deleted_segments.inc();
        }
        Ok(())
    }

    fn partition(&self, id: u64) -> Result<Arc<Partition>> {
        self.read_partitions()
            .get(&id)
            .cloned()
            .ok_or(StorageError::UnknownPartition(id))
    }

    fn read_partitions(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Arc<Partition>>> {
        self.inner
            .partitions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_partitions(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Arc<Partition>>> {
        self.inner
            .partitions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Checks age-based retention in the background until the engine is dropped.
fn spawn_retention_thread(engine: Weak<Inner>, interval: Duration) -> Result<()> {
    std::thread::Builder::new()
        .name("storage-retention".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let Some(inner) = engine.upgrade() else {
                    return;
                };
                let engine = StorageEngine { inner };
                if let Err(e) = futures_executor::block_on(engine.enforce_retention()) {
                    if matches!(e, StorageError::Closed) {
                        return;
                    }
                    warn!(error = %e, "background retention failed");
                }
            }
        })
        .map(|_| ())
        .map_err(|e| StorageError::io("spawn retention thread", "storage-retention", e))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
