//! The RocksDB storage of all Raft groups of a node: one database, three
//! column families per group, one pool for every RocksDB call and one log
//! writer that merges the log writes of all groups.

mod apply;
mod keys;
mod log_store;
mod log_writer;
mod pool;
mod reader;
mod slot;
mod snapshot;
mod snapshot_data;
mod state_machine;
mod watch;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus::Registry;
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::log_store::MetaLogStore;

pub use self::pool::RocksPool;
pub use self::reader::MetaState;
pub use self::slot::MetaSnapshotBuilder;
pub use self::snapshot_data::MetaSnapshotData;
pub use self::state_machine::MetaStateMachine;
pub use self::watch::{MetadataRead, MetadataWatch};

use self::keys::GroupCfs;
use self::log_writer::LogWriter;
use crate::error::StoreError;
use crate::metrics::StoreMetrics;

/// Tuning of [`open_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Threads of the `meta-rocksdb-{i}` pool (at least one).
    pub pool_threads: usize,
    /// Jobs the pool queues before callers wait to submit.
    pub pool_queue: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pool_threads: 2,
            pool_queue: 1024,
        }
    }
}

impl StoreOptions {
    /// Sets the pool size.
    pub fn pool_threads(mut self, threads: usize) -> Self {
        self.pool_threads = threads;
        self
    }

    /// Sets the pool queue depth.
    pub fn pool_queue(mut self, queue: usize) -> Self {
        self.pool_queue = queue;
        self
    }
}

/// What every group's stores share. Field order is drop order: the pool and
/// the writer join their threads (and so drop their `Arc<DB>` clones) before
/// the database closes.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: RocksPool,
    /// Long jobs (snapshot builds), one at a time, at the lowest priority.
    pub(crate) background: RocksPool,
    pub(crate) writer: LogWriter,
    pub(crate) metrics: StoreMetrics,
    pub(crate) db: Arc<DB>,
    pub(crate) snapshot_dir: PathBuf,
    /// The metadata group's applied route changes go here.
    pub(crate) metadata: watch::MetadataSink,
    /// Dropped last: tells waiters the threads are joined and the DB closed.
    pub(crate) closed: ClosedGuard,
}

/// Flips the store's "closed" flag when dropped.
#[derive(Debug)]
pub(crate) struct ClosedGuard(tokio::sync::watch::Sender<bool>);

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Resolves once every handle of a store is gone, its threads have joined
/// and RocksDB has released its directory lock.
#[derive(Debug, Clone)]
pub struct StoreClosed(tokio::sync::watch::Receiver<bool>);

impl StoreClosed {
    /// Waits for the store to close.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|closed| *closed).await;
    }
}

/// Opens (creating if needed) the store under `dir` with `groups` Raft
/// groups and default [`StoreOptions`]. See [`open_with`].
pub async fn open(
    dir: impl AsRef<Path>,
    groups: u32,
    registry: &Registry,
) -> Result<Vec<(MetaLogStore, MetaStateMachine)>, StoreError> {
    open_with(dir, groups, registry, StoreOptions::default()).await
}

/// Opens (creating if needed) the RocksDB database at `{dir}/rocksdb` with
/// the column families of groups `0..groups` and returns each group's log
/// store and state machine, in group order. Metrics are registered into
/// `registry`, so a registry serves one open store at a time.
///
/// Column families of groups beyond `groups` left by an earlier run are
/// opened too (RocksDB requires it) but not served.
pub async fn open_with(
    dir: impl AsRef<Path>,
    groups: u32,
    registry: &Registry,
    options: StoreOptions,
) -> Result<Vec<(MetaLogStore, MetaStateMachine)>, StoreError> {
    if groups == 0 {
        return Err(StoreError::NoGroups { groups });
    }
    let dir = dir.as_ref().to_path_buf();
    let metrics = StoreMetrics::register(registry)?;
    let pool = RocksPool::new(options.pool_threads, options.pool_queue, metrics.clone())?;
    let cfs: Vec<GroupCfs> = (0..groups).map(GroupCfs::new).collect();
    let wanted: Vec<String> = cfs
        .iter()
        .flat_map(|g| g.names().map(str::to_string))
        .collect();
    let db_dir = dir.join("rocksdb");
    let snapshot_dir = dir.join("snapshots");
    let snap_dir = snapshot_dir.clone();
    let db = pool
        .run("open", move || open_db(&db_dir, &snap_dir, wanted))
        .await??;
    let db = Arc::new(db);
    let writer = LogWriter::start(Arc::clone(&db), metrics.clone())?;
    let (closed, _) = tokio::sync::watch::channel(false);
    let background = RocksPool::background(metrics.clone())?;
    let shared = Arc::new(Shared {
        pool,
        background,
        writer,
        metrics,
        db,
        snapshot_dir,
        metadata: watch::MetadataSink::default(),
        closed: ClosedGuard(closed),
    });

    let mut stores = Vec::with_capacity(cfs.len());
    for group in cfs {
        let group = Arc::new(group);
        let sm = MetaStateMachine::load(Arc::clone(&shared), Arc::clone(&group)).await?;
        let log = MetaLogStore::new(Arc::clone(&shared), group);
        stores.push((log, sm));
    }
    tracing::info!(dir = %dir.display(), groups, "meta store opened");
    Ok(stores)
}

fn open_db(db_dir: &Path, snapshot_dir: &Path, wanted: Vec<String>) -> Result<DB, StoreError> {
    std::fs::create_dir_all(snapshot_dir).map_err(|source| StoreError::SnapshotIo {
        path: snapshot_dir.to_path_buf(),
        source,
    })?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    // Memtables bound both the memory the store holds and the log it must
    // replay at start: 16 MiB per column family, 64 MiB in all.
    opts.set_db_write_buffer_size(64 << 20);
    opts.set_keep_log_file_num(4);
    // A WAL file is kept until every column family with data in it has
    // flushed. The metadata group's column families take few writes, so
    // without a cap their small memtables pin every WAL since their first
    // write (900 MB of WALs after 2M sessions). Past 128 MiB of WALs, the
    // column families holding the oldest are flushed.
    opts.set_max_total_wal_size(128 << 20);
    // Memtable flushes and compactions sync their files a MiB at a time
    // rather than in one burst at the end, which would stall the Raft log's
    // synced writes behind it.
    opts.set_bytes_per_sync(1 << 20);
    // Replaying the WAL at open must not write SST files: a node whose disk
    // is full still starts (and serves reads) instead of failing to open.
    // (The crate has no setter for it.)
    let opts = opts
        .get_options_from_string("avoid_flush_during_recovery=true")
        .map_err(StoreError::rocks("options"))?;

    // The default column family is named so that it gets the 16 MiB
    // memtable of the others (the crate would open it with RocksDB's
    // defaults): RocksDB preallocates each new WAL file at 1.1 times the
    // largest memtable (fallocate), and at the 64 MiB default that took
    // 70 MiB of a nearly full disk at once.
    let mut names: BTreeSet<String> = wanted.into_iter().collect();
    names.insert(rocksdb::DEFAULT_COLUMN_FAMILY_NAME.to_string());
    if db_dir.join("CURRENT").exists() {
        let existing = DB::list_cf(&opts, db_dir).map_err(StoreError::rocks("list_cf"))?;
        names.extend(existing);
    }
    let descriptors = names.into_iter().map(|name| {
        let mut cf = Options::default();
        cf.set_write_buffer_size(16 << 20);
        ColumnFamilyDescriptor::new(name, cf)
    });
    DB::open_cf_descriptors(&opts, db_dir, descriptors).map_err(StoreError::rocks("open"))
}

impl Shared {
    /// Runs a job on the pool with the database.
    pub(crate) async fn run<T, F>(&self, op: &'static str, job: F) -> Result<T, StoreError>
    where
        F: FnOnce(&DB) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let db = Arc::clone(&self.db);
        self.pool.run(op, move || job(&db)).await?
    }

    /// Like [`Shared::run`], for a long background job: on a thread of its
    /// own at the lowest CPU priority ([`RocksPool::background`]).
    pub(crate) async fn run_background<T, F>(
        &self,
        op: &'static str,
        job: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(&DB) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let db = Arc::clone(&self.db);
        self.background.run(op, move || job(&db)).await?
    }
}

/// Reads and decodes one JSON value.
pub(crate) fn get_json<T: DeserializeOwned>(
    db: &DB,
    cf: &str,
    key: &[u8],
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    let handle = cf_handle(db, cf)?;
    let Some(bytes) = db
        .get_pinned_cf(&handle, key)
        .map_err(StoreError::rocks("get"))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(StoreError::decode(what, key))
}

/// Encodes a value as JSON.
pub(crate) fn to_json<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(StoreError::encode(what))
}

/// Looks up a column family.
pub(crate) fn cf_handle<'a>(
    db: &'a DB,
    name: &str,
) -> Result<Arc<rocksdb::BoundColumnFamily<'a>>, StoreError> {
    db.cf_handle(name)
        .ok_or_else(|| StoreError::MissingColumnFamily {
            name: name.to_string(),
        })
}

/// Decodes up to `limit` JSON values whose keys start with `prefix`, starting
/// at `from` (inclusive) when given.
pub(crate) fn scan_json<T: DeserializeOwned>(
    db: &DB,
    cf: &str,
    prefix: &[u8],
    from: Option<&[u8]>,
    limit: usize,
    what: &'static str,
) -> Result<Vec<T>, StoreError> {
    let handle = cf_handle(db, cf)?;
    let mut read = ReadOptions::default();
    if let Some(end) = keys::prefix_end(prefix) {
        read.set_iterate_upper_bound(end);
    }
    let start = from.unwrap_or(prefix);
    let mode = IteratorMode::From(start, Direction::Forward);
    let mut out = Vec::new();
    for item in db.iterator_cf_opt(&handle, read, mode) {
        if out.len() >= limit {
            break;
        }
        let (key, value) = item.map_err(StoreError::rocks("scan"))?;
        if !key.starts_with(prefix) {
            break;
        }
        out.push(serde_json::from_slice(&value).map_err(StoreError::decode(what, &key))?);
    }
    Ok(out)
}
