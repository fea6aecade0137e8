//! # tidemq-storage-engine
//!
//! An embeddable store of append-only partition logs whose file I/O never
//! runs on the caller's async runtime.
//!
//! Two layers, both public:
//!
//! - [`FileWriteExecutor`]: N I/O threads (`storage-io-{i}`), each running a
//!   compio runtime on io_uring (with a polling fallback), optionally pinned to
//!   a core. Requests reach the thread that owns their partition
//!   (`partition % N`) over a bounded mpsc channel and are answered through a
//!   `oneshot`, so any task on any runtime, or a plain thread, can await them.
//!   Each thread commits in groups: it drains its queue, writes each file's
//!   appends with one vectored write, issues one `fdatasync` per touched file
//!   (all files in parallel), then answers every waiter. Use it on its own for
//!   raw durable appends to files.
//! - [`StorageEngine`]: partitions of CRC-framed segment logs on top of the
//!   executor, with sparse offset and time indexes, recovery, retention and
//!   Prometheus metrics.
//!
//! ## Quick start
//!
//! ```
//! use tidemq_storage_engine::{StorageEngine, SyncPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tidemq_storage_engine::StorageError> {
//! # let tmp = tempfile::tempdir().map_err(|e| tidemq_storage_engine::StorageError::InvalidConfig(e.to_string()))?;
//! # let dir = tmp.path();
//! let engine = StorageEngine::builder(dir)
//!     .io_threads(2)
//!     .sync_policy(SyncPolicy::Always) // durable before append returns
//!     .open()
//!     .await?;
//! engine.create_partition(1).await?;
//! let appended = engine.append(1, &[b"hello".as_slice(), b"world"]).await?;
//! assert_eq!((appended.first_offset, appended.last_offset), (0, 1));
//!
//! let records = engine.read(1, 0, 1024).await?;
//! assert_eq!(records[1].payload.as_ref(), b"world");
//! engine.close().await?;
//!
//! // Reopening recovers everything that was acknowledged.
//! let engine = StorageEngine::builder(dir).open().await?;
//! assert_eq!(engine.partition_info(1)?.next_offset, 2);
//! # engine.close().await
//! # }
//! ```
//!
//! ## On disk
//!
//! ```text
//! {dir}/partitions/{partition id}/{base offset:020}.log     one file per segment
//!
//! segment = frame*        frame = | len u32 | crc32c u32 | offset u64 | timestamp_ms i64 | payload |
//! ```
//!
//! All integers are little-endian; `len` counts the whole frame and the CRC32C
//! covers `len` and everything after the CRC. At open every segment is
//! scanned: a torn or corrupt tail is truncated at the last valid record; the
//! bytes cut after a corrupt record that is not a crash's torn tail (a bad
//! frame inside a sealed segment, say) are first copied to
//! `*.log.tail-{position}.corrupt`, valid records after it included; and a
//! segment with nothing readable in it is renamed `*.log.corrupt`. All are
//! logged, counted in metrics and listed in [`StorageEngine::recovery_report`].
//!
//! ## Failure model
//!
//! A failed write or `fdatasync` (a full disk, an I/O error) poisons the file
//! and its partition: the appends of that round get the I/O error and every
//! append queued behind it gets [`StorageError::Poisoned`], so the log never
//! acknowledges a record that follows a hole. Once the appends in flight are
//! answered, the next append repairs the partition (at most once per
//! [`EngineBuilder::heal_retry`], default 1 s): damaged segments are cut back
//! to their last acknowledged record and synced, and appends resume. While
//! the disk stays full the repair fails and appends keep failing fast; when
//! space is freed the partition recovers by itself, with nothing that was
//! acknowledged lost. Reads work throughout. To keep room for what must
//! still be written on a full disk (other stores beside the log, a repair, the
//! next start), [`EngineBuilder::min_free_bytes`] sets a floor of free space
//! below which appends fail with [`StorageError::DiskFull`] without writing
//! anything, until space is freed. New segment files are made
//! durable in their directory (`fsync` of the partition directory) before
//! they take records.

#![deny(missing_docs)]

mod engine;
mod error;
mod executor;
mod frame;
mod metrics;
mod partition;
mod recovery;
mod segment;
mod space;

pub use engine::{AppendResult, EngineBuilder, PartitionInfo, StorageEngine};
pub use error::{Result, StorageError};
pub use executor::{ExecutorBuilder, FileHandle, FileWriteExecutor, IoDriver, SyncPolicy};
pub use frame::{FRAME_HEADER_LEN, Record};
pub use partition::Retention;
pub use recovery::RecoveryReport;
