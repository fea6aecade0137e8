//! One I/O thread: a compio runtime running the group-commit loop.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::pin::pin;
use std::time::Instant;

use compio::fs::{File, OpenOptions};
use compio::io::{AsyncReadAtExt, AsyncWriteAtExt};
use futures_util::future::{Either, join_all, select};
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::{Command, FileHandle, IoDriver, SyncPolicy};
use crate::error::{Result, StorageError};
use crate::metrics::ExecutorMetrics;

/// Buffers per vectored write; stays well under the kernel's IOV_MAX of 1024.
const MAX_IOVECS: usize = 512;

pub(super) struct WorkerConfig {
    pub index: usize,
    pub sync: SyncPolicy,
    pub max_batch: usize,
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
    if ready.send(Ok(driver)).is_err() {
        return;
    }
    runtime.block_on(Worker::new(config).run(rx));
}

struct OpenFile {
    file: File,
    handle: FileHandle,
    /// Logical end of the file: where the next append goes.
    len: u64,
    /// Written since the last fdatasync.
    dirty: bool,
    /// Set by a failed write or sync; the file takes no more writes.
    poisoned: Option<String>,
}

/// Appends to one file collected during a round.
struct Group {
    file_id: u64,
    data: Vec<Vec<u8>>,
    /// Length of each request's data, in order: the data itself is moved
    /// into the write.
    lens: Vec<u64>,
    replies: Vec<oneshot::Sender<Result<u64>>>,
}

struct Worker {
    config: WorkerConfig,
    files: HashMap<u64, OpenFile>,
    last_sync: Instant,
    thread_label: String,
}

impl Worker {
    fn new(config: WorkerConfig) -> Self {
        Self {
            thread_label: config.index.to_string(),
            config,
            files: HashMap::new(),
            last_sync: Instant::now(),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let queue_depth = self
            .config
            .metrics
            .queue_depth
            .with_label_values(&[&self.thread_label]);
        let mut batch = Vec::with_capacity(self.config.max_batch);
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
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < self.config.max_batch {
                match rx.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            queue_depth.set(rx.len() as i64);
            if let Some(reply) = self.process(&mut batch).await {
                rx.close();
                while let Ok(command) = rx.try_recv() {
                    batch.push(command);
                }
                fail_all(&mut batch);
                let _ = reply.send(self.close_all().await);
                return;
            }
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

    /// When the next interval sync is due, if one is pending.
    fn sync_deadline(&self) -> Option<Instant> {
        match self.config.sync {
            SyncPolicy::Interval(interval) if self.files.values().any(|f| f.dirty) => {
                Some(self.last_sync + interval)
            }
            _ => None,
        }
    }

    /// Handles one round of commands. Appends are collected per file and
    /// written together; anything that must observe them flushes first.
    /// Returns the reply of a `Shutdown` command, leaving the commands behind
    /// it in `batch`.
    async fn process(&mut self, batch: &mut Vec<Command>) -> Option<oneshot::Sender<Result<()>>> {
        let mut groups: Vec<Group> = Vec::new();
        let mut commands = std::mem::take(batch).into_iter();
        let mut shutdown = None;
        for command in commands.by_ref() {
            match command {
                Command::Append { file, data, reply } => {
                    if let Err(e) = self.check_writable(&file) {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    match groups.iter_mut().find(|g| g.file_id == file.id) {
                        Some(group) => {
                            group.lens.push(data.len() as u64);
                            group.data.push(data);
                            group.replies.push(reply);
                        }
                        None => groups.push(Group {
                            file_id: file.id,
                            lens: vec![data.len() as u64],
                            data: vec![data],
                            replies: vec![reply],
                        }),
                    }
                }
                Command::Open { file, reply } => {
                    let result = self.open(&file).await.map(|f| f.len);
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
                    self.commit(&mut groups).await;
                    let _ = reply.send(self.sync_file(file.id).await);
                }
                Command::Close {
                    file,
                    remove,
                    reply,
                } => {
                    self.commit(&mut groups).await;
                    let result = self.close(&file, remove).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Command::Blocking(work) => {
                    self.commit(&mut groups).await;
                    work();
                }
                Command::Shutdown { reply } => {
                    shutdown = Some(reply);
                    break;
                }
            }
        }
        self.commit(&mut groups).await;
        batch.extend(commands);
        shutdown
    }

    fn check_writable(&self, file: &FileHandle) -> Result<()> {
        match self.files.get(&file.id) {
            None => Err(StorageError::io(
                "append",
                file.path.to_path_buf(),
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "file is not open on its I/O thread",
                ),
            )),
            Some(open) => match &open.poisoned {
                Some(cause) => Err(StorageError::Poisoned {
                    partition: file.partition,
                    cause: cause.clone(),
                }),
                None => Ok(()),
            },
        }
    }

    async fn open(&mut self, handle: &FileHandle) -> Result<&mut OpenFile> {
        let slot = match self.files.entry(handle.id) {
            Entry::Occupied(open) => return Ok(open.into_mut()),
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
        Ok(slot.insert(OpenFile {
            file,
            handle: handle.clone(),
            len,
            dirty: false,
            poisoned: None,
        }))
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

    /// Writes every collected group (files in parallel), syncs them as the
    /// policy asks (in parallel), then answers every waiter.
    async fn commit(&mut self, groups: &mut Vec<Group>) {
        if groups.is_empty() {
            return;
        }
        let requests: usize = groups.iter().map(|g| g.replies.len()).sum();
        self.config.metrics.commit_batch.observe(requests as f64);

        let files = &self.files;
        let writes = groups.iter_mut().map(|group| {
            let open = files.get(&group.file_id);
            let data = std::mem::take(&mut group.data);
            async move {
                let open = open.ok_or_else(|| io::Error::other("file closed"))?;
                write_all_vectored(&open.file, data, open.len).await
            }
        });
        let written: Vec<io::Result<u64>> = join_all(writes).await;

        let sync_now = self.config.sync == SyncPolicy::Always;
        let mut outcomes = Vec::with_capacity(groups.len());
        for (group, result) in groups.iter().zip(written) {
            let Some(open) = self.files.get_mut(&group.file_id) else {
                outcomes.push(Err(io::Error::other("file closed")));
                continue;
            };
            let start = open.len;
            match result {
                Ok(bytes) => {
                    open.len += bytes;
                    open.dirty = true;
                    outcomes.push(Ok(start));
                }
                Err(e) => {
                    poison(open, "write", &e, &self.config.metrics);
                    outcomes.push(Err(e));
                }
            }
        }
        if sync_now {
            let ids: Vec<u64> = groups
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| o.is_ok())
                .map(|(g, _)| g.file_id)
                .collect();
            let synced = self.sync_files(&ids).await;
            for (id, result) in ids.iter().zip(synced) {
                if let Err(e) = result
                    && let Some(index) = groups.iter().position(|g| g.file_id == *id)
                {
                    outcomes[index] = Err(e);
                }
            }
        }

        for (group, outcome) in groups.drain(..).zip(outcomes) {
            let path = self
                .files
                .get(&group.file_id)
                .map(|f| f.handle.path.to_path_buf())
                .unwrap_or_default();
            match outcome {
                Ok(mut position) => {
                    for (reply, len) in group.replies.into_iter().zip(group.lens) {
                        let _ = reply.send(Ok(position));
                        position += len;
                    }
                }
                Err(e) => {
                    for reply in group.replies {
                        let err = io::Error::new(e.kind(), e.to_string());
                        let _ = reply.send(Err(StorageError::io("append", &path, err)));
                    }
                }
            }
        }
    }

    /// `fdatasync`s the given files concurrently, marking failures as poisoned.
    async fn sync_files(&mut self, ids: &[u64]) -> Vec<io::Result<()>> {
        let metrics = &self.config.metrics;
        let files = &self.files;
        let syncs = ids.iter().map(|id| async move {
            let open = files
                .get(id)
                .ok_or_else(|| io::Error::other("file closed"))?;
            let started = Instant::now();
            let result = open.file.sync_data().await;
            metrics
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64());
            result
        });
        let results = join_all(syncs).await;
        for (id, result) in ids.iter().zip(&results) {
            if let Some(open) = self.files.get_mut(id) {
                match result {
                    Ok(()) => open.dirty = false,
                    Err(e) => poison(open, "fdatasync", e, &self.config.metrics),
                }
            }
        }
        self.last_sync = Instant::now();
        results
            .into_iter()
            .map(|r| r.map_err(|e| io::Error::new(e.kind(), format!("fdatasync: {e}"))))
            .collect()
    }

    async fn sync_file(&mut self, id: u64) -> Result<()> {
        let Some(open) = self.files.get(&id) else {
            return Ok(()); // never written through this thread, or already closed and synced
        };
        if let Some(cause) = &open.poisoned {
            return Err(StorageError::Poisoned {
                partition: open.handle.partition,
                cause: cause.clone(),
            });
        }
        if !open.dirty {
            return Ok(());
        }
        let path = open.handle.path.to_path_buf();
        let mut results = self.sync_files(&[id]).await;
        match results.pop() {
            Some(Err(e)) => Err(StorageError::io("fdatasync", path, e)),
            _ => Ok(()),
        }
    }

    async fn sync_dirty(&mut self) {
        let dirty: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, f)| f.dirty && f.poisoned.is_none())
            .map(|(id, _)| *id)
            .collect();
        if !dirty.is_empty() {
            self.sync_files(&dirty).await;
        }
        self.last_sync = Instant::now();
    }

    async fn close(&mut self, handle: &FileHandle, remove: bool) -> Result<()> {
        let synced = if remove {
            Ok(())
        } else {
            self.sync_file(handle.id).await
        };
        if let Some(open) = self.files.remove(&handle.id) {
            // Pending reads hold their own clone of the descriptor.
            let _ = open.file.close().await;
        }
        if remove {
            match compio::fs::remove_file(&*handle.path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", &*handle.path, e)),
            }
        }
        synced
    }

    /// Syncs every dirty file and drops all descriptors.
    async fn close_all(&mut self) -> Result<()> {
        let mut first_error = None;
        // Poisoned files already failed the appends that hit them.
        let ids: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, f)| f.poisoned.is_none())
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

/// Answers every command left in `batch` with [`StorageError::Closed`].
fn fail_all(batch: &mut Vec<Command>) {
    for command in batch.drain(..) {
        match command {
            Command::Open { reply, .. } => {
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
            Command::Close { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(StorageError::Closed));
                }
            }
            Command::Blocking(_) => {}
        }
    }
}

fn poison(open: &mut OpenFile, op: &str, e: &io::Error, metrics: &ExecutorMetrics) {
    if open.poisoned.is_none() {
        error!(path = %open.handle.path.display(), op, error = %e, "file poisoned");
        metrics.poisoned_files.inc();
        open.poisoned = Some(format!(
            "{op} on {} failed: {e}",
            open.handle.path.display()
        ));
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
