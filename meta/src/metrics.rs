//! Prometheus metrics of the storage layer, registered into a caller-owned
//! [`prometheus::Registry`].

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, Registry};

use crate::error::StoreError;

/// Millisecond buckets from 50 µs to 2.5 s.
const MS_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
];

/// Count buckets for batch sizes.
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// The storage layer's metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct StoreMetrics {
    /// `rocksdb_operation_ms{op}`: time of one RocksDB job on the pool or
    /// the log writer.
    pub(crate) rocksdb_op: HistogramVec,
    /// `raft_log_append_batch_duration_ms`: one merged, synced log write.
    pub(crate) log_batch_duration: Histogram,
    /// `raft_log_append_batch_entries`: log entries per merged write.
    pub(crate) log_batch_entries: Histogram,
    /// `raft_log_append_batch_requests`: writes (appends, votes...) merged
    /// into one.
    pub(crate) log_batch_requests: Histogram,
    /// `raft_log_append_batch_groups`: distinct groups in one merged write.
    pub(crate) log_batch_groups: Histogram,
    /// `raft_apply_batch_duration_ms{group}`: one state machine `apply`.
    pub(crate) apply_duration: HistogramVec,
}

impl StoreMetrics {
    pub(crate) fn register(registry: &Registry) -> Result<Self, StoreError> {
        let rocksdb_op = HistogramVec::new(
            HistogramOpts::new("rocksdb_operation_ms", "RocksDB operation time in ms")
                .buckets(MS_BUCKETS.to_vec()),
            &["op"],
        );
        let log_batch_duration = Histogram::with_opts(
            HistogramOpts::new(
                "raft_log_append_batch_duration_ms",
                "Time of one merged, synced Raft log write in ms (all groups)",
            )
            .buckets(MS_BUCKETS.to_vec()),
        );
        let log_batch_entries = count_histogram(
            "raft_log_append_batch_entries",
            "Raft log entries written by one merged log write",
        );
        let log_batch_requests = count_histogram(
            "raft_log_append_batch_requests",
            "Log store writes (appends, votes, truncations) merged into one write",
        );
        let log_batch_groups = count_histogram(
            "raft_log_append_batch_groups",
            "Distinct Raft groups in one merged log write",
        );
        let apply_duration = HistogramVec::new(
            HistogramOpts::new(
                "raft_apply_batch_duration_ms",
                "Time of one state machine apply batch in ms",
            )
            .buckets(MS_BUCKETS.to_vec()),
            &["group"],
        );
        let metrics = StoreMetrics {
            rocksdb_op: checked("rocksdb_operation_ms", rocksdb_op)?,
            log_batch_duration: checked("raft_log_append_batch_duration_ms", log_batch_duration)?,
            log_batch_entries: checked("raft_log_append_batch_entries", log_batch_entries)?,
            log_batch_requests: checked("raft_log_append_batch_requests", log_batch_requests)?,
            log_batch_groups: checked("raft_log_append_batch_groups", log_batch_groups)?,
            apply_duration: checked("raft_apply_batch_duration_ms", apply_duration)?,
        };
        let collectors: [(&'static str, Box<dyn prometheus::core::Collector>); 6] = [
            ("rocksdb_operation_ms", Box::new(metrics.rocksdb_op.clone())),
            (
                "raft_log_append_batch_duration_ms",
                Box::new(metrics.log_batch_duration.clone()),
            ),
            (
                "raft_log_append_batch_entries",
                Box::new(metrics.log_batch_entries.clone()),
            ),
            (
                "raft_log_append_batch_requests",
                Box::new(metrics.log_batch_requests.clone()),
            ),
            (
                "raft_log_append_batch_groups",
                Box::new(metrics.log_batch_groups.clone()),
            ),
            (
                "raft_apply_batch_duration_ms",
                Box::new(metrics.apply_duration.clone()),
            ),
        ];
        for (name, collector) in collectors {
            registry
                .register(collector)
                .map_err(|source| StoreError::Metrics { name, source })?;
        }
        Ok(metrics)
    }

    pub(crate) fn observe_op(&self, op: &str, elapsed: Duration) {
        self.rocksdb_op
            .with_label_values(&[op])
            .observe(as_ms(elapsed));
    }
}

/// A duration in fractional milliseconds.
pub(crate) fn as_ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

fn count_histogram(name: &str, help: &str) -> prometheus::Result<Histogram> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(COUNT_BUCKETS.to_vec()))
}

fn checked<T>(name: &'static str, made: prometheus::Result<T>) -> Result<T, StoreError> {
    made.map_err(|source| StoreError::Metrics { name, source })
}
