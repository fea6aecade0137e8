//! The meta service's Raft apply path, three ways: RocksDB called inline on a
//! tokio worker, through `spawn_blocking`, and through the [`RocksPool`].
//!
//! Every apply does what `meta/src/store/apply.rs` does for a batch of
//! `CreateSessions` entries: encode each [`Session`] as JSON, put it at
//! `s/{tenant}/{client_id}` in the `g1_sm` column family, add `!applied` and
//! `!membership` to the same [`WriteBatch`], and write it unsynced (the Raft
//! log is the durable record).
//!
//! [`run_mode`] drives `concurrency` apply tasks on the current runtime for a
//! fixed time, and a probe that stands in for everything else a meta node
//! runs on the same workers (Raft heartbeats, gRPC handlers): a plain thread
//! sends a timestamp every `probe_interval` to a task on the runtime, which
//! records how long the message waited for a worker. An external clock, not a
//! tokio timer, so the probe measures scheduling delay without the timer
//! wheel's 1 ms granularity.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};
use tidemq_meta::openraft::CommittedLeaderId;
use tidemq_meta::types::{LogId, StoredMembership};
use tidemq_meta::{RocksPool, Session, StoreError};
use tokio::sync::mpsc;

use crate::load::{Percentiles, latency_histogram};

/// The column family applies write to, named like group 1's state machine.
pub const SM_CF: &str = "g1_sm";

/// Bytes of broker-owned payload per session; with the other fields this
/// makes a JSON value of about 150 bytes.
const SESSION_PAYLOAD: usize = 8;

/// Tenants the sessions are spread over.
const TENANTS: u64 = 100;

/// Where RocksDB runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// On the tokio worker that runs the apply task, blocking it.
    Inline,
    /// On tokio's blocking pool, one `spawn_blocking` per apply.
    SpawnBlocking,
    /// On the `meta-rocksdb-{i}` threads of a [`RocksPool`].
    Pool,
}

impl ApplyMode {
    /// Every mode, in the order the benchmark runs them.
    pub const ALL: [ApplyMode; 3] = [ApplyMode::Inline, ApplyMode::SpawnBlocking, ApplyMode::Pool];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            ApplyMode::Inline => "inline",
            ApplyMode::SpawnBlocking => "spawn_blocking",
            ApplyMode::Pool => "rocks_pool",
        }
    }
}

/// The shape of a load.
#[derive(Debug, Clone, Copy)]
pub struct ApplySpec {
    /// Concurrent apply tasks, each applying one batch after another.
    pub concurrency: usize,
    /// Session records per apply.
    pub batch: usize,
    /// How long to start new applies.
    pub duration: Duration,
    /// Threads of the [`RocksPool`] (pool mode).
    pub pool_threads: usize,
    /// Queue depth of the [`RocksPool`] (pool mode).
    pub pool_queue: usize,
    /// Distinct session keys; record `n` goes to session `n % sessions`, so
    /// the database stops growing once every session exists.
    pub sessions: u64,
    /// How often the probe's clock thread sends a timestamp.
    pub probe_interval: Duration,
}

/// What one mode achieved.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// Which mode.
    pub mode: ApplyMode,
    /// Completed applies.
    pub applies: u64,
    /// Session records written by them.
    pub records: u64,
    /// Seconds from the first apply to the last one finishing.
    pub seconds: f64,
    /// Applies per second.
    pub applies_per_sec: f64,
    /// Records per second.
    pub records_per_sec: f64,
    /// Apply latency in microseconds, from "this task is ready for its next
    /// apply" to "the batch is written": time waiting for a worker, a pool
    /// thread or a blocking thread counts.
    pub apply_us: Percentiles,
    /// How long each probe message waited for the probe task to run, in
    /// microseconds.
    pub probe_us: Percentiles,
    /// Probe messages received.
    pub probes: u64,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// A RocksDB call failed.
    #[error("rocksdb {op}")]
    Rocks {
        /// The call.
        op: &'static str,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// The state machine column family is missing.
    #[error("column family {SM_CF} is missing")]
    MissingColumnFamily,
    /// A value could not be encoded.
    #[error("encoding a value")]
    Encode(#[from] serde_json::Error),
    /// The pool failed (closed, or a job panicked).
    #[error("rocks pool")]
    Pool(#[from] StoreError),
    /// A task or blocking job panicked.
    #[error("a task panicked")]
    Join(#[from] tokio::task::JoinError),
    /// The probe's clock thread could not start.
    #[error("starting the probe clock thread")]
    Spawn(#[source] std::io::Error),
}

fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> ApplyError {
    move |source| ApplyError::Rocks { op, source }
}

/// Opens (creating if needed) a database at `dir` with the [`SM_CF`] column
/// family, tuned like the meta store's.
pub fn open_db(dir: &Path) -> Result<DB, ApplyError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_db_write_buffer_size(256 << 20);
    opts.set_keep_log_file_num(4);
    let cf = ColumnFamilyDescriptor::new(SM_CF, Options::default());
    DB::open_cf_descriptors(&opts, dir, [cf]).map_err(rocks("open"))
}

/// Counts the session keys (`s/...`) in [`SM_CF`].
pub fn count_sessions(db: &DB) -> Result<u64, ApplyError> {
    let cf = db.cf_handle(SM_CF).ok_or(ApplyError::MissingColumnFamily)?;
    let mut count = 0;
    for item in db.iterator_cf(&cf, IteratorMode::From(b"s/", rocksdb::Direction::Forward)) {
        let (key, _) = item.map_err(rocks("scan"))?;
        if !key.starts_with(b"s/") {
            break;
        }
        count += 1;
    }
    Ok(count)
}

/// The session stored for record number `n`.
pub fn session(n: u64, sessions: u64) -> Session {
    let id = n % sessions.max(1);
    Session {
        client_key: format!("tenant-{:03}/client-{id:08}", id % TENANTS),
        node_id: 1 + id % 3,
        created_at_ms: 1_790_000_000_000 + n,
        expiry_secs: 3600,
        connected: true,
        payload: vec![0x5A; SESSION_PAYLOAD],
    }
}

/// Bytes of one session's JSON value.
pub fn session_value_len() -> usize {
    serde_json::to_vec(&session(0, 1)).map_or(0, |v| v.len())
}

/// One apply: the log index it covers and its sessions.
struct ApplyJob {
    index: u64,
    sessions: Vec<Session>,
}

/// Writes one apply the way the state machine does: encoding included, one
/// unsynced `WriteBatch` with `!applied` and `!membership`.
fn apply_batch(db: &DB, job: ApplyJob) -> Result<(), ApplyError> {
    let cf = db.cf_handle(SM_CF).ok_or(ApplyError::MissingColumnFamily)?;
    let mut batch = WriteBatch::default();
    for session in &job.sessions {
        let key = format!("s/{}", session.client_key);
        batch.put_cf(&cf, key, serde_json::to_vec(session)?);
    }
    let applied: Option<LogId> = Some(LogId::new(CommittedLeaderId::new(1, 1), job.index));
    batch.put_cf(&cf, b"!applied", serde_json::to_vec(&applied)?);
    batch.put_cf(
        &cf,
        b"!membership",
        serde_json::to_vec(&StoredMembership::default())?,
    );
    db.write_opt(batch, &WriteOptions::default())
        .map_err(rocks("write"))
}

/// How an apply reaches RocksDB.
#[derive(Clone)]
enum Applier {
    Inline(Arc<DB>),
    SpawnBlocking(Arc<DB>),
    Pool(Arc<DB>, RocksPool),
}

impl Applier {
    async fn apply(&self, job: ApplyJob) -> Result<(), ApplyError> {
        match self {
            Applier::Inline(db) => apply_batch(db, job),
            Applier::SpawnBlocking(db) => {
                let db = Arc::clone(db);
                tokio::task::spawn_blocking(move || apply_batch(&db, job)).await?
            }
            Applier::Pool(db, pool) => {
                let db = Arc::clone(db);
                pool.run("apply", move || apply_batch(&db, job)).await?
            }
        }
    }
}

/// Runs `spec` in `mode` against a fresh database in `dir` (created, and
/// closed again before returning), on the current multi-thread runtime.
pub async fn run_mode(
    dir: &Path,
    mode: ApplyMode,
    spec: ApplySpec,
) -> Result<ApplyReport, ApplyError> {
    let db_dir = dir.to_path_buf();
    let db = Arc::new(tokio::task::spawn_blocking(move || open_db(&db_dir)).await??);
    let pool = match mode {
        ApplyMode::Pool => Some(RocksPool::start(
            spec.pool_threads,
            spec.pool_queue,
            &prometheus::Registry::new(),
        )?),
        _ => None,
    };
    let applier = match &pool {
        None if mode == ApplyMode::Inline => Applier::Inline(Arc::clone(&db)),
        None => Applier::SpawnBlocking(Arc::clone(&db)),
        Some(pool) => Applier::Pool(Arc::clone(&db), pool.clone()),
    };

    let probe = Probe::start(spec.probe_interval)?;
    let result = drive(applier, spec).await;
    let (probe_hist, probe_result) = probe.stop().await;

    // Joining the pool threads and closing RocksDB block: not on a worker.
    tokio::task::spawn_blocking(move || {
        drop(pool);
        drop(db);
    })
    .await?;

    let (hist, seconds) = result?;
    probe_result?;
    let applies = hist.len();
    let records = applies * spec.batch as u64;
    Ok(ApplyReport {
        mode,
        applies,
        records,
        seconds,
        applies_per_sec: applies as f64 / seconds,
        records_per_sec: records as f64 / seconds,
        apply_us: Percentiles::of(&hist),
        probe_us: Percentiles::of(&probe_hist),
        probes: probe_hist.len(),
    })
}

/// Runs the apply tasks; returns their merged latency histogram and the
/// seconds they took.
async fn drive(applier: Applier, spec: ApplySpec) -> Result<(Histogram<u64>, f64), ApplyError> {
    let next_record = Arc::new(AtomicU64::new(0));
    let next_index = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let deadline = started + spec.duration;
    let tasks: Vec<_> = (0..spec.concurrency.max(1))
        .map(|_| {
            let applier = applier.clone();
            let next_record = Arc::clone(&next_record);
            let next_index = Arc::clone(&next_index);
            tokio::spawn(async move {
                let mut hist = latency_histogram();
                while Instant::now() < deadline {
                    let ready = Instant::now();
                    // Stands in for awaiting the next committed batch; without
                    // an await point an inline task would never let the
                    // others (or the probe) run on its worker.
                    tokio::task::yield_now().await;
                    let first = next_record.fetch_add(spec.batch as u64, Ordering::Relaxed);
                    let job = ApplyJob {
                        index: next_index.fetch_add(1, Ordering::Relaxed),
                        sessions: (first..first + spec.batch as u64)
                            .map(|n| session(n, spec.sessions))
                            .collect(),
                    };
                    applier.apply(job).await?;
                    hist.saturating_record(micros(ready.elapsed()));
                }
                Ok::<_, ApplyError>(hist)
            })
        })
        .collect();
    let mut hist = latency_histogram();
    let mut first_error = None;
    for task in tasks {
        match task.await.map_err(ApplyError::from).and_then(|r| r) {
            Ok(h) => {
                // Same bounds on both sides: adding cannot fail.
                let _ = hist.add(&h);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((hist, started.elapsed().as_secs_f64())),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The latency probe: a clock thread sending timestamps to a task on the
/// runtime.
struct Probe {
    stop: Arc<AtomicBool>,
    clock: std::thread::JoinHandle<()>,
    task: tokio::task::JoinHandle<Histogram<u64>>,
}

impl Probe {
    fn start(interval: Duration) -> Result<Self, ApplyError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
        let stop = Arc::new(AtomicBool::new(false));
        let clock_stop = Arc::clone(&stop);
        let clock = std::thread::Builder::new()
            .name("probe-clock".into())
            .spawn(move || {
                while !clock_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(interval);
                    if tx.send(Instant::now()).is_err() {
                        break;
                    }
                }
            })
            .map_err(ApplyError::Spawn)?;
        let task = tokio::spawn(async move {
            let mut hist = latency_histogram();
            while let Some(sent) = rx.recv().await {
                hist.saturating_record(micros(sent.elapsed()));
            }
            hist
        });
        Ok(Probe { stop, clock, task })
    }

    /// Stops the clock, lets the task drain what was sent and returns its
    /// histogram.
    async fn stop(self) -> (Histogram<u64>, Result<(), ApplyError>) {
        self.stop.store(true, Ordering::Relaxed);
        let clock = self.clock;
        // The thread exits within one interval; its sender drop ends the task.
        let joined = tokio::task::spawn_blocking(move || clock.join()).await;
        match self.task.await {
            Ok(hist) => (hist, joined.map(|_| ()).map_err(ApplyError::from)),
            Err(e) => (latency_histogram(), Err(e.into())),
        }
    }
}
