//! Named tokio runtimes and the monitor that samples them.
//!
//! A TideMQ node runs gRPC serving, Raft and the MQTT broker on separate
//! runtimes (report 001: one busy runtime must not delay another's
//! heartbeats). [`build_runtime`] makes one with named worker threads;
//! [`RuntimeMonitor`] samples every registered runtime on its own thread and
//! publishes, per runtime:
//!
//! | metric | what |
//! |---|---|
//! | `runtime_busy_ratio{runtime}` | share of worker time spent polling tasks over the last interval (0–1) |
//! | `runtime_global_queue_depth{runtime}` | tasks waiting in the runtime's global (injection) queue |
//! | `runtime_alive_tasks{runtime}` | tasks spawned and not yet finished |
//! | `runtime_workers{runtime}` | worker threads |
//!
//! A busy ratio near 1 with a growing global queue is the queueing the
//! background reports warn of: more work than the runtime's workers can poll.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};
use tokio::runtime::{Handle, Runtime};

use crate::error::MetaError;

/// Builds a multi-thread runtime with `workers` worker threads (at least
/// one) named `{name}-{i}`.
pub fn build_runtime(name: &str, workers: usize) -> Result<Runtime, MetaError> {
    let prefix = name.to_string();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name_fn(move || {
            let i = counter.fetch_add(1, Ordering::Relaxed);
            format!("{prefix}-{i}")
        })
        .enable_all()
        .build()
        .map_err(|source| MetaError::Runtime {
            name: name.to_string(),
            source,
        })
}

/// Samples runtimes on a `runtime-monitor` thread until dropped.
pub struct RuntimeMonitor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Gauges {
    busy: GaugeVec,
    queue: IntGaugeVec,
    alive: IntGaugeVec,
    workers: IntGaugeVec,
}

/// The last sample of one runtime, to turn cumulative busy time into a
/// ratio over the interval.
struct Watched {
    name: String,
    handle: Handle,
    busy: Duration,
}

impl RuntimeMonitor {
    /// Registers the runtime gauges and samples `runtimes` (name, handle)
    /// every `interval`.
    pub fn start(
        registry: &Registry,
        interval: Duration,
        runtimes: impl IntoIterator<Item = (String, Handle)>,
    ) -> Result<RuntimeMonitor, MetaError> {
        let gauges = Gauges::register(registry)?;
        let mut watched: Vec<Watched> = runtimes
            .into_iter()
            .map(|(name, handle)| {
                let busy = total_busy(&handle);
                Watched { name, handle, busy }
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("runtime-monitor".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !stopping.load(Ordering::Relaxed) {
                    // Short naps so that dropping the monitor is prompt.
                    let wake = last + interval;
                    while Instant::now() < wake && !stopping.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50).min(interval));
                    }
                    let now = Instant::now();
                    let elapsed = now.duration_since(last);
                    last = now;
                    for runtime in &mut watched {
                        gauges.sample(runtime, elapsed);
                    }
                }
            })
            .map_err(|source| MetaError::Runtime {
                name: "runtime-monitor".into(),
                source,
            })?;
        Ok(RuntimeMonitor {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for RuntimeMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Gauges {
    fn register(registry: &Registry) -> Result<Gauges, MetaError> {
        let busy = GaugeVec::new(
            Opts::new(
                "runtime_busy_ratio",
                "Share of worker time spent polling tasks over the last sample interval",
            ),
            &["runtime"],
        )
        .map_err(MetaError::Metrics)?;
        let queue = IntGaugeVec::new(
            Opts::new(
                "runtime_global_queue_depth",
                "Tasks waiting in the runtime's global queue",
            ),
            &["runtime"],
        )
        .map_err(MetaError::Metrics)?;
        let alive = IntGaugeVec::new(
            Opts::new("runtime_alive_tasks", "Tasks alive in the runtime"),
            &["runtime"],
        )
        .map_err(MetaError::Metrics)?;
        let workers = IntGaugeVec::new(
            Opts::new("runtime_workers", "Worker threads of the runtime"),
            &["runtime"],
        )
        .map_err(MetaError::Metrics)?;
        registry
            .register(Box::new(busy.clone()))
            .map_err(MetaError::Metrics)?;
        registry
            .register(Box::new(queue.clone()))
            .map_err(MetaError::Metrics)?;
        registry
            .register(Box::new(alive.clone()))
            .map_err(MetaError::Metrics)?;
        registry
            .register(Box::new(workers.clone()))
            .map_err(MetaError::Metrics)?;
        Ok(Gauges {
            busy,
            queue,
            alive,
            workers,
        })
    }

    fn sample(&self, runtime: &mut Watched, elapsed: Duration) {
        let metrics = runtime.handle.metrics();
        let workers = metrics.num_workers();
        let busy = total_busy(&runtime.handle);
        let delta = busy.saturating_sub(runtime.busy);
        runtime.busy = busy;
        let capacity = elapsed.as_secs_f64() * workers.max(1) as f64;
        let ratio = if capacity > 0.0 {
            (delta.as_secs_f64() / capacity).min(1.0)
        } else {
            0.0
        };
        let label = [runtime.name.as_str()];
        self.busy.with_label_values(&label).set(ratio);
        self.queue
            .with_label_values(&label)
            .set(metrics.global_queue_depth() as i64);
        self.alive
            .with_label_values(&label)
            .set(metrics.num_alive_tasks() as i64);
        self.workers.with_label_values(&label).set(workers as i64);
    }
}

/// Busy time summed over the runtime's workers since it started.
fn total_busy(handle: &Handle) -> Duration {
    let metrics = handle.metrics();
    (0..metrics.num_workers())
        .map(|worker| metrics.worker_total_busy_duration(worker))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_reports_a_busy_runtime_as_busy() {
        let registry = Registry::new();
        let busy = build_runtime("busy-test", 1).unwrap();
        let idle = build_runtime("idle-test", 1).unwrap();
        let _monitor = RuntimeMonitor::start(
            &registry,
            Duration::from_millis(200),
            [
                ("busy".to_string(), busy.handle().clone()),
                ("idle".to_string(), idle.handle().clone()),
            ],
        )
        .unwrap();
        // Keep the busy runtime's only worker polling for a while. It yields
        // every millisecond: tokio publishes busy time between polls, not
        // in the middle of one.
        let spinning = busy.spawn(async {
            let until = Instant::now() + Duration::from_millis(900);
            while Instant::now() < until {
                let slice = Instant::now() + Duration::from_millis(1);
                while Instant::now() < slice {
                    std::hint::spin_loop();
                }
                tokio::task::yield_now().await;
            }
        });
        let _parked = idle.spawn(std::future::pending::<()>());
        std::thread::sleep(Duration::from_millis(700));

        let families = registry.gather();
        let value = |metric: &str, runtime: &str| -> f64 {
            let family = families.iter().find(|f| f.name() == metric).unwrap();
            let m = family
                .get_metric()
                .iter()
                .find(|m| m.get_label().iter().any(|l| l.value() == runtime))
                .unwrap();
            m.get_gauge().get_value()
        };
        assert!(value("runtime_busy_ratio", "busy") > 0.5);
        assert!(value("runtime_busy_ratio", "idle") < 0.2);
        assert!(value("runtime_alive_tasks", "idle") >= 1.0);
        assert_eq!(value("runtime_workers", "busy"), 1.0);
        busy.block_on(spinning).unwrap();
    }
}
