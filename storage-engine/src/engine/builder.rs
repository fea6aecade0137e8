//! [`EngineBuilder`]: the engine's settings, and opening an engine, which
//! starts its I/O threads and recovers every partition on disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use prometheus::Registry;
use tracing::warn;

use super::{Inner, PARTITIONS_DIR, StorageEngine, spawn_retention_thread};
use crate::error::{Result, StorageError};
use crate::executor::{ExecutorBuilder, FileWriteExecutor, SyncPolicy};
use crate::frame::FRAME_HEADER_LEN;
use crate::metrics::EngineMetrics;
use crate::partition::{Partition, Retention};
use crate::recovery::{self, RecoveryReport, ScanLimits};
use crate::segment::{Segment, segment_path};
use crate::space::{self, FreeSpace};

/// Default zero-fill window past each active segment's end.
const DEFAULT_PREALLOCATE: u64 = 256 * 1024;

/// Builds and opens a [`StorageEngine`]; see [`StorageEngine::builder`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    dir: PathBuf,
    executor: ExecutorBuilder,
    segment_bytes: u64,
    index_interval_bytes: u64,
    max_record_bytes: usize,
    retention: Retention,
    retention_check_interval: Duration,
    heal_retry: Duration,
    min_free_bytes: u64,
    space_check_interval: Duration,
    registry: Option<Registry>,
}

impl EngineBuilder {
    /// The defaults; see [`StorageEngine::builder`].
    pub(super) fn new(dir: PathBuf) -> Self {
        EngineBuilder {
            dir,
            executor: FileWriteExecutor::builder().preallocate(DEFAULT_PREALLOCATE),
            segment_bytes: 64 * 1024 * 1024,
            index_interval_bytes: 4096,
            max_record_bytes: 8 * 1024 * 1024,
            retention: Retention::default(),
            retention_check_interval: Duration::from_secs(60),
            heal_retry: Duration::from_secs(1),
            min_free_bytes: 0,
            space_check_interval: Duration::from_millis(100),
            registry: None,
        }
    }

    /// Number of I/O threads (default: the number of cores).
    pub fn io_threads(mut self, threads: usize) -> Self {
        self.executor = self.executor.threads(threads);
        self
    }

    /// Pin each I/O thread to its own core (default: off).
    pub fn pin_cores(mut self, pin: bool) -> Self {
        self.executor = self.executor.pin_cores(pin);
        self
    }

    /// When appends are synced (default [`SyncPolicy::Always`]).
    pub fn sync_policy(mut self, sync: SyncPolicy) -> Self {
        self.executor = self.executor.sync_policy(sync);
        self
    }

    /// Capacity of each I/O thread's request queue (default 8192).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.executor = self.executor.queue_capacity(capacity);
        self
    }

    /// Zeros kept written past the end of each partition's active segment
    /// (default 256 KiB; 0 = off), so that synced appends write over existing
    /// blocks and their `fdatasync` commits no new size or allocation to the
    /// filesystem's journal (see [`ExecutorBuilder::preallocate`]). The
    /// zeros are cut when a segment is sealed and at close; after a crash,
    /// recovery finds the end of the data by its frames and cuts them.
    pub fn preallocate_bytes(mut self, bytes: u64) -> Self {
        self.executor = self.executor.preallocate(bytes);
        self
    }

    /// Size at which a segment is sealed and a new one started (default 64 MiB).
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Bytes between two sparse index entries (default 4 KiB).
    pub fn index_interval_bytes(mut self, bytes: u64) -> Self {
        self.index_interval_bytes = bytes;
        self
    }

    /// Largest record payload accepted (default 8 MiB).
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// Default retention of partitions created without their own (default: keep everything).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// How often age-based retention is checked in the background (default 60 s).
    pub fn retention_check_interval(mut self, interval: Duration) -> Self {
        self.retention_check_interval = interval;
        self
    }

    /// How long a partition poisoned by a failed write or sync waits before
    /// the next append tries to repair it (default 1 s). Until then appends
    /// fail at once with [`StorageError::Poisoned`].
    pub fn heal_retry(mut self, after: Duration) -> Self {
        self.heal_retry = after;
        self
    }

    /// Free space the engine leaves on the data directory's filesystem:
    /// below it appends fail with [`StorageError::DiskFull`] (default 0:
    /// write until the disk is full).
    pub fn min_free_bytes(mut self, bytes: u64) -> Self {
        self.min_free_bytes = bytes;
        self
    }

    /// How often the free space is sampled (default 100 ms).
    pub fn space_check_interval(mut self, interval: Duration) -> Self {
        self.space_check_interval = interval;
        self
    }

    /// Register metrics in this registry instead of a private one.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Starts the I/O threads and recovers every partition in the directory.
    ///
    /// All file work, recovery included, runs on the I/O threads; the
    /// returned future only waits for it and can be awaited on any runtime.
    pub async fn open(self) -> Result<StorageEngine> {
        let max_frame = self.max_record_bytes as u64 + FRAME_HEADER_LEN as u64;
        if self.segment_bytes < max_frame || self.index_interval_bytes == 0 {
            return Err(StorageError::InvalidConfig(format!(
                "segment_bytes ({}) must hold a largest record ({max_frame} bytes framed) \
                 and index_interval_bytes must be above zero",
                self.segment_bytes
            )));
        }
        let registry = self.registry.unwrap_or_default();
        let metrics = EngineMetrics::register(&registry)?;
        let executor = self.executor.registry(registry.clone()).build()?;
        let limits = ScanLimits {
            max_frame_len: max_frame as usize,
            index_interval: self.index_interval_bytes,
        };

        let root = self.dir.join(PARTITIONS_DIR);
        let listed = root.clone();
        let ids = executor
            .run_blocking(0, move || list_partitions(&listed))
            .await?
            .map_err(|e| StorageError::io("list partitions", &root, e))?;
        let sampled = root.clone();
        let free = executor
            .run_blocking(0, move || space::free_bytes(&sampled))
            .await?
            .map_err(|e| StorageError::io("statvfs", &root, e))?;
        let space = FreeSpace::new(
            self.min_free_bytes,
            free,
            metrics.free_bytes.clone(),
            metrics.refused_appends.clone(),
        );

        let recoveries = ids.iter().map(|&id| {
            let dir = root.join(id.to_string());
            let executor = &executor;
            async move {
                let scan_dir = dir.clone();
                let (found, report) = executor
                    .run_blocking(id, move || recovery::recover_partition(&scan_dir, limits))
                    .await?
                    .map_err(|e| StorageError::io("recover partition", &dir, e))?;
                let mut segments = Vec::with_capacity(found.len());
                for s in found {
                    segments.push(Segment {
                        base_offset: s.base_offset,
                        file: executor.handle(id, s.path),
                        size: s.size,
                        committed_size: s.size,
                        next_offset: s.next_offset,
                        committed_next_offset: s.next_offset,
                        max_timestamp_ms: s.max_timestamp_ms,
                        index: s.index,
                    });
                }
                let next = segments.last().map_or(0, |s| s.next_offset);
                if segments.is_empty() {
                    let path = segment_path(&dir, next);
                    segments.push(Segment::empty(executor.handle(id, path), next));
                }
                if let Some(active) = segments.last() {
                    executor.len(&active.file).await?; // opens it for appending
                }
                Ok::<_, StorageError>((
                    id,
                    Partition::new(id, dir, self.retention, segments),
                    report,
                ))
            }
        });
        let mut partitions = HashMap::new();
        let mut report = RecoveryReport::default();
        for recovered in join_all(recoveries).await {
            let (id, partition, found) = recovered?;
            partitions.insert(id, Arc::new(partition));
            report.merge(found);
        }
        recovery::log_report(&self.dir, &report);
        metrics.recovered_segments.inc_by(report.segments as u64);
        metrics
            .truncated_segments
            .inc_by(report.truncated_segments as u64);
        metrics.truncated_bytes.inc_by(report.truncated_bytes);
        metrics
            .quarantined_segments
            .inc_by(report.quarantined.len() as u64);
        metrics
            .tails_set_aside
            .inc_by(report.tails_set_aside.len() as u64);
        metrics.partitions.set(partitions.len() as i64);

        let inner = Arc::new(Inner {
            dir: self.dir,
            executor,
            partitions: RwLock::new(partitions),
            segment_bytes: self.segment_bytes,
            index_interval: self.index_interval_bytes,
            max_record_bytes: self.max_record_bytes,
            default_retention: self.retention,
            heal_retry: self.heal_retry,
            space,
            metrics,
            registry,
            report,
        });
        spawn_retention_thread(Arc::downgrade(&inner), self.retention_check_interval)?;
        space::spawn_sampler(
            Arc::downgrade(&inner),
            |inner: &Inner| &inner.space,
            root,
            self.space_check_interval,
        )?;
        Ok(StorageEngine { inner })
    }
}

fn list_partitions(root: &Path) -> std::io::Result<Vec<u64>> {
    std::fs::create_dir_all(root)?;
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        match entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(id) if entry.file_type()?.is_dir() => ids.push(id),
            _ => {
                warn!(path = %entry.path().display(), "ignoring unknown entry in partitions directory")
            }
        }
    }
    Ok(ids)
}
