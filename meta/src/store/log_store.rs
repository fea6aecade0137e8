//! [`MetaLogStore`]: openraft's log storage for one group, over the group's
//! `g{n}_log` and `g{n}_meta` column families.
//!
//! `append` returns as soon as the entries are queued on the shared
//! [`LogWriter`](super::log_writer) and parked in an in-memory pending map,
//! so they are readable at once (openraft requires that) while the merged
//! sync runs; openraft is told they are flushed only after that sync. Every
//! other log mutation goes through the same writer queue, which keeps it in
//! order with the appends before it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions};

use super::Shared;
use super::keys::{self, GroupCfs};
use super::log_writer::{Completion, LogOp, LogWrite, to_io};
use crate::error::StoreError;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The Raft log of one group. Cheap to clone; clones share the pending
/// entries and serve as openraft's log reader.
#[derive(Debug, Clone)]
pub struct MetaLogStore {
    shared: Arc<Shared>,
    cfs: Arc<GroupCfs>,
    /// Entries queued on the writer but not yet written, by index.
    pending: Arc<Mutex<BTreeMap<u64, Entry>>>,
    /// The last committed log id handed to `save_committed`.
    committed: Arc<Mutex<Option<LogId>>>,
}

impl MetaLogStore {
    pub(crate) fn new(shared: Arc<Shared>, cfs: Arc<GroupCfs>) -> Self {
        MetaLogStore {
            shared,
            cfs,
            pending: Arc::default(),
            committed: Arc::default(),
        }
    }

    /// The Raft group this log belongs to.
    pub fn group(&self) -> u32 {
        self.cfs.group
    }

    /// Queues `entries` for the next merged log write and returns at once;
    /// `on_flushed` runs on the writer thread once they are synced to disk
    /// (or the write failed). The entries are readable as soon as this
    /// returns. This is what [`RaftLogStorage::append`] does, callable
    /// without an openraft callback.
    pub fn append_with(
        &self,
        entries: Vec<Entry>,
        on_flushed: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let mut ops = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        for entry in &entries {
            ops.push(LogOp::Put {
                cf: Arc::clone(&self.cfs.log),
                key: keys::log_key(entry.log_id.index).to_vec(),
                value: super::to_json(entry, "log entry")?,
            });
            ids.push(entry.log_id);
        }
        {
            let mut pending = lock(&self.pending);
            for entry in entries {
                pending.insert(entry.log_id.index, entry);
            }
        }
        let indexes: Vec<u64> = ids.iter().map(|id| id.index).collect();
        let pending = Arc::clone(&self.pending);
        let done: Completion = Box::new(move |result| {
            if result.is_ok() {
                // Now readable from RocksDB. An entry replaced meanwhile (a
                // truncation and a new append at the same index) stays.
                let mut pending = lock(&pending);
                for id in ids {
                    if pending.get(&id.index).is_some_and(|e| e.log_id == id) {
                        pending.remove(&id.index);
                    }
                }
            }
            on_flushed(result);
        });
        let submitted = self.shared.writer.submit(LogWrite {
            group: self.cfs.group,
            entries: ops.len(),
            sync: true,
            ops,
            done,
        });
        if submitted.is_err() {
            // Never queued: they must not stay readable.
            let mut pending = lock(&self.pending);
            for index in indexes {
                pending.remove(&index);
            }
        }
        submitted
    }

    /// Queues `ops` on the writer and waits until they are written.
    async fn write(&self, ops: Vec<LogOp>, sync: bool) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.shared.writer.submit(LogWrite {
            group: self.cfs.group,
            entries: 0,
            sync,
            ops,
            done: Box::new(move |result| {
                let _ = tx.send(result);
            }),
        })?;
        rx.await.map_err(|_| StoreError::WriterClosed)?
    }

    fn meta_put(&self, key: &[u8], value: Vec<u8>) -> LogOp {
        LogOp::Put {
            cf: Arc::clone(&self.cfs.meta),
            key: key.to_vec(),
            value,
        }
    }

    async fn read_meta<T>(
        &self,
        key: &'static [u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let cf = Arc::clone(&self.cfs.meta);
        self.shared
            .run("get", move |db| super::get_json(db, &cf, key, what))
            .await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn owned_bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    // `end` is exclusive; `None` means unbounded.
    let end = match range.end_bound() {
        Bound::Included(&i) => i.checked_add(1),
        Bound::Excluded(&i) => Some(i),
        Bound::Unbounded => None,
    };
    (start, end)
}

/// Reads `[start, end)` from the log column family.
fn read_range(db: &DB, cf: &str, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StoreError> {
    let handle = super::cf_handle(db, cf)?;
    let mut read = ReadOptions::default();
    if let Some(end) = end {
        read.set_iterate_upper_bound(keys::log_key(end).to_vec());
    }
    let from = keys::log_key(start);
    let mut out = Vec::new();
    for item in db.iterator_cf_opt(&handle, read, IteratorMode::From(&from, Direction::Forward)) {
        let (key, value) = item.map_err(StoreError::rocks("read_logs"))?;
        let entry: Entry =
            serde_json::from_slice(&value).map_err(StoreError::decode("log entry", &key))?;
        if keys::log_index(&key) != Some(entry.log_id.index) {
            return Err(StoreError::CorruptLog {
                key: key.to_vec(),
                index: entry.log_id.index,
            });
        }
        out.push(entry);
    }
    Ok(out)
}

/// The id of the last entry in the log column family.
fn read_last(db: &DB, cf: &str) -> Result<Option<LogId>, StoreError> {
    let handle = super::cf_handle(db, cf)?;
    let Some(item) = db.iterator_cf(&handle, IteratorMode::End).next() else {
        return Ok(None);
    };
    let (key, value) = item.map_err(StoreError::rocks("read_logs"))?;
    let entry: Entry =
        serde_json::from_slice(&value).map_err(StoreError::decode("log entry", &key))?;
    Ok(Some(entry.log_id))
}

impl RaftLogReader<TypeConfig> for MetaLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = owned_bounds(&range);
        // Pending first: an entry leaves the map only after it is readable
        // from RocksDB, so reading the map before the database misses none.
        let pending: BTreeMap<u64, Entry> = {
            let pending = lock(&self.pending);
            let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
            pending
                .range((Bound::Included(start), upper))
                .map(|(i, e)| (*i, e.clone()))
                .collect()
        };
        // The leader replicating what it just appended is served from memory.
        if let Some(end) = end
            && end > start
            && pending.len() as u64 == end - start
        {
            return Ok(pending.into_values().collect());
        }
        let cf = Arc::clone(&self.cfs.log);
        let stored = self
            .shared
            .run("read_logs", move |db| read_range(db, &cf, start, end))
            .await
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))?;
        let mut merged: BTreeMap<u64, Entry> =
            stored.into_iter().map(|e| (e.log_id.index, e)).collect();
        merged.extend(pending);
        Ok(merged.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for MetaLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_pending = lock(&self.pending).last_key_value().map(|(_, e)| e.log_id);
        let cf = Arc::clone(&self.cfs.log);
        let meta = Arc::clone(&self.cfs.meta);
        let (last_stored, last_purged) = self
            .shared
            .run("get_log_state", move |db| {
                let purged: Option<LogId> =
                    super::get_json(db, &meta, keys::LAST_PURGED, "last purged")?;
                Ok((read_last(db, &cf)?, purged))
            })
            .await
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))?;
        let last_log_id = last_pending.max(last_stored).or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let value = super::to_json(vote, "vote")
            .map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Write))?;
        let op = self.meta_put(keys::VOTE, value);
        self.write(vec![op], true)
            .await
            .map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(keys::VOTE, "vote")
            .await
            .map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        *lock(&self.committed) = committed;
        let value = super::to_json(&committed, "committed")
            .map_err(|e| e.into_raft(ErrorSubject::Store, ErrorVerb::Write))?;
        // Not waited for and not synced by itself: it rides on the next log
        // sync, and being queued after the entries it covers it can never be
        // on disk without them. A stale committed id only means replaying a
        // little more at startup.
        let write = LogWrite {
            group: self.cfs.group,
            entries: 0,
            sync: false,
            ops: vec![self.meta_put(keys::COMMITTED, value)],
            done: Box::new(|_| {}),
        };
        self.shared
            .writer
            .submit(write)
            .map_err(|e| e.into_raft(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let cached = *lock(&self.committed);
        if cached.is_some() {
            return Ok(cached);
        }
        let stored: Option<Option<LogId>> = self
            .read_meta(keys::COMMITTED, "committed")
            .await
            .map_err(|e| e.into_raft(ErrorSubject::Store, ErrorVerb::Read))?;
        Ok(stored.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.append_with(entries, move |result| {
            callback.log_io_completed(to_io(result))
        })
        .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Write))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(group = self.cfs.group, %log_id, "truncate log");
        lock(&self.pending).retain(|index, _| *index < log_id.index);
        let op = LogOp::DeleteRange {
            cf: Arc::clone(&self.cfs.log),
            from: keys::log_key(log_id.index).to_vec(),
            to: keys::log_key(u64::MAX).to_vec(),
        };
        self.write(vec![op], true)
            .await
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(group = self.cfs.group, %log_id, "purge log");
        lock(&self.pending).retain(|index, _| *index > log_id.index);
        let purged = super::to_json(&log_id, "last purged")
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Delete))?;
        let ops = vec![
            self.meta_put(keys::LAST_PURGED, purged),
            LogOp::DeleteRange {
                cf: Arc::clone(&self.cfs.log),
                from: keys::log_key(0).to_vec(),
                to: keys::log_key(log_id.index.saturating_add(1)).to_vec(),
            },
        ];
        // Not synced: purged entries reappearing after a crash are harmless,
        // and the marker and the deletion are one atomic batch.
        self.write(ops, false)
            .await
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}
