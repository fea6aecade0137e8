//! One partition's log state: segments, offsets, and the decisions made under
//! its lock (offset assignment, segment roll, read planning, retention).
//!
//! Nothing here does I/O. The engine takes the lock, asks this module what to
//! send to the I/O thread, sends it while still holding the lock (so the
//! queue order is the offset order), and awaits the answer after releasing it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Result, StorageError};
use crate::executor::FileHandle;
use crate::frame::{self, FRAME_HEADER_LEN};
use crate::segment::{IndexEntry, Segment};

/// How long and how much of a partition's log is kept.
///
/// Retention removes whole sealed segments, oldest first; the segment being
/// written is never removed, so a partition can hold up to one segment more
/// than `max_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Remove the oldest segments while the partition holds more than this.
    pub max_bytes: Option<u64>,
    /// Remove segments whose newest record is older than this.
    pub max_age: Option<Duration>,
}

/// Where an append goes, decided under the partition lock.
pub(crate) struct AppendPlan {
    pub file: FileHandle,
    pub segment_base: u64,
    pub data: Vec<u8>,
    pub first_offset: u64,
    pub end_position: u64,
    pub timestamp_ms: i64,
}

/// One read of a contiguous byte range of a segment.
pub(crate) struct ReadPlan {
    pub file: FileHandle,
    pub position: u64,
    pub len: usize,
    /// Offsets at or above this are not acknowledged yet and must not be returned.
    pub committed_offset: u64,
}

pub(crate) struct Partition {
    pub id: u64,
    pub dir: PathBuf,
    pub retention: Retention,
    state: Mutex<PartitionState>,
}

pub(crate) struct PartitionState {
    pub segments: BTreeMap<u64, Segment>,
    /// Next offset to assign.
    pub next_offset: u64,
    /// Every offset below this is acknowledged (durable under `SyncPolicy::Always`).
    pub committed_offset: u64,
    pub last_timestamp_ms: i64,
    pub poisoned: Option<Poison>,
    /// Appends sent to the I/O thread and not answered yet.
    pub inflight: usize,
    /// A [`HealPlan`] is being carried out.
    pub healing: bool,
    pub deleted: bool,
}

/// Why and since when a partition takes no appends.
#[derive(Debug, Clone)]
pub(crate) struct Poison {
    pub cause: String,
    /// When the failure happened, or when the last heal failed.
    pub since: Instant,
}

/// The repair of a poisoned partition: every segment holding bytes that
/// were never acknowledged is cut back to its acknowledged prefix.
#[derive(Debug)]
pub(crate) struct HealPlan {
    /// Each damaged segment's base offset, file and acknowledged size.
    pub cuts: Vec<(u64, FileHandle, u64)>,
    /// The segment appends go to, reopened once it is repaired.
    pub active: FileHandle,
}

impl Partition {
    pub fn new(id: u64, dir: PathBuf, retention: Retention, segments: Vec<Segment>) -> Self {
        let next_offset = segments.last().map_or(0, |s| s.next_offset);
        let last_timestamp_ms = segments
            .iter()
            .map(|s| s.max_timestamp_ms)
            .max()
            .unwrap_or(i64::MIN);
        Self {
            id,
            dir,
            retention,
            state: Mutex::new(PartitionState {
                segments: segments.into_iter().map(|s| (s.base_offset, s)).collect(),
                next_offset,
                committed_offset: next_offset,
                last_timestamp_ms,
                poisoned: None,
                inflight: 0,
                healing: false,
                deleted: false,
            }),
        }
    }

    /// Locks the state. A panic while the lock was held cannot leave the
    /// state half-updated in a way later calls rely on, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, PartitionState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PartitionState {
    /// Fails if the partition takes no appends.
    pub fn check_open(&self, id: u64) -> Result<()> {
        if self.deleted {
            return Err(StorageError::UnknownPartition(id));
        }
        if let Some(poison) = &self.poisoned {
            return Err(StorageError::Poisoned {
                partition: id,
                cause: poison.cause.clone(),
            });
        }
        Ok(())
    }

    /// Marks the partition poisoned by a failed write or sync, unless it
    /// already is.
    pub fn poison(&mut self, error: &StorageError) {
        self.poisoned.get_or_insert_with(|| Poison {
            cause: error.to_string(),
            since: Instant::now(),
        });
    }

    /// Whether the partition is poisoned and may be repaired now: no
    /// append is still on its way to the I/O thread, no other repair runs,
    /// and the last failure is at least `retry_after` old. Marks the repair
    /// as started and returns what to cut.
    pub fn plan_heal(&mut self, retry_after: Duration) -> Option<HealPlan> {
        let poison = self.poisoned.as_ref()?;
        if self.inflight > 0 || self.healing || poison.since.elapsed() < retry_after {
            return None;
        }
        let active = self.segments.values().next_back()?.file.clone();
        let cuts = self
            .segments
            .values()
            .filter(|s| s.size > s.committed_size)
            .map(|s| (s.base_offset, s.file.clone(), s.committed_size))
            .collect();
        self.healing = true;
        Some(HealPlan { cuts, active })
    }

    /// Records the outcome of a [`HealPlan`]: on success every cut segment
    /// ends at its last acknowledged record and the partition takes appends
    /// again, from the offset after the active segment's last acknowledged
    /// record; on failure it stays poisoned and is retried later.
    pub fn finish_heal(&mut self, plan: &HealPlan, healed: &Result<()>) {
        self.healing = false;
        if let Err(e) = healed {
            self.poisoned = Some(Poison {
                cause: e.to_string(),
                since: Instant::now(),
            });
            return;
        }
        for (base, _, committed_size) in &plan.cuts {
            if let Some(segment) = self.segments.get_mut(base) {
                segment.size = *committed_size;
                segment.next_offset = segment.committed_next_offset;
                segment.index.truncate_from(segment.next_offset);
            }
        }
        if let Some(active) = self.segments.values().next_back() {
            self.next_offset = active.next_offset;
        }
        self.poisoned = None;
    }

    /// Whether a batch of `batch_bytes` must go to a new segment.
    pub fn needs_roll(&self, batch_bytes: u64, segment_bytes: u64) -> bool {
        match self.segments.values().next_back() {
            None => true,
            Some(active) => active.size > 0 && active.size + batch_bytes > segment_bytes,
        }
    }

    /// Starts a new, empty segment at the next offset. Returns the file of
    /// the segment it replaces as the active one, which takes no more appends.
    pub fn roll(&mut self, file: FileHandle) -> Option<FileHandle> {
        let base = self.next_offset;
        let sealed = self.segments.values().next_back().map(|s| s.file.clone());
        self.segments.insert(base, Segment::empty(file, base));
        sealed
    }

    /// Assigns offsets and timestamps to `records` and frames them for the
    /// active segment.
    pub fn plan_append<R: AsRef<[u8]>>(
        &mut self,
        records: &[R],
        now_ms: i64,
        index_interval: u64,
    ) -> Option<AppendPlan> {
        let timestamp = now_ms.max(self.last_timestamp_ms);
        let first_offset = self.next_offset;
        let active = self.segments.values_mut().next_back()?;
        let batch_bytes: usize = records
            .iter()
            .map(|r| FRAME_HEADER_LEN + r.as_ref().len())
            .sum();
        let mut data = Vec::with_capacity(batch_bytes);
        let mut offset = first_offset;
        for record in records {
            let position = active.size + data.len() as u64;
            let start = data.len();
            frame::encode(&mut data, offset, timestamp, record.as_ref());
            let entry = IndexEntry {
                offset,
                position,
                timestamp_ms: timestamp,
            };
            active
                .index
                .observe(entry, (data.len() - start) as u64, index_interval);
            offset += 1;
        }
        active.size += data.len() as u64;
        active.next_offset = offset;
        active.max_timestamp_ms = timestamp;
        self.next_offset = offset;
        self.last_timestamp_ms = timestamp;
        Some(AppendPlan {
            file: active.file.clone(),
            segment_base: active.base_offset,
            data,
            first_offset,
            end_position: active.size,
            timestamp_ms: timestamp,
        })
    }

    /// Records an acknowledged append.
    pub fn commit(&mut self, segment_base: u64, end_offset: u64, end_position: u64) {
        self.committed_offset = self.committed_offset.max(end_offset);
        if let Some(segment) = self.segments.get_mut(&segment_base) {
            segment.committed_size = segment.committed_size.max(end_position);
            segment.committed_next_offset = segment.committed_next_offset.max(end_offset);
        }
    }

    /// The oldest offset still held.
    pub fn log_start(&self) -> u64 {
        self.segments
            .values()
            .next()
            .map_or(self.next_offset, |s| s.base_offset)
    }

    /// Plans the read of the records at and after `from`, reading at least
    /// `want` bytes past the index entry it starts from. `None` when nothing
    /// at or after `from` is readable yet.
    pub fn plan_read(&self, id: u64, from: u64, want: usize) -> Result<Option<ReadPlan>> {
        if from < self.log_start() {
            return Err(StorageError::OffsetOutOfRange {
                partition: id,
                requested: from,
                log_start: self.log_start(),
            });
        }
        if from >= self.committed_offset {
            return Ok(None);
        }
        // The segment holding `from`, or the first one after a gap left by a
        // segment that was moved aside.
        let segment = self
            .segments
            .range(..=from)
            .next_back()
            .map(|(_, s)| s)
            .filter(|s| from < s.next_offset)
            .or_else(|| self.segments.range(from + 1..).next().map(|(_, s)| s));
        let Some(segment) = segment.filter(|s| !s.is_empty() && s.committed_size > 0) else {
            return Ok(None);
        };
        let position = segment
            .index
            .floor_offset(from)
            .map_or(0, |entry| entry.position);
        let available = segment.committed_size.saturating_sub(position);
        if available == 0 {
            return Ok(None);
        }
        Ok(Some(ReadPlan {
            file: segment.file.clone(),
            position,
            len: available.min(want as u64) as usize,
            committed_offset: self.committed_offset,
        }))
    }

    /// Where a search for the first record at or after `timestamp_ms` starts.
    pub fn offset_before_time(&self, timestamp_ms: i64) -> Option<u64> {
        let segment = self
            .segments
            .values()
            .find(|s| !s.is_empty() && s.max_timestamp_ms >= timestamp_ms)?;
        Some(
            segment
                .index
                .before_time(timestamp_ms)
                .map_or(segment.base_offset, |entry| entry.offset),
        )
    }

    /// Removes and returns the sealed segments that `retention` no longer keeps.
    pub fn take_expired(&mut self, retention: &Retention, now_ms: i64) -> Vec<Segment> {
        let mut expired = Vec::new();
        let mut total: u64 = self.segments.values().map(|s| s.size).sum();
        while self.segments.len() > 1 {
            let Some(oldest) = self.segments.values().next() else {
                break;
            };
            let too_big = retention.max_bytes.is_some_and(|max| total > max);
            let too_old = retention.max_age.is_some_and(|age| {
                let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                oldest.max_timestamp_ms < now_ms.saturating_sub(age_ms)
            });
            if !(too_big || too_old) {
                break;
            }
            let base = oldest.base_offset;
            if let Some(segment) = self.segments.remove(&base) {
                total -= segment.size;
                expired.push(segment);
            }
        }
        expired
    }

    /// Removes and returns the sealed segments that hold only offsets below
    /// `offset`. The segment being written is never removed.
    pub fn take_below(&mut self, offset: u64) -> Vec<Segment> {
        let mut removed = Vec::new();
        while self.segments.len() > 1 {
            let mut bases = self.segments.keys();
            let (Some(&oldest), Some(&next)) = (bases.next(), bases.next()) else {
                break;
            };
            if next > offset {
                break;
            }
            if let Some(segment) = self.segments.remove(&oldest) {
                removed.push(segment);
            }
        }
        removed
    }

    /// Whether every record is below `offset` and acknowledged, none is on
    /// its way, and the segment being written holds some: it can be
    /// replaced by an empty one and removed.
    pub fn all_below(&self, offset: u64) -> bool {
        offset >= self.next_offset
            && self.committed_offset == self.next_offset
            && self.inflight == 0
            && self.poisoned.is_none()
            && !self.healing
            && !self.deleted
            && self
                .segments
                .values()
                .next_back()
                .is_some_and(|s| !s.is_empty())
    }

    /// Bytes held on disk.
    pub fn size(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }
}
