//! The `FileWriteExecutor`: io_uring threads that own every file descriptor.
//!
//! ```text
//!  any task / thread                     storage-io-{i} (compio runtime, optionally pinned)
//!  ─────────────────                     ───────────────────────────────────────────────
//!  append(file, bytes) ──mpsc[id % N]──▶ drain queue ─▶ vectored write per file ─▶ fdatasync
//!        ▲                                               per touched file (concurrently)
//!        └──────────── oneshot reply ◀──────────────────── answer every waiter of the round
//! ```
//!
//! Requests for one partition always go to the same thread (`partition % N`)
//! over one FIFO channel, so writes to a partition are applied in the order
//! they were sent. Each thread runs a compio runtime and awaits its channel
//! natively; no thread is parked per request.

mod commit;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::Registry;
use tokio::sync::mpsc;
use tracing::info;

use crate::error::{Result, StorageError};
use crate::metrics::ExecutorMetrics;

/// When appended data is made durable with `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Every append is on stable storage before it is acknowledged. Concurrent
    /// appends share one `fdatasync` per file per round (group commit).
    #[default]
    Always,
    /// Appends are acknowledged once written; dirty files are synced at least
    /// this often. A crash can lose up to one interval of acknowledged data.
    Interval(Duration),
    /// Never sync on the write path (files are still synced on close and
    /// shutdown). A crash can lose anything the OS had not written back.
    Never,
}

/// The io driver the I/O threads actually run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    /// Linux io_uring: completion-based, batched submissions.
    IoUring,
    /// The readiness-based fallback, used where io_uring is unavailable or blocked.
    Polling,
}

impl IoDriver {
    /// The driver's name as used in logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            IoDriver::IoUring => "io_uring",
            IoDriver::Polling => "polling",
        }
    }
}

/// A file opened on one of the executor's I/O threads.
///
/// Cheap to clone. The partition id decides which thread owns the file.
#[derive(Debug, Clone)]
pub struct FileHandle {
    id: u64,
    partition: u64,
    path: Arc<Path>,
}

impl FileHandle {
    /// The partition this file was opened under.
    pub fn partition(&self) -> u64 {
        self.partition
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A request to an I/O thread.
pub(crate) enum Command {
    /// Open (creating if missing) for appending; replies with the file's length.
    Open {
        file: FileHandle,
        reply: Option<oneshot::Sender<Result<u64>>>,
    },
    /// Append `data` at the end of the file; replies with the position written at.
    Append {
        file: FileHandle,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Read exactly `len` bytes at `pos`, opening the file read-only if it is not open.
    Read {
        file: FileHandle,
        pos: u64,
        len: usize,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    },
    /// `fdatasync` the file if it has unsynced writes.
    Sync {
        file: FileHandle,
        reply: oneshot::Sender<Result<()>>,
    },
    /// The file takes no more appends: once its appends are committed, cut
    /// its preallocated zeros and sync it. It stays open for reads.
    Seal { file: FileHandle },
    /// Sync and close the file; with `remove`, also delete it.
    Close {
        file: FileHandle,
        remove: bool,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    /// Run blocking work (recovery scans, directory changes) on the I/O thread,
    /// after every write queued before it.
    Blocking(Box<dyn FnOnce() + Send>),
    /// Finish everything queued before, sync all files and stop the thread.
    Shutdown { reply: oneshot::Sender<Result<()>> },
}

/// Builds a [`FileWriteExecutor`].
#[derive(Debug, Clone)]
pub struct ExecutorBuilder {
    threads: usize,
    io_workers: u32,
    pin_cores: bool,
    queue_capacity: usize,
    max_batch: usize,
    max_inflight_syncs: usize,
    preallocate: u64,
    overlap_sync_bytes: u64,
    sync: SyncPolicy,
    registry: Option<Registry>,
}

impl Default for ExecutorBuilder {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            io_workers: 64,
            pin_cores: false,
            queue_capacity: 8192,
            max_batch: 4096,
            max_inflight_syncs: 4,
            preallocate: 0,
            overlap_sync_bytes: 64 * 1024,
            sync: SyncPolicy::Always,
            registry: None,
        }
    }
}

impl ExecutorBuilder {
    /// Number of I/O threads (default: the number of cores).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Kernel io-wq workers each io_uring thread may use for blocking work
    /// such as `fdatasync` (default 64): the number of files one thread can
    /// sync at the same time.
    pub fn io_workers(mut self, workers: u32) -> Self {
        self.io_workers = workers;
        self
    }

    /// Pin I/O thread `i` to core `i % cores` (default: off).
    pub fn pin_cores(mut self, pin: bool) -> Self {
        self.pin_cores = pin;
        self
    }

    /// Capacity of each I/O thread's request channel (default 8192). A full
    /// channel makes senders wait: that is the engine's backpressure.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Most requests taken into one group-commit round (default 4096).
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// When appends are synced (default [`SyncPolicy::Always`]).
    pub fn sync_policy(mut self, sync: SyncPolicy) -> Self {
        self.sync = sync;
        self
    }

    /// Commit rounds of one file that may have their `fdatasync` in flight
    /// at once (default 4). 1 makes each round wait for the previous sync.
    /// See [`overlap_sync_bytes`](Self::overlap_sync_bytes) for when a round
    /// starts while another syncs.
    pub fn max_inflight_syncs(mut self, rounds: usize) -> Self {
        self.max_inflight_syncs = rounds;
        self
    }

    /// Bytes that must be queued for a file before a round starts while an
    /// earlier round's `fdatasync` is still in flight (default 64 KiB).
    /// Overlapping syncs of one file slow each other down, which pays off
    /// only for large appends that keep the device busy; smaller appends wait
    /// for the sync and share the next one. 0 overlaps whenever anything is
    /// queued (up to [`max_inflight_syncs`](Self::max_inflight_syncs)).
    pub fn overlap_sync_bytes(mut self, bytes: u64) -> Self {
        self.overlap_sync_bytes = bytes;
        self
    }

    /// Keep this many bytes of zeros written past each file's end (default 0,
    /// off). An `fdatasync` after writing over blocks that already exist
    /// need not commit a new size and block allocation to the filesystem's
    /// journal, so appends with [`SyncPolicy::Always`] or
    /// [`SyncPolicy::Interval`] sync faster. The zeros are written beside the
    /// appends, through a second descriptor opened with `O_DIRECT`, and
    /// synced on their own, so no append waits for them. Ignored with
    /// [`SyncPolicy::Never`] and where the filesystem refuses `O_DIRECT`
    /// (tmpfs before Linux 6.6, some network filesystems).
    ///
    /// While a file is open its length on disk exceeds its logical end
    /// ([`FileWriteExecutor::len`]); the zeros are cut when the file is
    /// closed and at shutdown. After a crash they remain, so a reader must
    /// find the end of the data from its content, as the storage engine's
    /// segment recovery does.
    pub fn preallocate(mut self, bytes: u64) -> Self {
        self.preallocate = bytes;
        self
    }

    /// Register metrics in this registry instead of a private one.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Starts the I/O threads. Returns once every thread runs its io driver.
    pub fn build(self) -> Result<FileWriteExecutor> {
        if self.threads == 0
            || self.queue_capacity == 0
            || self.max_batch == 0
            || self.max_inflight_syncs == 0
        {
            return Err(StorageError::InvalidConfig(
                "threads, queue_capacity, max_batch and max_inflight_syncs must be at least 1"
                    .into(),
            ));
        }
        if let SyncPolicy::Interval(interval) = self.sync
            && interval.is_zero()
        {
            return Err(StorageError::InvalidConfig(
                "a sync interval must be above zero (use SyncPolicy::Always)".into(),
            ));
        }
        let registry = self.registry.unwrap_or_default();
        let metrics = ExecutorMetrics::register(&registry)?;
        let cores = if self.pin_cores {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };

        let mut senders = Vec::with_capacity(self.threads);
        let mut threads = Vec::with_capacity(self.threads);
        let mut driver = None;
        for index in 0..self.threads {
            let (tx, rx) = mpsc::channel(self.queue_capacity);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let core = cores.get(index % cores.len().max(1)).copied();
            let config = worker::WorkerConfig {
                index,
                io_workers: self.io_workers,
                sync: self.sync,
                max_batch: self.max_batch,
                max_inflight_syncs: self.max_inflight_syncs,
                preallocate: self.preallocate,
                overlap_bytes: self.overlap_sync_bytes,
                metrics: metrics.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("storage-io-{index}"))
                .spawn(move || worker::run(config, core, rx, ready_tx))
                .map_err(|e| StorageError::io("spawn I/O thread", "storage-io", e))?;
            let started = ready_rx
                .recv()
                .map_err(|_| StorageError::Closed)?
                .map_err(|e| StorageError::io("start io driver", "storage-io", e))?;
            driver.get_or_insert(started);
            senders.push(tx);
            threads.push(thread);
        }
        let driver = driver.unwrap_or(IoDriver::Polling);
        metrics.io_driver.with_label_values(&[driver.name()]).set(1);
        info!(
            threads = self.threads,
            driver = driver.name(),
            sync = ?self.sync,
            pinned = !cores.is_empty(),
            "storage I/O threads started"
        );
        Ok(FileWriteExecutor {
            inner: Arc::new(Inner {
                senders,
                threads: Mutex::new(threads),
                driver,
                sync: self.sync,
                next_file_id: AtomicU64::new(1),
            }),
        })
    }
}

/// A pool of io_uring threads that performs durable file appends for any
/// async task or thread.
///
/// Cloning is cheap; all clones share the threads. Dropping the last clone
/// lets the threads drain their queues, sync and exit;
/// [`shutdown`](Self::shutdown) does the same and waits for it.
///
/// ```
/// use tidemq_storage_engine::FileWriteExecutor;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let executor = FileWriteExecutor::builder().threads(1).build()?;
/// let file = executor.open(7, dir.path().join("journal")).await?;
/// let first = executor.append(&file, b"hello ".to_vec()).await?;
/// let second = executor.append(&file, b"world".to_vec()).await?;
/// assert_eq!((first, second), (0, 6));
/// assert_eq!(executor.read_at(&file, 0, 11).await?, b"hello world");
/// executor.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct FileWriteExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    senders: Vec<mpsc::Sender<Command>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    driver: IoDriver,
    sync: SyncPolicy,
    next_file_id: AtomicU64,
}

impl std::fmt::Debug for FileWriteExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriteExecutor")
            .field("threads", &self.inner.senders.len())
            .field("driver", &self.inner.driver)
            .field("sync", &self.inner.sync)
            .finish()
    }
}

impl FileWriteExecutor {
    /// A builder with the defaults: one thread per core, unpinned, `SyncPolicy::Always`.
    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder::default()
    }

    /// Number of I/O threads.
    pub fn threads(&self) -> usize {
        self.inner.senders.len()
    }

    /// The io driver in use.
    pub fn driver(&self) -> IoDriver {
        self.inner.driver
    }

    /// The sync policy appends follow.
    pub fn sync_policy(&self) -> SyncPolicy {
        self.inner.sync
    }

    /// Opens `path` for appending (creating it if missing) on the thread that
    /// owns `partition`.
    pub async fn open(&self, partition: u64, path: impl Into<PathBuf>) -> Result<FileHandle> {
        let file = self.handle(partition, path.into());
        let (reply, rx) = oneshot::channel();
        self.send(Command::Open {
            file: file.clone(),
            reply: Some(reply),
        })
        .await?;
        recv(rx).await?;
        Ok(file)
    }

    /// The current length of an open file's data, as the I/O thread sees it
    /// (opening the file if it is not open yet). Preallocated zeros past the
    /// end are not counted.
    pub async fn len(&self, file: &FileHandle) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Open {
            file: file.clone(),
            reply: Some(reply),
        })
        .await?;
        recv(rx).await
    }

    /// Appends `data` at the end of `file` and returns the position it was
    /// written at. With [`SyncPolicy::Always`] the data is on stable storage
    /// when this returns.
    pub async fn append(&self, file: &FileHandle, data: Vec<u8>) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Append {
            file: file.clone(),
            data,
            reply,
        })
        .await?;
        recv(rx).await
    }

    /// Reads exactly `len` bytes at `pos`.
    pub async fn read_at(&self, file: &FileHandle, pos: u64, len: usize) -> Result<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Read {
            file: file.clone(),
            pos,
            len,
            reply,
        })
        .await?;
        recv(rx).await
    }

    /// Makes every write to `file` acknowledged so far durable.
    pub async fn sync(&self, file: &FileHandle) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Sync {
            file: file.clone(),
            reply,
        })
        .await?;
        recv(rx).await
    }

    /// Tells the I/O thread that `file` takes no more appends: once the
    /// appends queued before are committed, its preallocated zeros are cut
    /// and the cut is synced. The file stays open for reads.
    pub async fn seal(&self, file: &FileHandle) -> Result<()> {
        self.send(Command::Seal { file: file.clone() }).await
    }

    /// Syncs and closes `file`.
    pub async fn close(&self, file: &FileHandle) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Close {
            file: file.clone(),
            remove: false,
            reply: Some(reply),
        })
        .await?;
        recv(rx).await
    }

    /// Lets every thread finish the requests queued so far, sync every dirty
    /// file and exit. Later calls on any clone fail with [`StorageError::Closed`].
    pub async fn shutdown(&self) -> Result<()> {
        let mut first_error = None;
        for sender in &self.inner.senders {
            let (reply, rx) = oneshot::channel();
            if sender.send(Command::Shutdown { reply }).await.is_err() {
                continue; // already stopped
            }
            if let Err(e) = recv(rx).await
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        let threads = std::mem::take(
            &mut *self
                .inner
                .threads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for thread in threads {
            // The thread has answered its shutdown and is returning.
            let _ = thread.join();
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A handle for a file that has not been opened yet.
    pub(crate) fn handle(&self, partition: u64, path: PathBuf) -> FileHandle {
        FileHandle {
            id: self.inner.next_file_id.fetch_add(1, Ordering::Relaxed),
            partition,
            path: path.into(),
        }
    }

    /// Reserves `n` slots in the queue of `partition`'s thread, so a caller can
    /// decide what to send while holding its own lock and still send in order.
    pub(crate) async fn reserve(
        &self,
        partition: u64,
        n: usize,
    ) -> Result<mpsc::PermitIterator<'_, Command>> {
        self.sender(partition)
            .reserve_many(n)
            .await
            .map_err(|_| StorageError::Closed)
    }

    /// Runs `work` on `partition`'s I/O thread after everything queued before it.
    pub(crate) async fn run_blocking<T: Send + 'static>(
        &self,
        partition: u64,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.sender(partition)
            .send(Command::Blocking(Box::new(move || {
                let _ = reply.send(work());
            })))
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)
    }

    async fn send(&self, command: Command) -> Result<()> {
        let partition = match &command {
            Command::Open { file, .. }
            | Command::Append { file, .. }
            | Command::Read { file, .. }
            | Command::Sync { file, .. }
            | Command::Seal { file }
            | Command::Close { file, .. } => file.partition,
            Command::Blocking(_) | Command::Shutdown { .. } => 0,
        };
        self.sender(partition)
            .send(command)
            .await
            .map_err(|_| StorageError::Closed)
    }

    fn sender(&self, partition: u64) -> &mpsc::Sender<Command> {
        let senders = &self.inner.senders;
        &senders[(partition % senders.len() as u64) as usize]
    }
}

/// Awaits an I/O thread's answer; a dropped reply means the thread stopped.
pub(crate) async fn recv<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    rx.await.map_err(|_| StorageError::Closed)?
}
