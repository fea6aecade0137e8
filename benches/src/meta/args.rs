//! Command-line flags of `tidemq-bench meta create-session`.

use std::time::Duration;

use clap::Args;
use tidemq_meta::grpc::MAX_SESSIONS_PER_REQUEST;

use crate::storage::Output;

/// Sessions created when neither `--count` nor `--duration-secs` is given.
pub const DEFAULT_COUNT: u64 = 100_000;

/// Flags of `tidemq-bench meta create-session`.
#[derive(Debug, Clone, Args)]
pub struct CreateSessionArgs {
    /// Meta service host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Meta service gRPC port.
    #[arg(long, default_value_t = 1228)]
    pub port: u16,
    /// Sessions to create (default 100000 without --duration-secs; with
    /// both, the run stops at whichever comes first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Run for this long instead of up to a count.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration_secs: Option<u64>,
    /// Concurrent workers, each with one request in flight (closed loop).
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
    /// Target sessions per second over all workers (open loop): each
    /// worker starts its next request on a fixed schedule rather than when
    /// the previous answer comes, and a request's latency counts from when
    /// it was due, so a stall shows in the percentiles instead of slowing
    /// the load (no coordinated omission). Without it, each worker sends
    /// its next request as soon as the previous one is answered (closed
    /// loop).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Send each session in a request of its own
    /// (`MetaClient::create_sessions`) instead of through
    /// `MetaClient::put_session`, which coalesces the writes waiting at the
    /// same time into one request (what the broker does on CONNECT). With
    /// `--batch` above 1 requests are never coalesced.
    #[arg(long)]
    pub no_coalesce: bool,
    /// Sessions per CreateSessions request, sent as one explicit batch
    /// (`MetaClient::create_sessions`).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=MAX_SESSIONS_PER_REQUEST as i64))]
    pub batch: u32,
    /// A request unanswered after this long counts as a timeout (milliseconds).
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Tenant of the sessions: keys are `{tenant}/bench-{run_id}-N`, N counting from 0.
    #[arg(long, default_value = "bench")]
    pub tenant: String,
    /// Run id in the keys (default: the start time and process id, in hex),
    /// so repeated runs create new sessions rather than replace old ones.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Independent `MetaClient`s the workers are spread over; each keeps its
    /// own 4 HTTP/2 channels to the service.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Expiry interval of the sessions (seconds).
    #[arg(long, default_value_t = 3600)]
    pub session_expiry_secs: u32,
    /// Bytes of opaque broker state per session.
    #[arg(long, default_value_t = 0)]
    pub payload_size: usize,
    /// Output format: per-second lines and the final report.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl CreateSessionArgs {
    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The session limit: `--count`, or [`DEFAULT_COUNT`] when the run has
    /// no duration either.
    pub fn count_limit(&self) -> Option<u64> {
        match (self.count, self.duration_secs) {
            (None, None) => Some(DEFAULT_COUNT),
            (count, _) => count,
        }
    }

    /// The key of session `n` is this prefix followed by `n`.
    pub fn key_prefix(&self, run_id: &str) -> String {
        format!("{}/bench-{run_id}-", self.tenant)
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.concurrency > 0 && self.clients > 0 && self.timeout_ms > 0,
            "--concurrency, --clients and --timeout-ms must be above zero"
        );
        anyhow::ensure!(
            !self.tenant.is_empty() && !self.tenant.contains('/'),
            "--tenant must be non-empty and hold no '/'"
        );
        Ok(())
    }
}

/// A run id unlikely to repeat: milliseconds since the UNIX epoch and the
/// process id, in hex.
pub fn default_run_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{millis:x}{:x}", std::process::id())
}
