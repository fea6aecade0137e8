//! Snapshots of a group's state machine: the blob format, the builder, and
//! the `{dir}/snapshots/g{n}.snap` file that holds the current snapshot.
//!
//! ```text
//! blob   = "TMQSNAP1" | meta_len u32 | meta (JSON SnapshotMeta) | record* | end
//! record = key_len u32 | key | value_len u32 | value      one g{n}_sm pair
//! end    = 0xFFFF_FFFF u32 | records u64 | crc32c u32     CRC of all record bytes
//! ```
//!
//! Integers are big-endian. Records are the data keys of `g{n}_sm` in key
//! order, streamed straight from a RocksDB point-in-time snapshot into the
//! blob; reserved keys (`!applied`, `!membership`) are not records, the meta
//! carries them.

use std::fs;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::Snapshot;
use openraft::{ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};

use super::Shared;
use super::keys::{self, GroupCfs};
use crate::error::StoreError;
use crate::types::{LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const MAGIC: &[u8; 8] = b"TMQSNAP1";
const END_MARK: u32 = u32::MAX;
/// Bytes of a snapshot file written between two syncs.
const SYNC_CHUNK: usize = 1 << 20;

/// The current snapshot file of a group, and the meta of what it holds.
#[derive(Debug)]
pub(crate) struct SnapshotSlot {
    path: PathBuf,
    /// `None` until a snapshot is built or installed.
    current: Mutex<Option<SnapshotMeta>>,
}

impl SnapshotSlot {
    /// Reads the meta of the group's snapshot file, if there is one.
    pub(crate) fn load(dir: &Path, group: u32) -> Result<Self, StoreError> {
        let path = dir.join(format!("g{group}.snap"));
        let current = read_header(&path).map_err(|source| StoreError::SnapshotIo {
            path: path.clone(),
            source,
        })?;
        let current = match current {
            Some(header) => Some(decode_meta(&header)?.0),
            None => None,
        };
        Ok(SnapshotSlot {
            path,
            current: Mutex::new(current),
        })
    }

    pub(crate) fn current_meta(&self) -> Option<SnapshotMeta> {
        lock(&self.current).clone()
    }

    /// Makes `blob` the current snapshot unless a newer one already is.
    /// Written to a temporary file, synced, then renamed over the old one.
    pub(crate) fn store(&self, meta: &SnapshotMeta, blob: &[u8]) -> Result<(), StoreError> {
        let mut current = lock(&self.current);
        if current
            .as_ref()
            .is_some_and(|c| c.last_log_id > meta.last_log_id)
        {
            return Ok(());
        }
        let tmp = self.path.with_extension("snap.tmp");
        let io = |source| StoreError::SnapshotIo {
            path: tmp.clone(),
            source,
        };
        let mut file = fs::File::create(&tmp).map_err(io)?;
        // Synced a chunk at a time: one write-back of the whole blob would
        // fill the device's queue and stall the Raft log's fsyncs behind it
        // (p99 spikes of ~100 ms at every snapshot, docs/benchmarks.md §7d).
        for chunk in blob.chunks(SYNC_CHUNK) {
            file.write_all(chunk).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        *current = Some(meta.clone());
        Ok(())
    }

    /// Reads the whole current snapshot.
    pub(crate) fn read(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
        let current = lock(&self.current);
        let Some(meta) = current.clone() else {
            return Ok(None);
        };
        let blob = fs::read(&self.path).map_err(|source| StoreError::SnapshotIo {
            path: self.path.clone(),
            source,
        })?;
        Ok(Some((meta, blob)))
    }
}

/// Reads magic, length and meta of a snapshot file, not its records.
fn read_header(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut header = vec![0u8; MAGIC.len() + 4];
    file.read_exact(&mut header)?;
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[MAGIC.len()..]);
    let len = u32::from_be_bytes(len) as usize;
    header.resize(MAGIC.len() + 4 + len, 0);
    file.read_exact(&mut header[MAGIC.len() + 4..])?;
    Ok(Some(header))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn corrupt(reason: impl Into<String>) -> StoreError {
    StoreError::CorruptSnapshot {
        reason: reason.into(),
    }
}

/// Splits off a big-endian `u32`.
fn take_u32(buf: &[u8], at: &mut usize) -> Result<u32, StoreError> {
    let bytes = buf
        .get(*at..*at + 4)
        .ok_or_else(|| corrupt("truncated length"))?;
    *at += 4;
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes);
    Ok(u32::from_be_bytes(word))
}

fn take_bytes<'a>(buf: &'a [u8], at: &mut usize, len: u32) -> Result<&'a [u8], StoreError> {
    let end = at
        .checked_add(len as usize)
        .ok_or_else(|| corrupt("length overflow"))?;
    let bytes = buf
        .get(*at..end)
        .ok_or_else(|| corrupt("truncated record"))?;
    *at = end;
    Ok(bytes)
}

/// Decodes the header: the meta and the offset of the first record.
pub(crate) fn decode_meta(blob: &[u8]) -> Result<(SnapshotMeta, usize), StoreError> {
    if blob.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(corrupt("bad magic"));
    }
    let mut at = MAGIC.len();
    let len = take_u32(blob, &mut at)?;
    let json = take_bytes(blob, &mut at, len)?;
    let meta = serde_json::from_slice(json).map_err(StoreError::decode("snapshot meta", MAGIC))?;
    Ok((meta, at))
}

/// Walks the records after the header, checking count and CRC, calling `f`
/// for each key/value pair.
pub(crate) fn for_each_record(
    blob: &[u8],
    mut at: usize,
    mut f: impl FnMut(&[u8], &[u8]),
) -> Result<u64, StoreError> {
    let start = at;
    let mut records = 0u64;
    loop {
        let key_len = take_u32(blob, &mut at)?;
        if key_len == END_MARK {
            break;
        }
        let key = take_bytes(blob, &mut at, key_len)?;
        let value_len = take_u32(blob, &mut at)?;
        let value = take_bytes(blob, &mut at, value_len)?;
        f(key, value);
        records += 1;
    }
    let crc = crc32c::crc32c(&blob[start..at - 4]);
    let count = take_bytes(blob, &mut at, 8)?;
    let mut word = [0u8; 8];
    word.copy_from_slice(count);
    if u64::from_be_bytes(word) != records {
        return Err(corrupt("record count mismatch"));
    }
    if take_u32(blob, &mut at)? != crc {
        return Err(corrupt("crc mismatch"));
    }
    if at != blob.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(records)
}

/// Builds a snapshot blob from a point-in-time view of the group's state
/// machine column family.
fn build(db: &DB, cfs: &GroupCfs) -> Result<(SnapshotMeta, Vec<u8>), StoreError> {
    let cf = super::cf_handle(db, &cfs.sm)?;
    let view = db.snapshot();
    let get = |key: &[u8]| {
        view.get_cf(&cf, key)
            .map_err(StoreError::rocks("snapshot_build"))
    };
    let last_log_id: Option<LogId> = match get(keys::APPLIED)? {
        Some(bytes) => {
            serde_json::from_slice(&bytes).map_err(StoreError::decode("applied", keys::APPLIED))?
        }
        None => None,
    };
    let last_membership: StoredMembership = match get(keys::MEMBERSHIP)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(StoreError::decode("membership", keys::MEMBERSHIP))?,
        None => StoredMembership::default(),
    };
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let index = last_log_id.map_or(0, |id| id.index);
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id: format!("g{}-{index}-{millis}", cfs.group),
    };

    let mut blob = Vec::with_capacity(4096);
    blob.extend_from_slice(MAGIC);
    let meta_json = super::to_json(&meta, "snapshot meta")?;
    blob.extend_from_slice(&(meta_json.len() as u32).to_be_bytes());
    blob.extend_from_slice(&meta_json);
    let records_start = blob.len();
    let mut records = 0u64;
    for item in view.iterator_cf(&cf, IteratorMode::Start) {
        let (key, value) = item.map_err(StoreError::rocks("snapshot_build"))?;
        if key.first() == Some(&keys::RESERVED_PREFIX) {
            continue;
        }
        blob.extend_from_slice(&(key.len() as u32).to_be_bytes());
        blob.extend_from_slice(&key);
        blob.extend_from_slice(&(value.len() as u32).to_be_bytes());
        blob.extend_from_slice(&value);
        records += 1;
    }
    let crc = crc32c::crc32c(&blob[records_start..]);
    blob.extend_from_slice(&END_MARK.to_be_bytes());
    blob.extend_from_slice(&records.to_be_bytes());
    blob.extend_from_slice(&crc.to_be_bytes());
    Ok((meta, blob))
}

/// Checks that `blob` is a whole, uncorrupted snapshot of `meta`.
pub(crate) fn verify(meta: &SnapshotMeta, blob: &[u8]) -> Result<(), StoreError> {
    let at = check_header(meta, blob)?;
    for_each_record(blob, at, |_, _| {})?;
    Ok(())
}

/// Decodes the header, checks it against `meta` and returns where the
/// records start.
fn check_header(meta: &SnapshotMeta, blob: &[u8]) -> Result<usize, StoreError> {
    let (header, at) = decode_meta(blob)?;
    if header.last_log_id != meta.last_log_id || header.last_membership != meta.last_membership {
        return Err(corrupt("blob meta differs from the installed meta"));
    }
    Ok(at)
}

/// Replaces the group's state machine with the snapshot in one synced
/// `WriteBatch`: a range delete of the whole column family, every record,
/// and the applied log id and membership of `meta`.
pub(crate) fn install(
    db: &DB,
    cfs: &GroupCfs,
    meta: &SnapshotMeta,
    blob: &[u8],
) -> Result<(), StoreError> {
    let at = check_header(meta, blob)?;
    let cf = super::cf_handle(db, &cfs.sm)?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(&cf, &b""[..], keys::SM_END);
    for_each_record(blob, at, |key, value| batch.put_cf(&cf, key, value))?;
    batch.put_cf(
        &cf,
        keys::APPLIED,
        super::to_json(&meta.last_log_id, "applied")?,
    );
    batch.put_cf(
        &cf,
        keys::MEMBERSHIP,
        super::to_json(&meta.last_membership, "membership")?,
    );
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)
        .map_err(StoreError::rocks("snapshot_install"))
}

/// Builds snapshots of one group; see [`RaftSnapshotBuilder`].
#[derive(Debug)]
pub struct MetaSnapshotBuilder {
    pub(crate) shared: Arc<Shared>,
    pub(crate) cfs: Arc<GroupCfs>,
    pub(crate) slot: Arc<SnapshotSlot>,
}

impl RaftSnapshotBuilder<TypeConfig> for MetaSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let cfs = Arc::clone(&self.cfs);
        let slot = Arc::clone(&self.slot);
        let (meta, blob) = self
            .shared
            .run_background("snapshot_build", move |db| {
                let (meta, blob) = build(db, &cfs)?;
                slot.store(&meta, &blob)?;
                Ok((meta, blob))
            })
            .await
            .map_err(|e| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        tracing::info!(group = self.cfs.group, id = %meta.snapshot_id, bytes = blob.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(blob)),
        })
    }
}
