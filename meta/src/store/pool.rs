//! [`RocksPool`]: a small fixed set of `meta-rocksdb-{i}` threads that run
//! RocksDB calls so they never block a tokio worker.
//!
//! Jobs travel over one bounded queue shared by all threads (whichever thread
//! is free takes the next job, so a slow compaction-stalled read does not hold
//! up the jobs behind it) and answer through a `oneshot`, which an async
//! caller awaits. A full queue makes the caller wait asynchronously: that is
//! the pool's backpressure.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::error::StoreError;
use crate::metrics::StoreMetrics;

type Job = Box<dyn FnOnce() + Send + 'static>;

thread_local! {
    /// Set on pool threads, so that dropping the last pool handle from inside
    /// a job does not try to join the thread it runs on.
    static ON_POOL_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A fixed pool of threads running RocksDB jobs. Cheap to clone; the threads
/// stop once every clone is dropped and the queue is drained.
#[derive(Clone, Debug)]
pub struct RocksPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    tx: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    metrics: StoreMetrics,
}

impl RocksPool {
    /// Starts `threads` threads (at least one) behind a queue of `queue` jobs.
    pub(crate) fn new(
        threads: usize,
        queue: usize,
        metrics: StoreMetrics,
    ) -> Result<Self, StoreError> {
        Self::spawn(threads, queue, metrics, None)
    }

    /// One `meta-background` thread at the lowest CPU priority (nice 19)
    /// for long jobs (snapshot builds), one at a time: they neither hold a
    /// pool thread from the reads and writes behind them nor, on a busy
    /// machine, take the CPU from the threads serving requests, and several
    /// groups reaching their snapshot point together do not build (and
    /// write out) their snapshots all at once.
    pub(crate) fn background(metrics: StoreMetrics) -> Result<Self, StoreError> {
        Self::spawn(1, 16, metrics, Some("meta-background"))
    }

    fn spawn(
        threads: usize,
        queue: usize,
        metrics: StoreMetrics,
        background: Option<&str>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let name = background.map_or_else(|| format!("meta-rocksdb-{i}"), str::to_string);
            let low_priority = background.is_some();
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    if low_priority {
                        lower_own_priority();
                    }
                    worker(&rx)
                })
                .map_err(|source| StoreError::Spawn { name, source })?;
            handles.push(handle);
        }
        Ok(RocksPool {
            inner: Arc::new(PoolInner {
                tx: Some(tx),
                threads: handles,
                metrics,
            }),
        })
    }

    /// Starts a pool of `threads` threads (at least one) behind a queue of
    /// `queue` jobs, for use outside a store opened by [`crate::open`] (a
    /// benchmark, a tool). Registers the storage metrics, among them
    /// `rocksdb_operation_ms{op}`, into `registry`, so `registry` must not
    /// also serve an open store.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tidemq_meta::StoreError> {
    /// let pool = tidemq_meta::RocksPool::start(2, 64, &prometheus::Registry::new())?;
    /// assert_eq!(pool.run("sum", || 2 + 2).await?, 4);
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(
        threads: usize,
        queue: usize,
        registry: &prometheus::Registry,
    ) -> Result<Self, StoreError> {
        let metrics = StoreMetrics::register(registry)?;
        Self::new(threads, queue, metrics)
    }

    /// Runs `job` on a pool thread and returns its result. `op` names the
    /// operation in `rocksdb_operation_ms{op}`, which times the job itself
    /// (not its wait in the queue).
    pub async fn run<T, F>(&self, op: &'static str, job: F) -> Result<T, StoreError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let metrics = self.inner.metrics.clone();
        let boxed: Job = Box::new(move || {
            let started = Instant::now();
            let out = job();
            metrics.observe_op(op, started.elapsed());
            // The caller may have given up waiting; nothing to do then.
            let _ = reply_tx.send(out);
        });
        let tx = self.inner.tx.as_ref().ok_or(StoreError::PoolClosed)?;
        tx.send(boxed).await.map_err(|_| StoreError::PoolClosed)?;
        // A dropped reply sender without a value means the job panicked.
        reply_rx.await.map_err(|_| StoreError::JobPanicked { op })
    }

    /// How many threads the pool runs.
    pub fn threads(&self) -> usize {
        self.inner.threads.len()
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>) {
    ON_POOL_THREAD.with(|on| on.set(true));
    loop {
        // Only the thread waiting for the next job holds the lock; the others
        // wait on the lock, so each job is taken by exactly one free thread.
        let job = {
            let mut guard = rx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            guard.blocking_recv()
        };
        let Some(job) = job else { break };
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a meta-rocksdb job panicked; the thread keeps serving");
        }
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // Closing the queue lets every thread finish the queued jobs and exit.
        self.tx = None;
        if ON_POOL_THREAD.with(|on| on.get()) {
            return;
        }
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!("a meta-rocksdb thread panicked");
            }
        }
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19). On Linux a
/// nice value belongs to the thread, not the process. Best effort: a
/// failure leaves the thread at its priority.
fn lower_own_priority() {
    // SAFETY: gettid and setpriority take no pointers; they only read their
    // integer arguments.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19)
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> RocksPool {
        let metrics = StoreMetrics::register(&prometheus::Registry::new()).unwrap();
        RocksPool::new(threads, 4, metrics).unwrap()
    }

    #[tokio::test]
    async fn jobs_run_on_named_pool_threads() {
        let pool = pool(2);
        let name = pool
            .run("test", || std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("meta-rocksdb-"));
        assert_eq!(pool.threads(), 2);
    }

    #[tokio::test]
    async fn background_jobs_run_on_a_thread_of_their_own_at_the_lowest_priority() {
        let metrics = StoreMetrics::register(&prometheus::Registry::new()).unwrap();
        let background = RocksPool::background(metrics).unwrap();
        let pool = pool(1);
        let (name, nice) = background
            .run("snapshot_build", || {
                (
                    std::thread::current().name().map(str::to_string),
                    own_nice(),
                )
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("meta-background"));
        assert_eq!(nice, 19);
        // The pool's own threads keep their priority.
        let nice = pool.run("read", own_nice).await.unwrap();
        assert!(nice < 19);
    }

    /// The calling thread's nice value.
    fn own_nice() -> i32 {
        // SAFETY: gettid and getpriority take no pointers.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        }
    }

    #[tokio::test]
    async fn a_panicking_job_is_reported_and_the_pool_keeps_serving() {
        let pool = pool(1);
        let err: Result<(), _> = pool.run("boom", || panic!("job panic")).await;
        assert!(matches!(err, Err(StoreError::JobPanicked { op: "boom" })));
        assert_eq!(pool.run("after", || 7).await.unwrap(), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_concurrent_jobs_than_queue_slots_all_complete() {
        let pool = pool(2);
        let mut handles = Vec::new();
        for i in 0..64u64 {
            let pool = pool.clone();
            handles.push(tokio::spawn(async move {
                pool.run("many", move || i * 2).await
            }));
        }
        let mut sum = 0;
        for handle in handles {
            sum += handle.await.unwrap().unwrap();
        }
        assert_eq!(sum, (0..64u64).map(|i| i * 2).sum::<u64>());
    }
}
