//! `tidemq-bench storage append`: producers appending to an embedded engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tidemq_storage_engine::{StorageEngine, SyncPolicy};

use crate::recorder::{FinalReport, Recorder, spawn_ticker};

/// Sync policy names on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncArg {
    /// `SyncPolicy::Always`.
    Always,
    /// `SyncPolicy::Interval` of `--sync-interval-ms`.
    Interval,
    /// `SyncPolicy::Never`.
    Never,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable lines.
    Table,
    /// One JSON object per line.
    Json,
}

/// Flags of `tidemq-bench storage append`.
#[derive(Debug, Clone, Args)]
pub struct AppendArgs {
    /// Data directory (a fresh temporary directory inside it is used and removed).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Partitions written to; producer i writes to partition i % partitions.
    #[arg(long, default_value_t = 32)]
    pub partitions: u64,
    /// Concurrent producer tasks.
    #[arg(long, default_value_t = 32)]
    pub producers: u64,
    /// Bytes per record.
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// Records per append call.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Sync policy.
    #[arg(long, value_enum, default_value_t = SyncArg::Always)]
    pub sync: SyncArg,
    /// Interval for `--sync interval`.
    #[arg(long, default_value_t = 10)]
    pub sync_interval_ms: u64,
    /// I/O threads (default: number of cores).
    #[arg(long)]
    pub io_threads: Option<usize>,
    /// Pin I/O threads to cores.
    #[arg(long)]
    pub pin_cores: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// What the engine's own metrics say about a run's group commit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitStats {
    /// Commit rounds (one vectored write, and with sync on one fdatasync, each).
    pub rounds: u64,
    /// Append requests answered per round, on average.
    pub requests_per_round: f64,
    /// fdatasync calls.
    pub fsyncs: u64,
    /// Mean fdatasync duration (µs).
    pub fsync_avg_us: f64,
}

impl std::fmt::Display for CommitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "commit:  rounds={} requests/round={:.1} fsyncs={} fsync_avg={:.0}us",
            self.rounds, self.requests_per_round, self.fsyncs, self.fsync_avg_us
        )
    }
}

fn commit_stats(registry: &prometheus::Registry) -> CommitStats {
    let histogram = |name: &str| {
        registry
            .gather()
            .into_iter()
            .find(|family| family.name() == name)
            .and_then(|family| family.get_metric().first().cloned())
            .map(|metric| {
                let h = metric.get_histogram();
                (h.get_sample_count(), h.get_sample_sum())
            })
            .unwrap_or_default()
    };
    let (rounds, requests) = histogram("tidemq_storage_commit_batch_requests");
    let (fsyncs, fsync_seconds) = histogram("tidemq_storage_fsync_duration_seconds");
    CommitStats {
        rounds,
        requests_per_round: requests / rounds.max(1) as f64,
        fsyncs,
        fsync_avg_us: fsync_seconds * 1e6 / fsyncs.max(1) as f64,
    }
}

/// Runs the load, printing a line per second, and returns the final report.
pub async fn append(args: &AppendArgs) -> anyhow::Result<(FinalReport, CommitStats)> {
    anyhow::ensure!(
        args.partitions > 0 && args.producers > 0 && args.batch > 0,
        "partitions, producers and batch must be above zero"
    );
    let scratch = tempfile::tempdir_in(&args.dir)?;
    let sync = match args.sync {
        SyncArg::Always => SyncPolicy::Always,
        SyncArg::Interval => SyncPolicy::Interval(Duration::from_millis(args.sync_interval_ms)),
        SyncArg::Never => SyncPolicy::Never,
    };
    let mut builder = StorageEngine::builder(scratch.path())
        .sync_policy(sync)
        .pin_cores(args.pin_cores)
        .max_record_bytes(args.payload.max(1024));
    if let Some(threads) = args.io_threads {
        builder = builder.io_threads(threads);
    }
    let engine = builder.open().await?;
    for p in 0..args.partitions {
        engine.create_partition(p).await?;
    }

    let recorder = Arc::new(Recorder::new((args.payload * args.batch) as u64));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let records: Arc<Vec<Vec<u8>>> = Arc::new(vec![vec![0xA5; args.payload]; args.batch]);
    let producers: Vec<_> = (0..args.producers)
        .map(|i| {
            let (engine, recorder, records) =
                (engine.clone(), Arc::clone(&recorder), Arc::clone(&records));
            let partition = i % args.partitions;
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let started = Instant::now();
                    match engine.append(partition, &records).await {
                        Ok(_) => recorder.success(started.elapsed()),
                        Err(_) => recorder.failure(),
                    }
                }
            })
        })
        .collect();

    let ticker = {
        let recorder = Arc::clone(&recorder);
        spawn_ticker(args.output, move || recorder.tick())
    };
    for p in producers {
        p.await?;
    }
    ticker.abort();
    let report = recorder.report();
    engine.close().await?;
    Ok((report, commit_stats(engine.registry())))
}
