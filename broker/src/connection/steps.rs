//! Timing the CONNECT handshake's steps.
//!
//! Every step feeds `tidemq_connect_step_duration_seconds{step}`. A
//! handshake slower than `diagnostics.slow_connect_ms` is counted in
//! `tidemq_slow_connects_total` and logged at WARN with every step's
//! duration, once a second at most: in a connect storm every handshake is
//! slow, and a log line for each would add to the storm.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::broker::Shared;
use crate::log_every::LogEvery;
use crate::metrics::ConnectStep;

/// Slow handshakes logged so far this process, one a second at most.
static SLOW_LOG: LogEvery = LogEvery::new(1000);

/// Step timings of one handshake.
pub(super) struct Steps {
    started: Instant,
    last: Instant,
    took: [Option<Duration>; ConnectStep::ALL.len()],
}

impl Steps {
    /// Starts timing now.
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            took: [None; ConnectStep::ALL.len()],
        }
    }

    /// Records that `step` ended now.
    pub(super) fn mark(&mut self, step: ConnectStep) {
        let now = Instant::now();
        self.took[step as usize] = Some(now - self.last);
        self.last = now;
    }

    /// Feeds the histograms; counts and (rate-limited) logs a handshake
    /// slower than `slow_ms`.
    pub(super) fn report(&self, shared: &Shared, client_id: &str, slow_ms: u64) {
        let total = self.started.elapsed();
        let metrics = &shared.metrics;
        metrics.connect_seconds.observe(total.as_secs_f64());
        for (histogram, took) in metrics.connect_steps.iter().zip(self.took) {
            if let Some(took) = took {
                histogram.observe(took.as_secs_f64());
            }
        }
        if total < Duration::from_millis(slow_ms) {
            return;
        }
        metrics.slow_connects.inc();
        if let Some(held) = SLOW_LOG.admit_now() {
            warn!(
                client_id,
                total_ms = total.as_secs_f64() * 1e3,
                steps = %self.describe(),
                slow_connects_not_logged = held,
                "slow connect"
            );
        }
    }

    /// `step=1.23ms ...` for the steps reached.
    fn describe(&self) -> String {
        ConnectStep::ALL
            .iter()
            .zip(self.took)
            .filter_map(|(step, took)| {
                took.map(|d| format!("{}={:.2}ms", step.label(), d.as_secs_f64() * 1e3))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_describe_only_what_was_reached() {
        let mut steps = Steps::new();
        steps.mark(ConnectStep::ReadConnect);
        steps.mark(ConnectStep::Validate);
        let described = steps.describe();
        assert!(described.starts_with("read_connect="), "{described}");
        assert!(described.contains(" validate="), "{described}");
        assert!(!described.contains("auth"), "{described}");
    }
}
