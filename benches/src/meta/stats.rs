//! Counters of a meta load on top of the shared [`Recorder`]: sessions
//! created (a request may carry several), errors by kind, and the
//! per-second line and final report in milliseconds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tidemq_meta::MetaError;

use crate::recorder::Recorder;

/// What the workers of a run record into.
pub(super) struct Stats {
    /// Latency of answered requests, per second and in total.
    recorder: Recorder,
    batched: bool,
    sessions: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    by_kind: Mutex<BTreeMap<String, u64>>,
    rate: Mutex<Rate>,
}

struct Rate {
    last_at: Instant,
    last_sessions: u64,
    peak: f64,
}

/// One second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    /// Seconds since the start.
    pub sec: u64,
    /// Sessions created per second in this interval.
    pub ops_per_sec: f64,
    /// Requests answered successfully per second in this interval.
    pub requests_per_sec: f64,
    /// Sessions created since the start.
    pub total: u64,
    /// Failed requests since the start.
    pub errors: u64,
    /// Timed-out requests since the start.
    pub timeouts: u64,
    /// Median request latency in this interval (ms).
    pub p50_ms: f64,
    /// 95th percentile (ms).
    pub p95_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// Whether requests carry more than one session (the table line then
    /// shows requests/s too).
    #[serde(skip)]
    pub batched: bool,
}

/// The summary of a `create-session` run.
#[derive(Debug, Clone, Serialize)]
pub struct CreateSessionReport {
    /// Keys of this run are this prefix followed by 0, 1, 2...
    pub key_prefix: String,
    /// Sessions the service reported as created.
    pub sessions: u64,
    /// Requests answered successfully.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Failed requests by kind (`Unavailable`, `InvalidArgument`...).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Requests unanswered after `--timeout-ms` (cancelled; the service may
    /// still have created their sessions).
    pub timeouts: u64,
    /// Seconds from the first request to the last answer.
    pub elapsed_secs: f64,
    /// Sessions created per second, on average.
    pub avg_ops_per_sec: f64,
    /// Best one-second interval, or the average when that is higher.
    pub peak_ops_per_sec: f64,
    /// Successful requests per second, on average.
    pub avg_requests_per_sec: f64,
    /// Request latency percentiles over the answered requests (ms).
    pub p50_ms: f64,
    /// 95th percentile (ms).
    pub p95_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// 99.9th percentile (ms).
    pub p999_ms: f64,
    /// Largest latency (ms).
    pub max_ms: f64,
}

impl Stats {
    /// Counters for requests of `batch` sessions each; the run starts now.
    pub(super) fn new(batch: u32) -> Self {
        let recorder = Recorder::new(0);
        let started = recorder.started();
        Self {
            recorder,
            batched: batch > 1,
            sessions: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            by_kind: Mutex::new(BTreeMap::new()),
            rate: Mutex::new(Rate {
                last_at: started,
                last_sessions: 0,
                peak: 0.0,
            }),
        }
    }

    /// A request of `asked` sessions answered after `latency`, saying it
    /// created `created`. Fewer than asked counts as an error too.
    pub(super) fn created(&self, latency: Duration, asked: usize, created: u32) {
        self.recorder.success(latency);
        self.sessions
            .fetch_add(u64::from(created), Ordering::Relaxed);
        if (created as usize) < asked {
            self.count_error("CreatedFewer".to_string());
        }
    }

    /// A request that failed.
    pub(super) fn error(&self, error: &MetaError) {
        self.count_error(error_kind(error));
    }

    /// A request unanswered in time.
    pub(super) fn timeout(&self) {
        self.recorder.timeout();
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    fn count_error(&self, kind: String) {
        self.recorder.failure();
        self.errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.by_kind).entry(kind).or_default() += 1;
    }

    /// Closes the current interval and returns its figures.
    pub(super) fn tick(&self) -> Tick {
        let interval = self.recorder.tick();
        let total = self.sessions.load(Ordering::Relaxed);
        let mut rate = lock(&self.rate);
        let now = Instant::now();
        let secs = now.duration_since(rate.last_at).as_secs_f64().max(1e-9);
        let ops_per_sec = total.saturating_sub(rate.last_sessions) as f64 / secs;
        rate.peak = rate.peak.max(ops_per_sec);
        rate.last_at = now;
        rate.last_sessions = total;
        Tick {
            sec: interval.sec,
            ops_per_sec,
            requests_per_sec: interval.ops_per_sec,
            total,
            errors: self.errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            p50_ms: ms(interval.p50_us),
            p95_ms: ms(interval.p95_us),
            p99_ms: ms(interval.p99_us),
            batched: self.batched,
        }
    }

    /// The summary of everything recorded so far.
    pub(super) fn report(&self, key_prefix: String) -> CreateSessionReport {
        let latency = self.recorder.report();
        let sessions = self.sessions.load(Ordering::Relaxed);
        let avg_ops_per_sec = sessions as f64 / latency.seconds;
        let peak = lock(&self.rate).peak;
        CreateSessionReport {
            key_prefix,
            sessions,
            requests: latency.success,
            errors: self.errors.load(Ordering::Relaxed),
            errors_by_kind: lock(&self.by_kind).clone(),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            elapsed_secs: latency.seconds,
            avg_ops_per_sec,
            // A run shorter than one tick has no interval to take a peak
            // from, and a fast last partial second can beat every full one.
            peak_ops_per_sec: peak.max(avg_ops_per_sec),
            avg_requests_per_sec: latency.avg_ops_per_sec,
            p50_ms: ms(latency.p50_us),
            p95_ms: ms(latency.p95_us),
            p99_ms: ms(latency.p99_us),
            p999_ms: ms(latency.p999_us),
            max_ms: ms(latency.max_us),
        }
    }
}

/// A short name for what went wrong: the gRPC code when the service
/// answered one, else the kind of client-side failure.
pub fn error_kind(error: &MetaError) -> String {
    match error {
        MetaError::Rpc { status, .. } => format!("{:?}", status.code()),
        MetaError::InvalidArgument { .. } => "InvalidArgument".into(),
        MetaError::NotLeader { .. } => "NotLeader".into(),
        MetaError::Closed => "Closed".into(),
        MetaError::Coalesced(e) => error_kind(e),
        _ => "Other".into(),
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Display for Tick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sec={} | ops/s={:.0}", self.sec, self.ops_per_sec)?;
        if self.batched {
            write!(f, " | req/s={:.0}", self.requests_per_sec)?;
        }
        write!(
            f,
            " | total={} | errors={} | timeouts={} | p50={:.2}ms p95={:.2}ms p99={:.2}ms",
            self.total, self.errors, self.timeouts, self.p50_ms, self.p95_ms, self.p99_ms
        )
    }
}

impl std::fmt::Display for CreateSessionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "total:   sessions={} requests={} errors={} timeouts={} in {:.2}s (keys {}N)",
            self.sessions,
            self.requests,
            self.errors,
            self.timeouts,
            self.elapsed_secs,
            self.key_prefix
        )?;
        if !self.errors_by_kind.is_empty() {
            let kinds: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(kind, n)| format!("{kind}={n}"))
                .collect();
            writeln!(f, "errors:  {}", kinds.join(" "))?;
        }
        writeln!(
            f,
            "ops/s:   avg={:.0} peak={:.0}   requests/s: avg={:.0}",
            self.avg_ops_per_sec, self.peak_ops_per_sec, self.avg_requests_per_sec
        )?;
        if self.requests == 0 {
            return write!(f, "latency: none recorded");
        }
        write!(
            f,
            "latency: p50={:.2}ms p95={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
            self.p50_ms, self.p95_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }
}
