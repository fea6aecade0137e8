//! The storage engine's error type.

use std::io;
use std::path::PathBuf;

/// Every way a storage-engine call can fail.
///
/// I/O failures carry the operation and the file they happened on. A write or
/// fsync failure also *poisons* the partition it hit: every later append to it
/// fails with [`StorageError::Poisoned`] instead of risking a silent hole in
/// the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An operating-system I/O call failed.
    #[error("{op} failed on {}: {source}", path.display())]
    Io {
        /// What the engine was doing (`"write"`, `"fdatasync"`, `"open"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An earlier write or fsync on this partition (or file) failed; no
    /// further appends are accepted until the engine is reopened.
    #[error("partition {partition} is poisoned by an earlier I/O failure: {cause}")]
    Poisoned {
        /// The partition (for a raw executor file, the partition it was opened under).
        partition: u64,
        /// The failure that poisoned it.
        cause: String,
    },

    /// The filesystem holds less free space than the engine keeps free
    /// ([`EngineBuilder::min_free_bytes`](crate::EngineBuilder::min_free_bytes)):
    /// nothing was written, and appends go on once space is freed.
    #[error("the disk has {free} bytes free, below the {min_free} bytes kept free")]
    DiskFull {
        /// Free bytes, as last sampled less what was appended since.
        free: u64,
        /// The floor.
        min_free: u64,
    },

    /// The partition was never created, or has been deleted.
    #[error("unknown partition {0}")]
    UnknownPartition(u64),

    /// `create_partition` was called for a partition that already exists.
    #[error("partition {0} already exists")]
    PartitionExists(u64),

    /// A record is larger than the engine's `max_record_bytes`.
    #[error("record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// The record's payload size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },

    /// An append carried no records.
    #[error("an append must carry at least one record")]
    EmptyBatch,

    /// The requested offset is older than the oldest retained record.
    #[error(
        "offset {requested} is below the log start offset {log_start} of partition {partition}"
    )]
    OffsetOutOfRange {
        /// The partition read.
        partition: u64,
        /// The offset asked for.
        requested: u64,
        /// The oldest offset still retained.
        log_start: u64,
    },

    /// Data read back from a segment failed its checksum or framing checks.
    #[error("corrupt record in {} at byte {position}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the bad frame.
        position: u64,
        /// What was wrong with it.
        reason: String,
    },

    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The engine or executor has been shut down.
    #[error("the storage engine is shut down")]
    Closed,

    /// Registering a metric failed (usually a name clash in the registry).
    #[error("failed to register storage metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
