//! The gRPC services of a meta node and their metrics.

mod linearizer;
mod meta_service;
mod raft_service;

use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, exponential_buckets,
};
use tonic::Status;
use tracing::warn;

pub use meta_service::{MAX_LIST_PAGE, MAX_SESSIONS_PER_REQUEST, MetaServer};
pub use raft_service::RaftServer;

/// `grpc_requests` and `grpc_request_duration_ms` by service, method and status.
#[derive(Clone)]
pub struct GrpcMetrics {
    /// Calls refused for want of the cluster secret.
    pub(crate) unauthenticated: IntCounter,
    /// Leadership checks made for linearizable reads (one serves every
    /// read waiting when it starts).
    pub(crate) read_checks: IntCounter,
    requests: IntCounterVec,
    duration_ms: HistogramVec,
    slow: Duration,
}

impl GrpcMetrics {
    /// Registers the metrics; requests slower than `slow` are logged at WARN.
    pub fn register(registry: &Registry, slow: Duration) -> prometheus::Result<Self> {
        let labels = &["service", "method", "status"];
        let requests =
            IntCounterVec::new(Opts::new("grpc_requests", "gRPC requests served"), labels)?;
        let duration_ms = HistogramVec::new(
            HistogramOpts::new(
                "grpc_request_duration_ms",
                "gRPC request duration in milliseconds",
            )
            .buckets(exponential_buckets(0.05, 2.0, 18)?),
            labels,
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration_ms.clone()))?;
        let unauthenticated = IntCounter::new(
            "tidemq_meta_unauthenticated_total",
            "gRPC calls refused because they did not carry the cluster secret",
        )?;
        registry.register(Box::new(unauthenticated.clone()))?;
        let read_checks = IntCounter::new(
            "tidemq_meta_read_checks_total",
            "Leadership checks (a heartbeat round to a quorum) made for linearizable reads; \
             one serves every read waiting when it starts",
        )?;
        registry.register(Box::new(read_checks.clone()))?;
        Ok(Self {
            unauthenticated,
            read_checks,
            requests,
            duration_ms,
            slow,
        })
    }

    /// Records one served request.
    pub fn record(&self, service: &str, method: &str, status: Option<&Status>, took: Duration) {
        let code = status.map_or("Ok".to_string(), |s| format!("{:?}", s.code()));
        let values = [service, method, code.as_str()];
        self.requests.with_label_values(&values).inc();
        self.duration_ms
            .with_label_values(&values)
            .observe(took.as_secs_f64() * 1e3);
        if took >= self.slow {
            warn!(service, method, status = %code, ms = took.as_secs_f64() * 1e3, "slow gRPC request");
        }
    }
}
