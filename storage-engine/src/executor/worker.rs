//! One I/O thread: a compio runtime running group commit per file.
//!
//! The thread's main loop only routes requests. Appends go to their file's
//! queue; a file with queued appends has one *committer* task that takes
//! everything queued, writes it with one vectored write, `fdatasync`s it (with
//! [`SyncPolicy::Always`]), answers every waiter, and repeats until the queue
//! is empty. Files commit independently and concurrently on io_uring, so a
//! slow sync on one file never holds up another, and appends that arrive
//! while a file is syncing are all committed by its next round.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use compio::fs::{File, OpenOptions};
use compio::io::{AsyncReadAtExt, AsyncWriteAtExt};
use futures_util::StreamExt;
use futures_util::future::{Either, join_all, select};
use futures_util::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::{Command, FileHandle, IoDriver, SyncPolicy};
use crate::error::{Result, StorageError};
use crate::metrics::ExecutorMetrics;

/// Buffers per vectored write; stays well under the kernel's IOV_MAX of 1024.
const MAX_IOVECS: usize = 512;

pub(super) struct WorkerConfig {
    pub index: usize,
    pub io_workers: u32,
    pub sync: SyncPolicy,
    pub max_batch: usize,
    pub max_inflight_syncs: usize,
    pub metrics: ExecutorMetrics,
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

/// A file owned by this thread.
struct OpenFile {
    file: File,
    handle: FileHandle,
    state: RefCell<FileState>,
}

#[derive(Default)]
struct FileState {
    /// Logical end of the file: where the next append goes.
    len: u64,
    /// Written since the last fdatasync.
    dirty: bool,
    /// Set by a failed write or sync; the file takes no more writes.
    poisoned: Option<String>,
    /// Appends waiting for the committer.
    queue: Vec<(Vec<u8>, Reply)>,
    /// A committer task is running for this file.
    committing: bool,
    /// Wakes the committer when it waits for more appends.
    committer: Option<Waker>,
    /// Woken when the committer finishes.
    idle_waiters: Vec<oneshot::Sender<()>>,
}

impl OpenFile {
    fn poisoned_error(&self) -> Option<StorageError> {
        self.state
            .borrow()
            .poisoned
            .as_ref()
            .map(|cause| StorageError::Poisoned {
                partition: self.handle.partition,
                cause: cause.clone(),
            })
    }

    /// Waits until every append queued so far is committed.
    async fn idle(&self) {
        let waiter = {
            let mut state = self.state.borrow_mut();
            if !state.committing {
                return;
            }
            let (tx, rx) = oneshot::channel();
            state.idle_waiters.push(tx);
            rx
        };
        let _ = waiter.await;
    }

    /// `fdatasync`s the file, poisoning it on failure.
    async fn sync(&self, metrics: &ExecutorMetrics) -> io::Result<()> {
        let started = Instant::now();
        let result = self.file.sync_data().await;
        metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => self.state.borrow_mut().dirty = false,
            Err(e) => self.poison("fdatasync", e, metrics),
        }
        result
    }

    fn poison(&self, op: &str, e: &io::Error, metrics: &ExecutorMetrics) {
        let mut state = self.state.borrow_mut();
        if state.poisoned.is_none() {
            error!(path = %self.handle.path.display(), op, error = %e, "file poisoned");
            metrics.poisoned_files.inc();
            state.poisoned = Some(format!(
                "{op} on {} failed: {e}",
                self.handle.path.display()
            ));
        }
    }
}

/// A round whose data is written and whose sync is in flight.
type SyncingRound = Pin<Box<dyn Future<Output = (io::Result<()>, Vec<(u64, Reply)>, u64)>>>;

type Reply = oneshot::Sender<Result<u64>>;

/// Commits `file`'s queue in rounds until it is empty and every sync is done.
///
/// Up to `max_inflight` rounds may have their `fdatasync` in flight at once:
/// while one round syncs, the next is already written and its sync issued,
/// so the device always has work and appends that arrive during a sync never
/// wait a whole extra round trip. Replies still go out in order.
async fn commit_loop(
    file: Rc<OpenFile>,
    sync: SyncPolicy,
    max_inflight: usize,
    metrics: ExecutorMetrics,
) {
    let mut syncing: FuturesOrdered<SyncingRound> = FuturesOrdered::new();
    loop {
        if syncing.len() < max_inflight {
            if let Some(round) = start_round(&file, sync, &metrics).await {
                syncing.push_back(round);
            } else if !file.state.borrow().queue.is_empty() {
                continue; // that round finished without a sync; take the next
            }
        }
        if syncing.is_empty() {
            let mut state = file.state.borrow_mut();
            if state.queue.is_empty() {
                state.committing = false;
                for waiter in state.idle_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                return;
            }
            continue;
        }
        // Wait for the oldest sync, or for new appends while there is room
        // for another round.
        let finished = if syncing.len() < max_inflight {
            match select(syncing.next(), QueueReady(&file)).await {
                Either::Left((finished, _)) => finished,
                Either::Right(((), _)) => continue,
            }
        } else {
            syncing.next().await
        };
        if let Some((result, replies, position)) = finished {
            answer(&file, result, replies, position);
        }
    }
}

/// Takes the queue and writes it. Returns the round's sync when the policy
/// wants one; otherwise the round is answered here.
async fn start_round(
    file: &Rc<OpenFile>,
    sync: SyncPolicy,
    metrics: &ExecutorMetrics,
) -> Option<SyncingRound> {
    let (batch, position) = {
        let mut state = file.state.borrow_mut();
        if state.queue.is_empty() {
            return None;
        }
        (std::mem::take(&mut state.queue), state.len)
    };
    metrics.commit_batch.observe(batch.len() as f64);
    let (data, replies): (Vec<Vec<u8>>, Vec<(u64, Reply)>) = batch
        .into_iter()
        .map(|(data, reply)| {
            let len = data.len() as u64;
            (data, (len, reply))
        })
        .unzip();
    let written = if file.state.borrow().poisoned.is_some() {
        Err(io::Error::other("file is poisoned"))
    } else {
        write_all_vectored(&file.file, data, position).await
    };
    match written {
        Ok(bytes) => {
            let mut state = file.state.borrow_mut();
            state.len += bytes;
            state.dirty = true;
        }
        Err(e) => {
            file.poison("write", &e, metrics);
            answer(file, Err(e), replies, position);
            return None;
        }
    }
    if sync != SyncPolicy::Always {
        answer(file, Ok(()), replies, position);
        return None;
    }
    let (file, metrics) = (Rc::clone(file), metrics.clone());
    Some(Box::pin(async move {
        let synced = file.sync(&metrics).await;
        (synced, replies, position)
    }))
}

/// Answers a round's waiters. A round whose file was poisoned in the
/// meantime fails even if its own sync succeeded: an earlier round's data may
/// be lost, and a log with a hole must not acknowledge what follows it.
fn answer(file: &OpenFile, result: io::Result<()>, replies: Vec<(u64, Reply)>, position: u64) {
    let poisoned = file.state.borrow().poisoned.clone();
    match (result, poisoned) {
        (Err(e), _) => {
            for (_, reply) in replies {
                let source = e.raw_os_error().map_or_else(
                    || io::Error::new(e.kind(), e.to_string()),
                    io::Error::from_raw_os_error,
                );
                let _ = reply.send(Err(StorageError::io("append", &*file.handle.path, source)));
            }
        }
        (Ok(()), Some(cause)) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(StorageError::Poisoned {
                    partition: file.handle.partition,
                    cause: cause.clone(),
                }));
            }
        }
        (Ok(()), None) => {
            let mut at = position;
            for (len, reply) in replies {
                let _ = reply.send(Ok(at));
                at += len;
            }
        }
    }
}

/// Ready once `file` has queued appends; registers to be woken otherwise.
struct QueueReady<'a>(&'a OpenFile);

impl Future for QueueReady<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.0.state.borrow_mut();
        if state.queue.is_empty() {
            state.committer = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
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
                    Ok(open) => Ok(open.state.borrow().len),
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
        let start = {
            let mut state = file.state.borrow_mut();
            state.queue.push((data, reply));
            if let Some(committer) = state.committer.take() {
                committer.wake();
            }
            !std::mem::replace(&mut state.committing, true)
        };
        if start {
            compio::runtime::spawn(commit_loop(
                Rc::clone(file),
                self.config.sync,
                self.config.max_inflight_syncs,
                self.config.metrics.clone(),
            ))
            .detach();
        }
    }

    /// When the next interval sync is due, if one is pending.
    fn sync_deadline(&self) -> Option<Instant> {
        match self.config.sync {
            SyncPolicy::Interval(interval)
                if self.files.values().any(|f| f.state.borrow().dirty) =>
            {
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
        let open = Rc::new(OpenFile {
            file,
            handle: handle.clone(),
            state: RefCell::new(FileState {
                len,
                ..FileState::default()
            }),
        });
        Ok(Rc::clone(slot.insert(open)))
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
        if !file.state.borrow().dirty {
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
            .filter(|f| {
                let state = f.state.borrow();
                state.dirty && state.poisoned.is_none()
            })
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

    /// Commits every queue, syncs every dirty file and drops all descriptors.
    async fn close_all(&mut self) -> Result<()> {
        self.all_idle().await;
        let mut first_error = None;
        // Poisoned files already failed the appends that hit them.
        let ids: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, f)| f.state.borrow().poisoned.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
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
        Command::Blocking(_) => {}
    }
}

/// Writes all buffers contiguously at `pos`, in as few vectored writes as the
/// kernel allows. Returns the number of bytes written.
async fn write_all_vectored(file: &File, data: Vec<Vec<u8>>, pos: u64) -> io::Result<u64> {
    let mut file = file;
    let mut position = pos;
    let mut rest = data.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<Vec<u8>> = rest.by_ref().take(MAX_IOVECS).collect();
        let len: u64 = chunk.iter().map(|b| b.len() as u64).sum();
        let compio::BufResult(result, _) = file.write_vectored_all_at(chunk, position).await;
        result?;
        position += len;
    }
    Ok(position - pos)
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
