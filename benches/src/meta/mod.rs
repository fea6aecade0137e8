//! `tidemq-bench meta create-session`: loads on a TideMQ meta service over
//! gRPC, through [`MetaClient`](tidemq_meta::MetaClient) as a broker uses it.
//!
//! | module | what it holds |
//! |---|---|
//! | [`args`] | the flags |
//! | [`create_session`] | `create-session`: workers creating sessions, closed loop or at a `--rate` |
//! | [`failover`] | `failover`: time without a leader after a 3-process cluster's leader is killed |
//! | [`stats`] | sessions and errors by kind on top of the shared [`Recorder`](crate::recorder::Recorder) |
//!
//! ```text
//! tidemq-bench meta create-session --host 127.0.0.1 --port 1228 \
//!     --count 1000000 --concurrency 3000 --timeout-ms 3000 --output table
//! ```
//!
//! prints a line per second and a final report. The shape, from the unit
//! test's one-second run (debug build, 4 workers, in-process node; not a
//! measurement):
//!
//! ```text
//! sec=1 | ops/s=732 | total=733 | errors=0 | timeouts=0 | p50=4.85ms p95=10.53ms p99=14.92ms
//! total:   sessions=737 requests=737 errors=0 timeouts=0 in 1.00s (keys bench/bench-c-N)
//! ops/s:   avg=735 peak=735   requests/s: avg=735
//! latency: p50=4.85ms p95=10.53ms p99=14.92ms p99.9=15.62ms max=15.62ms
//! ```
//!
//! `ops/s` counts sessions created, latencies are per call (`--batch`
//! sessions each; with `--batch` above 1 the line shows `req/s` too); with
//! `--rate`, from when the call was due.
//! `--output json` prints the same as one JSON object per line, the last
//! holding the run's parameters under `load` and the figures under
//! `report`. Ctrl-C stops handing out work and prints the report of what
//! was done.

pub mod args;
pub mod create_session;
pub mod failover;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use self::args::CreateSessionArgs;
pub use self::failover::{FailoverArgs, FailoverReport};
pub use self::stats::{CreateSessionReport, Tick};
use crate::storage::Output;

/// The meta service loads.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MetaCommand {
    /// Create sessions with `--concurrency` workers, as fast as they can
    /// (closed loop) or at `--rate` sessions per second (open loop).
    CreateSession(CreateSessionArgs),
    /// Kill the leader of a 3-process `tidemq-meta` cluster, round after
    /// round, and time how long it is without a leader.
    Failover(FailoverArgs),
}

/// Runs one load and prints its final report.
pub async fn run(command: &MetaCommand) -> anyhow::Result<()> {
    match command {
        MetaCommand::CreateSession(args) => {
            let stop = Arc::new(AtomicBool::new(false));
            let ctrl_c = {
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        stop.store(true, Ordering::Relaxed);
                    }
                })
            };
            let report = create_session::create_session(args, stop).await;
            ctrl_c.abort();
            let report = report?;
            match args.output {
                Output::Table => println!("{report}"),
                Output::Json => {
                    let load = serde_json::json!({
                        "load": "meta create-session",
                        "addr": args.addr(),
                        "count": args.count_limit(),
                        "duration_secs": args.duration_secs,
                        "concurrency": args.concurrency,
                        "batch": args.batch,
                        "rate": args.rate,
                        "coalesce": args.batch == 1 && !args.no_coalesce,
                        "clients": args.clients,
                        "timeout_ms": args.timeout_ms,
                        "payload_size": args.payload_size,
                    });
                    println!("{}", serde_json::json!({ "load": load, "report": report }));
                }
            }
        }
        MetaCommand::Failover(args) => {
            let report = failover::failover(args).await?;
            match args.output {
                Output::Table => println!("{report}"),
                Output::Json => {
                    let load = serde_json::json!({
                        "load": "meta failover",
                        "rounds": args.rounds,
                        "data_groups": args.data_groups,
                        "heartbeat_ms": args.heartbeat_ms,
                        "election_timeout_ms": args.election_timeout_ms,
                        "writers": args.writers,
                    });
                    println!("{}", serde_json::json!({ "load": load, "report": report }));
                }
            }
        }
    }
    Ok(())
}

/// Prints the first few errors of a run on stderr; a thousand identical
/// lines would hide the report.
fn note_error(what: &str, error: &dyn std::fmt::Display) {
    static SHOWN: AtomicU64 = AtomicU64::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("{what}: {error}");
    }
}

#[cfg(test)]
mod tests;
