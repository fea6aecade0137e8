//! Three ways to append a record to a partition file and make it durable.
//!
//! | path | where the write and the fsync run |
//! |---|---|
//! | [`TokioFs`] | `tokio::fs`: every call is shipped to tokio's blocking pool |
//! | [`SpawnBlocking`] | `spawn_blocking` around `std::fs` write + `fdatasync` |
//! | [`Executor`] | the [`FileWriteExecutor`]: io_uring threads with group commit |
//!
//! Each partition is one file; appends to a partition are serialised (a
//! per-file lock for the first two paths, the owning I/O thread for the
//! executor), so every path gives the same ordering guarantee.

use std::fs::OpenOptions;
use std::future::Future;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tidemq_storage_engine::{FileHandle, FileWriteExecutor, SyncPolicy};
use tokio::io::AsyncWriteExt;

/// Appends records to partition files, durably when `sync` was asked for.
pub trait DurableAppend: Send + Sync + 'static {
    /// A short name for tables.
    fn name(&self) -> &'static str;

    /// Appends `record` to `partition`'s file; with sync on, the record is
    /// on stable storage when the future completes.
    fn append(
        &self,
        partition: usize,
        record: Bytes,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

fn partition_path(dir: &Path, partition: usize) -> std::path::PathBuf {
    dir.join(format!("partition-{partition}.log"))
}

fn open_std(dir: &Path, partition: usize) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(partition_path(dir, partition))
}

/// `tokio::fs::File`, one per partition behind an async mutex.
pub struct TokioFs {
    files: Vec<tokio::sync::Mutex<tokio::fs::File>>,
    sync: bool,
}

impl TokioFs {
    /// Opens `partitions` files in `dir`.
    pub fn open(dir: &Path, partitions: usize, sync: bool) -> io::Result<Self> {
        let files = (0..partitions)
            .map(|p| {
                open_std(dir, p).map(|f| tokio::sync::Mutex::new(tokio::fs::File::from_std(f)))
            })
            .collect::<io::Result<_>>()?;
        Ok(Self { files, sync })
    }
}

impl DurableAppend for TokioFs {
    fn name(&self) -> &'static str {
        "tokio::fs"
    }

    async fn append(&self, partition: usize, record: Bytes) -> io::Result<()> {
        let mut file = self.files[partition].lock().await;
        file.write_all(&record).await?;
        file.flush().await?;
        if self.sync {
            file.sync_data().await?;
        }
        Ok(())
    }
}

/// `std::fs::File` calls wrapped in `tokio::task::spawn_blocking`.
pub struct SpawnBlocking {
    files: Vec<Arc<Mutex<std::fs::File>>>,
    sync: bool,
}

impl SpawnBlocking {
    /// Opens `partitions` files in `dir`.
    pub fn open(dir: &Path, partitions: usize, sync: bool) -> io::Result<Self> {
        let files = (0..partitions)
            .map(|p| open_std(dir, p).map(|f| Arc::new(Mutex::new(f))))
            .collect::<io::Result<_>>()?;
        Ok(Self { files, sync })
    }
}

impl DurableAppend for SpawnBlocking {
    fn name(&self) -> &'static str {
        "spawn_blocking+std::fs"
    }

    async fn append(&self, partition: usize, record: Bytes) -> io::Result<()> {
        let file = Arc::clone(&self.files[partition]);
        let sync = self.sync;
        tokio::task::spawn_blocking(move || {
            let mut file = file
                .lock()
                .map_err(|_| io::Error::other("file lock poisoned"))?;
            file.write_all(&record)?;
            if sync {
                file.sync_data()?;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// The storage engine's [`FileWriteExecutor`] (compio on io_uring).
pub struct Executor {
    executor: FileWriteExecutor,
    files: Vec<FileHandle>,
}

/// How the executor path is set up.
#[derive(Debug, Clone, Copy)]
pub struct ExecutorOptions {
    /// I/O threads.
    pub threads: usize,
    /// The executor's `max_inflight_syncs`.
    pub inflight_syncs: usize,
    /// Zeros kept written past each file's end (the executor's `preallocate`).
    pub preallocate: u64,
    /// Queued bytes that start a round while another syncs (the executor's
    /// `overlap_sync_bytes`).
    pub overlap_bytes: u64,
}

impl Executor {
    /// Starts the I/O threads and opens `partitions` files in `dir`.
    pub async fn open(
        dir: &Path,
        partitions: usize,
        sync: bool,
        options: ExecutorOptions,
    ) -> io::Result<Self> {
        let policy = if sync {
            SyncPolicy::Always
        } else {
            SyncPolicy::Never
        };
        let executor = FileWriteExecutor::builder()
            .threads(options.threads)
            .max_inflight_syncs(options.inflight_syncs)
            .preallocate(options.preallocate)
            .overlap_sync_bytes(options.overlap_bytes)
            .sync_policy(policy)
            .build()
            .map_err(io::Error::other)?;
        let mut files = Vec::with_capacity(partitions);
        for p in 0..partitions {
            let file = executor
                .open(p as u64, partition_path(dir, p))
                .await
                .map_err(io::Error::other)?;
            files.push(file);
        }
        Ok(Self { executor, files })
    }

    /// Syncs and stops the I/O threads.
    pub async fn shutdown(&self) -> io::Result<()> {
        self.executor.shutdown().await.map_err(io::Error::other)
    }
}

impl DurableAppend for Executor {
    fn name(&self) -> &'static str {
        "FileWriteExecutor(io_uring)"
    }

    async fn append(&self, partition: usize, record: Bytes) -> io::Result<()> {
        self.executor
            .append(&self.files[partition], record.to_vec())
            .await
            .map(|_| ())
            .map_err(io::Error::other)
    }
}
