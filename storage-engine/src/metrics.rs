//! Prometheus metrics of the executor and the engine.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
    exponential_buckets,
};

use crate::error::Result;

/// Metrics of the [`FileWriteExecutor`](crate::FileWriteExecutor)'s I/O threads.
#[derive(Clone)]
pub(crate) struct ExecutorMetrics {
    /// Requests answered per group-commit round.
    pub commit_batch: Histogram,
    /// Duration of one `fdatasync`.
    pub fsync_seconds: Histogram,
    /// Requests waiting in each I/O thread's channel, sampled every round.
    pub queue_depth: IntGaugeVec,
    /// 1 for the io driver in use, labelled by its name.
    pub io_driver: IntGaugeVec,
    /// Files that were poisoned by a write or fsync failure.
    pub poisoned_files: IntCounter,
    /// `fsync`s of a directory after a new file was created in it.
    pub dir_syncs: IntCounter,
    /// Zeros written ahead of files' ends.
    pub preallocated_bytes: IntCounter,
    /// Zero fills that failed (a full disk, say); the file appends without.
    pub preallocation_failures: IntCounter,
}

impl ExecutorMetrics {
    pub fn register(registry: &Registry) -> Result<Self> {
        let metrics = Self {
            commit_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "tidemq_storage_commit_batch_requests",
                    "Write requests answered by one group-commit round",
                )
                .buckets(exponential_buckets(1.0, 2.0, 13)?),
            )?,
            fsync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tidemq_storage_fsync_duration_seconds",
                    "Duration of one fdatasync on a segment file",
                )
                .buckets(exponential_buckets(0.000_025, 2.0, 16)?),
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    "tidemq_storage_queue_depth",
                    "Requests queued for an I/O thread",
                ),
                &["thread"],
            )?,
            io_driver: IntGaugeVec::new(
                Opts::new(
                    "tidemq_storage_io_driver",
                    "1 for the io driver the I/O threads run on",
                ),
                &["driver"],
            )?,
            poisoned_files: IntCounter::new(
                "tidemq_storage_poisoned_files_total",
                "Files that refuse writes after a write or fsync failure",
            )?,
            dir_syncs: IntCounter::new(
                "tidemq_storage_dir_syncs_total",
                "fsyncs of a partition directory that made a new segment file durable",
            )?,
            preallocated_bytes: IntCounter::new(
                "tidemq_storage_preallocated_bytes_total",
                "Zeros written ahead of files' ends so that appends overwrite existing blocks",
            )?,
            preallocation_failures: IntCounter::new(
                "tidemq_storage_preallocation_failures_total",
                "Zero fills ahead of a file's end that failed; the file appends without them",
            )?,
        };
        registry.register(Box::new(metrics.commit_batch.clone()))?;
        registry.register(Box::new(metrics.fsync_seconds.clone()))?;
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        registry.register(Box::new(metrics.io_driver.clone()))?;
        registry.register(Box::new(metrics.poisoned_files.clone()))?;
        registry.register(Box::new(metrics.dir_syncs.clone()))?;
        registry.register(Box::new(metrics.preallocated_bytes.clone()))?;
        registry.register(Box::new(metrics.preallocation_failures.clone()))?;
        Ok(metrics)
    }
}

/// Metrics of the [`StorageEngine`](crate::StorageEngine) facade.
#[derive(Clone)]
pub(crate) struct EngineMetrics {
    pub append_seconds: Histogram,
    pub appended_records: IntCounter,
    pub appended_bytes: IntCounter,
    pub recovered_segments: IntCounter,
    pub truncated_segments: IntCounter,
    pub truncated_bytes: IntCounter,
    pub quarantined_segments: IntCounter,
    pub tails_set_aside: IntCounter,
    pub deleted_segments: IntCounter,
    pub healed_partitions: IntCounter,
    pub refused_appends: IntCounter,
    pub free_bytes: IntGauge,
    pub partitions: IntGauge,
}

impl EngineMetrics {
    pub fn register(registry: &Registry) -> Result<Self> {
        let counter = |name: &str, help: &str| IntCounter::new(name, help);
        let metrics = Self {
            append_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tidemq_storage_append_duration_seconds",
                    "Time from an append call to its acknowledgement",
                )
                .buckets(exponential_buckets(0.000_025, 2.0, 18)?),
            )?,
            appended_records: counter(
                "tidemq_storage_appended_records_total",
                "Records acknowledged by appends",
            )?,
            appended_bytes: counter(
                "tidemq_storage_appended_bytes_total",
                "Payload bytes acknowledged by appends",
            )?,
            recovered_segments: counter(
                "tidemq_storage_recovered_segments_total",
                "Segments scanned and recovered at open",
            )?,
            truncated_segments: counter(
                "tidemq_storage_truncated_segments_total",
                "Segments whose corrupt or torn tail was truncated at open",
            )?,
            truncated_bytes: counter(
                "tidemq_storage_truncated_bytes_total",
                "Bytes cut from corrupt or torn segment tails at open",
            )?,
            quarantined_segments: counter(
                "tidemq_storage_quarantined_segments_total",
                "Unreadable segments moved aside at open",
            )?,
            tails_set_aside: counter(
                "tidemq_storage_tails_set_aside_total",
                "Runs of bytes after a corrupt record (not a torn tail) set aside in a file at open",
            )?,
            deleted_segments: counter(
                "tidemq_storage_deleted_segments_total",
                "Segments removed by retention or partition deletion",
            )?,
            healed_partitions: counter(
                "tidemq_storage_healed_partitions_total",
                "Partitions repaired after a failed write or sync, taking appends again",
            )?,
            refused_appends: counter(
                "tidemq_storage_disk_full_refusals_total",
                "Appends refused because the disk had less free space than min_free_bytes",
            )?,
            free_bytes: IntGauge::new(
                "tidemq_storage_free_bytes",
                "Free bytes on the data directory's filesystem, as last sampled",
            )?,
            partitions: IntGauge::new("tidemq_storage_partitions", "Open partitions")?,
        };
        registry.register(Box::new(metrics.append_seconds.clone()))?;
        for c in [
            &metrics.appended_records,
            &metrics.appended_bytes,
            &metrics.recovered_segments,
            &metrics.truncated_segments,
            &metrics.truncated_bytes,
            &metrics.quarantined_segments,
            &metrics.tails_set_aside,
            &metrics.deleted_segments,
            &metrics.healed_partitions,
            &metrics.refused_appends,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(metrics.partitions.clone()))?;
        registry.register(Box::new(metrics.free_bytes.clone()))?;
        Ok(metrics)
    }
}
