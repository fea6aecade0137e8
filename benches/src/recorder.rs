//! Latency and throughput bookkeeping for load runs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::storage::Output;

/// A histogram for latencies from 1 µs to 60 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .expect("invariant: 1 µs..60 s at 3 significant digits are valid bounds")
}

/// Collects latencies from many tasks, per second and in total.
pub struct Recorder {
    started: Instant,
    bytes_per_op: u64,
    histograms: Mutex<Histograms>,
    failed: AtomicU64,
    timeouts: AtomicU64,
}

struct Histograms {
    interval: Histogram<u64>,
    total: Histogram<u64>,
    /// Successes without a latency (QoS 0 publishes), which count towards
    /// the rates but not the percentiles.
    interval_untimed: u64,
    total_untimed: u64,
    peak_ops_per_sec: f64,
    last_tick: Instant,
}

/// One second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    /// Seconds since the start.
    pub sec: u64,
    /// Operations completed per second in this interval.
    pub ops_per_sec: f64,
    /// Payload megabytes per second.
    pub mb_per_sec: f64,
    /// Median latency (µs).
    pub p50_us: u64,
    /// 95th percentile latency (µs).
    pub p95_us: u64,
    /// 99th percentile latency (µs).
    pub p99_us: u64,
}

/// The summary of a whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FinalReport {
    /// Operations that succeeded.
    pub success: u64,
    /// Operations that failed.
    pub failed: u64,
    /// Operations that got no answer in time.
    pub timeout: u64,
    /// Successes whose latency was recorded (the percentiles are over these).
    pub latency_samples: u64,
    /// Seconds the run lasted.
    pub seconds: f64,
    /// Average operations per second.
    pub avg_ops_per_sec: f64,
    /// Best one-second interval (the average when the run was shorter).
    pub peak_ops_per_sec: f64,
    /// Average payload megabytes per second.
    pub mb_per_sec: f64,
    /// Latency percentiles (µs).
    pub p50_us: u64,
    /// 95th percentile (µs).
    pub p95_us: u64,
    /// 99th percentile (µs).
    pub p99_us: u64,
    /// 99.9th percentile (µs).
    pub p999_us: u64,
    /// 99.99th percentile (µs).
    pub p9999_us: u64,
    /// Largest latency (µs).
    pub max_us: u64,
}

impl Recorder {
    /// A recorder for operations that each move `bytes_per_op` payload bytes.
    pub fn new(bytes_per_op: u64) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            bytes_per_op,
            histograms: Mutex::new(Histograms {
                interval: latency_histogram(),
                total: latency_histogram(),
                interval_untimed: 0,
                total_untimed: 0,
                peak_ops_per_sec: 0.0,
                last_tick: now,
            }),
            failed: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        }
    }

    /// Records a successful operation that took `latency`.
    pub fn success(&self, latency: Duration) {
        let micros = (latency.as_micros() as u64).max(1);
        let mut h = self.lock();
        let _ = h.interval.record(micros);
        let _ = h.total.record(micros);
    }

    /// Records a successful operation whose latency is not known.
    pub fn success_untimed(&self) {
        let mut h = self.lock();
        h.interval_untimed += 1;
        h.total_untimed += 1;
    }

    /// Records a failed operation.
    pub fn failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an operation that got no answer in time.
    pub fn timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// When the recorder was created: the start of the run.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Closes the current interval and returns its figures.
    pub fn tick(&self) -> Tick {
        let mut h = self.lock();
        let now = Instant::now();
        let secs = now.duration_since(h.last_tick).as_secs_f64().max(1e-9);
        let ops = (h.interval.len() + h.interval_untimed) as f64 / secs;
        let tick = Tick {
            sec: now.duration_since(self.started).as_secs_f64().round() as u64,
            ops_per_sec: ops,
            mb_per_sec: ops * self.bytes_per_op as f64 / 1e6,
            p50_us: h.interval.value_at_quantile(0.5),
            p95_us: h.interval.value_at_quantile(0.95),
            p99_us: h.interval.value_at_quantile(0.99),
        };
        h.peak_ops_per_sec = h.peak_ops_per_sec.max(ops);
        h.interval.reset();
        h.interval_untimed = 0;
        h.last_tick = now;
        tick
    }

    /// The summary of everything recorded so far.
    pub fn report(&self) -> FinalReport {
        self.report_over(self.started.elapsed().as_secs_f64())
    }

    /// The summary of everything recorded so far, with the averages taken
    /// over `seconds` instead of the time since the start (a subscriber
    /// measures from its first message to its last).
    pub fn report_over(&self, seconds: f64) -> FinalReport {
        let h = self.lock();
        let seconds = seconds.max(1e-9);
        let success = h.total.len() + h.total_untimed;
        let q = |q: f64| h.total.value_at_quantile(q);
        FinalReport {
            success,
            failed: self.failed.load(Ordering::Relaxed),
            timeout: self.timeouts.load(Ordering::Relaxed),
            latency_samples: h.total.len(),
            seconds,
            avg_ops_per_sec: success as f64 / seconds,
            // A run shorter than one tick has no interval to take a peak from.
            peak_ops_per_sec: if h.peak_ops_per_sec > 0.0 {
                h.peak_ops_per_sec
            } else {
                success as f64 / seconds
            },
            mb_per_sec: (success * self.bytes_per_op) as f64 / seconds / 1e6,
            p50_us: q(0.5),
            p95_us: q(0.95),
            p99_us: q(0.99),
            p999_us: q(0.999),
            p9999_us: q(0.9999),
            max_us: h.total.max(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histograms> {
        self.histograms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Display for Tick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sec={} | ops/s={:.0} | MB/s={:.2} | p50={}us p95={}us p99={}us",
            self.sec, self.ops_per_sec, self.mb_per_sec, self.p50_us, self.p95_us, self.p99_us
        )
    }
}

impl std::fmt::Display for FinalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "total:   success={} failed={} timeout={} in {:.1}s",
            self.success, self.failed, self.timeout, self.seconds
        )?;
        writeln!(
            f,
            "ops/s:   avg={:.0} peak={:.0}   MB/s: {:.2}",
            self.avg_ops_per_sec, self.peak_ops_per_sec, self.mb_per_sec
        )?;
        if self.latency_samples == 0 {
            return write!(f, "latency: none recorded");
        }
        write!(
            f,
            "latency: p50={}us p95={}us p99={}us p999={}us p9999={}us max={}us",
            self.p50_us, self.p95_us, self.p99_us, self.p999_us, self.p9999_us, self.max_us
        )
    }
}

/// Prints `tick()` once a second, as a table line or a JSON object, until
/// the task is aborted. A late tick is not followed by a catch-up burst: a
/// tiny interval holding one burst of replies would read as a huge rate.
pub fn spawn_ticker<T, F>(output: Output, tick: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> T + Send + 'static,
    T: std::fmt::Display + Serialize,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            let tick = tick();
            match output {
                Output::Table => println!("{tick}"),
                Output::Json => println!("{}", serde_json::to_string(&tick).unwrap_or_default()),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_report_count_what_was_recorded() {
        let r = Recorder::new(1000);
        for us in [100, 200, 300, 400] {
            r.success(Duration::from_micros(us));
        }
        r.failure();
        r.timeout();
        r.success_untimed();
        let tick = r.tick();
        assert!(tick.ops_per_sec > 0.0);
        assert_eq!(tick.p50_us, 200);
        assert_eq!(r.tick().p99_us, 0, "the interval was reset");
        let report = r.report();
        assert_eq!((report.success, report.failed, report.timeout), (5, 1, 1));
        assert_eq!(report.latency_samples, 4);
        assert_eq!(report.max_us, 400);
        assert!(report.peak_ops_per_sec >= tick.ops_per_sec);
    }
}
