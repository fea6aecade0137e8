//! The snapshot blob: how a group's state machine travels to a follower.
//!
//! ```text
//! blob   = "TMQSNAP1" | meta_len u32 | meta (JSON SnapshotMeta) | record* | end
//! record = key_len u32 | key | value_len u32 | value      one g{n}_sm pair
//! end    = 0xFFFF_FFFF u32 | records u64 | crc32c u32     CRC of all record bytes
//! ```
//!
//! Integers are big-endian. Records are the data keys of `g{n}_sm` in key
//! order; reserved keys (`!applied`, `!membership`) are not records, the meta
//! carries them. A node keeps its own snapshots as RocksDB checkpoints
//! ([`super::slot`]) and encodes a blob from one only when a follower needs
//! it; a received blob is kept as `{dir}/snapshots/g{n}.snap` until the next
//! snapshot replaces it.

use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};

use super::keys::{self, GroupCfs};
use crate::error::StoreError;
use crate::types::{LogId, SnapshotMeta, StoredMembership};

pub(crate) const MAGIC: &[u8; 8] = b"TMQSNAP1";
const END_MARK: u32 = u32::MAX;

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

/// The meta of the state in `db` (a checkpoint of the store): the applied
/// log id and membership of `cfs.group`, and a new snapshot id.
pub(crate) fn read_meta(db: &DB, cfs: &GroupCfs) -> Result<SnapshotMeta, StoreError> {
    let last_log_id: Option<Option<LogId>> =
        super::get_json(db, &cfs.sm, keys::APPLIED, "applied")?;
    let last_log_id = last_log_id.flatten();
    let last_membership: StoredMembership =
        super::get_json(db, &cfs.sm, keys::MEMBERSHIP, "membership")?.unwrap_or_default();
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let index = last_log_id.map_or(0, |id| id.index);
    Ok(SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id: format!("g{}-{index}-{millis}", cfs.group),
    })
}

/// Encodes the group's state machine column family in `db` as the blob of
/// `meta`.
pub(crate) fn encode(db: &DB, cfs: &GroupCfs, meta: &SnapshotMeta) -> Result<Vec<u8>, StoreError> {
    let cf = super::cf_handle(db, &cfs.sm)?;
    let mut blob = Vec::with_capacity(4096);
    blob.extend_from_slice(MAGIC);
    let meta_json = super::to_json(meta, "snapshot meta")?;
    blob.extend_from_slice(&(meta_json.len() as u32).to_be_bytes());
    blob.extend_from_slice(&meta_json);
    let records_start = blob.len();
    let mut records = 0u64;
    for item in db.iterator_cf(&cf, IteratorMode::Start) {
        let (key, value) = item.map_err(StoreError::rocks("snapshot_encode"))?;
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
    Ok(blob)
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
