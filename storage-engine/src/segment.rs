//! Segment files and their in-memory sparse index.
//!
//! A partition's log is a run of segment files named by the offset of their
//! first record (`00000000000000001000.log`). Each segment keeps a sparse
//! index in memory: one entry for its first record and one roughly every
//! `index_interval_bytes`, holding the record's offset, byte position and
//! timestamp. The same entries serve as the offset index (binary search by
//! offset) and as the time index (binary search by timestamp), because
//! timestamps never decrease within a partition.

use std::path::{Path, PathBuf};

use crate::executor::FileHandle;

/// File name suffix of segment files.
pub(crate) const SEGMENT_SUFFIX: &str = ".log";

/// The path of the segment starting at `base_offset` in `dir`.
pub(crate) fn segment_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}{SEGMENT_SUFFIX}"))
}

/// Parses a segment file name back into its base offset.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One sparse index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub offset: u64,
    pub position: u64,
    pub timestamp_ms: i64,
}

/// Sparse offset and time index of one segment.
#[derive(Debug, Clone, Default)]
pub(crate) struct SparseIndex {
    entries: Vec<IndexEntry>,
    bytes_since_entry: u64,
}

impl SparseIndex {
    /// Notes a record of `len` bytes at `position`, adding an entry when the
    /// interval has passed since the previous one.
    pub fn observe(&mut self, entry: IndexEntry, len: u64, interval: u64) {
        if self.entries.is_empty() || self.bytes_since_entry >= interval {
            self.entries.push(entry);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += len;
    }

    /// The entry at or before `offset`: where a scan for it starts.
    pub fn floor_offset(&self, offset: u64) -> Option<IndexEntry> {
        let after = self.entries.partition_point(|e| e.offset <= offset);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry whose timestamp is below `timestamp_ms`: a scan for the
    /// first record at or after that time starts there.
    pub fn before_time(&self, timestamp_ms: i64) -> Option<IndexEntry> {
        let after = self
            .entries
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// Forgets the entries of offsets at or after `offset` (records cut off
    /// the segment's end); the next record observed gets an entry.
    pub fn truncate_from(&mut self, offset: u64) {
        let keep = self.entries.partition_point(|e| e.offset < offset);
        self.entries.truncate(keep);
        self.bytes_since_entry = u64::MAX;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The in-memory state of one segment file.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub base_offset: u64,
    pub file: FileHandle,
    /// Bytes handed to the I/O thread so far.
    pub size: u64,
    /// Bytes acknowledged by the I/O thread: the readable prefix.
    pub committed_size: u64,
    /// One past the last offset handed to the I/O thread.
    pub next_offset: u64,
    /// One past the last offset acknowledged by the I/O thread.
    pub committed_next_offset: u64,
    /// Largest record timestamp in the segment (`i64::MIN` while empty).
    pub max_timestamp_ms: i64,
    pub index: SparseIndex,
}

impl Segment {
    /// A new segment file holding no records yet.
    pub fn empty(file: FileHandle, base_offset: u64) -> Self {
        Self {
            base_offset,
            file,
            size: 0,
            committed_size: 0,
            next_offset: base_offset,
            committed_next_offset: base_offset,
            max_timestamp_ms: i64::MIN,
            index: SparseIndex::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.next_offset == self.base_offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let path = segment_path(Path::new("/d"), 1234);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert_eq!(name, "00000000000000001234.log");
        assert_eq!(parse_segment_name(name), Some(1234));
        assert_eq!(parse_segment_name("1234.log"), None);
        assert_eq!(parse_segment_name("00000000000000001234.log.corrupt"), None);
    }

    #[test]
    fn sparse_index_lookups() {
        let mut index = SparseIndex::default();
        for i in 0..100u64 {
            let entry = IndexEntry {
                offset: 1000 + i,
                position: i * 100,
                timestamp_ms: 10 * i as i64,
            };
            index.observe(entry, 100, 1000);
        }
        assert_eq!(index.len(), 10);
        let e = index.floor_offset(1055).unwrap();
        assert_eq!((e.offset, e.position), (1050, 5000));
        assert_eq!(index.floor_offset(999), None);
        assert_eq!(index.floor_offset(5000).unwrap().offset, 1090);
        assert_eq!(index.before_time(505).unwrap().offset, 1050);
        assert_eq!(index.before_time(500).unwrap().offset, 1040);
        assert_eq!(index.before_time(0), None);
    }
}
