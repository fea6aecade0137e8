//! A fixed-duration load through any [`DurableAppend`] path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::paths::DurableAppend;

/// The shape of a load.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Partition files written to.
    pub partitions: usize,
    /// Concurrent producer tasks; producer `i` writes to partition `i % partitions`.
    pub producers: usize,
    /// Bytes per record.
    pub payload: usize,
    /// How long to run.
    pub duration: Duration,
}

/// What one path achieved under a load.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The path's name.
    pub path: String,
    /// Acknowledged appends.
    pub ops: u64,
    /// Appends that failed.
    pub errors: u64,
    /// Seconds the load ran.
    pub seconds: f64,
    /// Appends per second.
    pub ops_per_sec: f64,
    /// Payload megabytes (10^6) per second.
    pub mb_per_sec: f64,
    /// Latency percentiles in microseconds.
    pub latency_us: Percentiles,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Largest observed.
    pub max: u64,
}

impl Percentiles {
    /// Reads the percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.50),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

/// A histogram for latencies from 1 µs to 60 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .expect("invariant: 1 µs..60 s at 3 significant digits are valid bounds")
}

/// Runs `spec` through `path` on the current tokio runtime.
pub async fn run<A: DurableAppend>(path: Arc<A>, spec: LoadSpec) -> LoadReport {
    let record = Bytes::from(vec![0x5Au8; spec.payload]);
    let started = Instant::now();
    let deadline = started + spec.duration;
    let producers: Vec<_> = (0..spec.producers)
        .map(|i| {
            let path = Arc::clone(&path);
            let record = record.clone();
            tokio::spawn(async move {
                let partition = i % spec.partitions;
                let mut hist = latency_histogram();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match path.append(partition, record.clone()).await {
                        Ok(()) => {
                            let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (hist, errors)
            })
        })
        .collect();
    let mut hist = latency_histogram();
    let mut errors = 0;
    for p in producers {
        if let Ok((h, e)) = p.await {
            let _ = hist.add(&h);
            errors += e;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops = hist.len();
    LoadReport {
        path: path.name().to_string(),
        ops,
        errors,
        seconds,
        ops_per_sec: ops as f64 / seconds,
        mb_per_sec: (ops * spec.payload as u64) as f64 / seconds / 1e6,
        latency_us: Percentiles::of(&hist),
    }
}
