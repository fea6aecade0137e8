//! One I/O thread: a compio runtime running group commit per file.
//!
//! The thread's main loop only routes requests. Appends go to their file's
//! queue, and the file's committer ([`commit`](super::commit)) writes and
//! syncs them in rounds. Files commit independently and concurrently on
//! io_uring, so a slow sync on one file never holds up another, and appends
//! that arrive while a file is syncing are all committed by its next round.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use compio::fs::OpenOptions;
use compio::io::AsyncReadAtExt;
use futures_util::future::{Either, join_all, select};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use super::commit::{CommitSettings, OpenFile, commit_loop};
use super::{Command, FileHandle, IoDriver, SyncPolicy};
use crate::error::{Result, StorageError};
use crate::metrics::ExecutorMetrics;

pub(super) struct WorkerConfig {
    pub index: usize,
    pub io_workers: u32,
    pub sync: SyncPolicy,
    pub max_batch: usize,
    pub max_inflight_syncs: usize,
    pub preallocate: u64,
    pub overlap_bytes: u64,
    pub metrics: ExecutorMetrics,
}

impl WorkerConfig {
    fn commit_settings(&self) -> CommitSettings {
        CommitSettings {
            sync: self.sync,
            max_inflight: self.max_inflight_syncs,
            preallocate: self.preallocate,
            overlap_bytes: self.overlap_bytes,
            metrics: self.metrics.clone(),
        }
    }
}

/// Thread entry point: pin, start the runtime, report the driver, run the loop.
pub(super) fn run(
    config: WorkerConfig,
    core: Option<core_affinity::CoreId>,
    rx: mpsc::Receiver<Command>,
    ready: std::sync::mpsc::Sender<io::Result<IoDriver>>,
) {
    if let Some(core) = core
        && !core_affinity::set_for_current(core)
    {
        warn!(
            thread = config.index,
            core = core.id,
            "could not pin I/O thread"
        );
    }
    let runtime = match compio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let driver = match runtime.driver_type() {
        compio::driver::DriverType::IoUring => IoDriver::IoUring,
        _ => IoDriver::Polling,
    };
    if driver == IoDriver::IoUring
        && let Err(e) = set_iowq_max_workers(&runtime, config.io_workers)
    {
        warn!(thread = config.index, error = %e, "could not raise the io_uring worker limit");
    }
    if ready.send(Ok(driver)).is_err() {
        return;
    }
    runtime.block_on(Worker::new(config).run(rx));
}

struct Worker {
    config: WorkerConfig,
    files: HashMap<u64, Rc<OpenFile>>,
    last_sync: Instant,
}

impl Worker {
    fn new(config: WorkerConfig) -> Self {
        Self {
            config,
            files: HashMap::new(),
            last_sync: Instant::now(),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let label = self.config.index.to_string();
        let queue_depth = self.config.metrics.queue_depth.with_label_values(&[&label]);
        loop {
            let first = match self.sync_deadline() {
                Some(deadline) => {
                    let sleep = compio::runtime::time::sleep_until(deadline);
                    match select(pin!(rx.recv()), pin!(sleep)).await {
                        Either::Left((command, _)) => command,
                        Either::Right(((), _)) => {
                            self.sync_dirty().await;
                            continue;
                        }
                    }
                }
                None => rx.recv().await,
            };
            let Some(mut command) = first else { break };
            let mut taken = 1;
            loop {
                if let Command::Shutdown { reply } = command {
                    // `recv` after `close` ends only once every permit
                    // reserved before the close was used or dropped, so a
                    // command sent through one is answered too (`try_recv`
                    // would leave it in the channel, its caller waiting
                    // forever).
                    rx.close();
                    while let Some(late) = rx.recv().await {
                        fail(late);
                    }
                    let _ = reply.send(self.close_all().await);
                    return;
                }
                self.handle(command).await;
                if taken == self.config.max_batch {
                    break;
                }
                match rx.try_recv() {
                    Ok(next) => command = next,
                    Err(_) => break,
                }
                taken += 1;
            }
            queue_depth.set(rx.len() as i64);
            // Let the committers this batch woke run before taking more.
            YieldNow(false).await;
            if let SyncPolicy::Interval(interval) = self.config.sync
                && self.last_sync.elapsed() >= interval
            {
                self.sync_dirty().await;
            }
        }
        // Every sender is gone: the queue is drained, make the data durable.
        if let Err(e) = self.close_all().await {
            error!(thread = self.config.index, error = %e, "sync at shutdown failed");
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Append { file, data, reply } => self.append(&file, data, reply),
            Command::Open { file, reply } => {
                let result = match self.open(&file).await {
                    Ok(open) => Ok(open.len()),
                    Err(e) => Err(e),
                };
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::Read {
                file,
                pos,
                len,
                reply,
            } => self.read(file, pos, len, reply).await,
            Command::Sync { file, reply } => {
                let _ = reply.send(self.sync_file(file.id).await);
            }
            Command::Close {
                file,
                remove,
                reply,
            } => {
                let result = self.close(&file, remove).await;
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::Seal { file } => self.seal(&file),
            Command::Blocking(work) => {
                self.all_idle().await;
                work();
            }
            Command::Shutdown { .. } => {} // handled by the loop
        }
    }

    fn append(&mut self, handle: &FileHandle, data: Vec<u8>, reply: oneshot::Sender<Result<u64>>) {
        let Some(file) = self.files.get(&handle.id) else {
            let _ = reply.send(Err(StorageError::io(
                "append",
                handle.path.to_path_buf(),
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "file is not open on its I/O thread",
                ),
            )));
            return;
        };
        if let Some(poisoned) = file.poisoned_error() {
            let _ = reply.send(Err(poisoned));
            return;
        }
        if file.enqueue(data, reply) {
            self.start_committer(file);
        }
    }

    /// Runs `file`'s committer until its queue is empty.
    fn start_committer(&self, file: &Rc<OpenFile>) {
        let settings = self.config.commit_settings();
        compio::runtime::spawn(commit_loop(Rc::clone(file), settings)).detach();
    }

    /// Stops preallocating for a file that takes no more appends; its
    /// committer cuts the zeros past its end once its appends are committed.
    fn seal(&mut self, handle: &FileHandle) {
        if let Some(file) = self.files.get(&handle.id)
            && file.seal()
        {
            self.start_committer(file);
        }
    }

    /// When the next interval sync is due, if one is pending.
    fn sync_deadline(&self) -> Option<Instant> {
        match self.config.sync {
            SyncPolicy::Interval(interval) if self.files.values().any(|f| f.is_dirty()) => {
                Some(self.last_sync + interval)
            }
            _ => None,
        }
    }

    async fn open(&mut self, handle: &FileHandle) -> Result<Rc<OpenFile>> {
        let slot = match self.files.entry(handle.id) {
            Entry::Occupied(open) => return Ok(Rc::clone(open.get())),
            Entry::Vacant(slot) => slot,
        };
        let path = handle.path.to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .open(&path)
            .await
            .map_err(|e| StorageError::io("open", &path, e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| StorageError::io("stat", &path, e))?
            .len();
        if len == 0 {
            // Likely just created: its directory entry must be durable
            // before records in it are acknowledged.
            sync_parent(&path).await?;
            self.config.metrics.dir_syncs.inc();
        }
        let settings = self.config.commit_settings();
        let direct = Self::open_direct(&self.config, &path).await;
        let open = Rc::new(OpenFile::new(file, direct, handle.clone(), len, &settings));
        Ok(Rc::clone(slot.insert(open)))
    }

    /// The file opened again with `O_DIRECT` for zero fills, when
    /// preallocation is on and the filesystem allows it.
    async fn open_direct(
        config: &WorkerConfig,
        path: &std::path::Path,
    ) -> Option<compio::fs::File> {
        if config.preallocate == 0 || config.sync == SyncPolicy::Never {
            return None;
        }
        let mut options = OpenOptions::new();
        options.write(true).custom_flags(libc::O_DIRECT);
        match options.open(path).await {
            Ok(direct) => Some(direct),
            Err(e) => {
                debug!(path = %path.display(), error = %e, "no O_DIRECT here: not preallocating");
                None
            }
        }
    }

    /// Starts a read as its own task so it never holds up the write loop.
    async fn read(
        &mut self,
        handle: FileHandle,
        pos: u64,
        len: usize,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    ) {
        let file = match self.files.get(&handle.id) {
            Some(open) if pos + len as u64 > open.len() => {
                let past_end = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("read of {len} bytes at {pos} past the end ({})", open.len()),
                );
                let _ = reply.send(Err(StorageError::io("read", &*handle.path, past_end)));
                return;
            }
            Some(open) => open.file.clone(),
            None => match OpenOptions::new().read(true).open(&*handle.path).await {
                Ok(file) => file,
                Err(e) => {
                    let _ = reply.send(Err(StorageError::io("open", &*handle.path, e)));
                    return;
                }
            },
        };
        compio::runtime::spawn(async move {
            let compio::BufResult(result, buf) = file.read_exact_at(vec![0u8; len], pos).await;
            let _ = reply.send(
                result
                    .map(|()| buf)
                    .map_err(|e| StorageError::io("read", &*handle.path, e)),
            );
        })
        .detach();
    }

    /// Commits everything queued for the file, then syncs it if it is dirty.
    async fn sync_file(&mut self, id: u64) -> Result<()> {
        let Some(file) = self.files.get(&id).cloned() else {
            return Ok(()); // never written through this thread, or already closed and synced
        };
        file.idle().await;
        if let Some(poisoned) = file.poisoned_error() {
            return Err(poisoned);
        }
        if !file.is_dirty() {
            return Ok(());
        }
        file.sync(&self.config.metrics)
            .await
            .map_err(|e| StorageError::io("fdatasync", &*file.handle.path, e))
    }

    async fn sync_dirty(&mut self) {
        let dirty: Vec<Rc<OpenFile>> = self
            .files
            .values()
            .filter(|f| f.is_dirty() && !f.is_poisoned())
            .cloned()
            .collect();
        let metrics = &self.config.metrics;
        join_all(dirty.iter().map(|f| f.sync(metrics))).await;
        self.last_sync = Instant::now();
    }

    async fn all_idle(&self) {
        let files: Vec<Rc<OpenFile>> = self.files.values().cloned().collect();
        join_all(files.iter().map(|f| f.idle())).await;
    }

    async fn close(&mut self, handle: &FileHandle, remove: bool) -> Result<()> {
        let synced = if remove {
            if let Some(file) = self.files.get(&handle.id).cloned() {
                file.idle().await;
            }
            Ok(())
        } else {
            self.trim(handle.id).await;
            self.sync_file(handle.id).await
        };
        // Reads in flight hold their own clone of the descriptor.
        self.files.remove(&handle.id);
        if remove {
            match compio::fs::remove_file(&*handle.path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", &*handle.path, e)),
            }
        }
        synced
    }

    /// Waits for the file's appends, then cuts its preallocated zeros; the
    /// caller syncs.
    async fn trim(&self, id: u64) {
        if let Some(file) = self.files.get(&id).cloned() {
            file.idle().await;
            file.trim().await;
        }
    }

    /// Commits every queue, syncs every dirty file and drops all descriptors.
    async fn close_all(&mut self) -> Result<()> {
        self.all_idle().await;
        let mut first_error = None;
        // Poisoned files already failed the appends that hit them.
        let ids: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, f)| !f.is_poisoned())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.trim(id).await;
            if let Err(e) = self.sync_file(id).await {
                first_error.get_or_insert(e);
            }
        }
        self.files.clear();
        first_error.map_or(Ok(()), Err)
    }
}

/// `fsync`s the directory holding `path`, so an entry created in it
/// survives a crash.
async fn sync_parent(path: &std::path::Path) -> Result<()> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let synced = async {
        let dir = OpenOptions::new().read(true).open(dir).await?;
        dir.sync_all().await
    };
    synced
        .await
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// Answers a command that arrived after shutdown with [`StorageError::Closed`].
fn fail(command: Command) {
    match command {
        Command::Open { reply, .. } => {
            if let Some(reply) = reply {
                let _ = reply.send(Err(StorageError::Closed));
            }
        }
        Command::Close { reply, .. } => {
            if let Some(reply) = reply {
                let _ = reply.send(Err(StorageError::Closed));
            }
        }
        Command::Append { reply, .. } => {
            let _ = reply.send(Err(StorageError::Closed));
        }
        Command::Read { reply, .. } => {
            let _ = reply.send(Err(StorageError::Closed));
        }
        Command::Sync { reply, .. } | Command::Shutdown { reply } => {
            let _ = reply.send(Err(StorageError::Closed));
        }
        Command::Seal { .. } | Command::Blocking(_) => {}
    }
}

/// Raises how many kernel io-wq workers may run this ring's blocking work
/// (buffered writes and `fdatasync`) at once. The kernel's default is four
/// per CPU, which on a small machine lets only a handful of files sync
/// concurrently while the rest queue behind them.
#[cfg(target_os = "linux")]
fn set_iowq_max_workers(runtime: &compio::runtime::Runtime, bounded: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const IORING_REGISTER_IOWQ_MAX_WORKERS: libc::c_uint = 19;
    // [bounded, unbounded]; 0 leaves the unbounded limit as it is.
    let mut limits = [bounded, 0u32];
    // SAFETY: the ring fd belongs to `runtime`, which outlives the call, and
    // `limits` is the two-element u32 array this opcode reads and writes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            runtime.as_raw_fd(),
            IORING_REGISTER_IOWQ_MAX_WORKERS,
            limits.as_mut_ptr(),
            2,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_iowq_max_workers(_: &compio::runtime::Runtime, _: u32) -> io::Result<()> {
    Ok(())
}

/// Returns `Pending` once, so other tasks on the thread get to run.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}
