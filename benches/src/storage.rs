//! `tidemq-bench storage append`: producers appending to an embedded engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tidemq_storage_engine::{StorageEngine, SyncPolicy};

use crate::recorder::{FinalReport, Recorder};

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

/// Runs the load, printing a line per second, and returns the final report.
pub async fn append(args: &AppendArgs) -> anyhow::Result<FinalReport> {
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
        let output = args.output;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            interval.tick().await;
            loop {
                interval.tick().await;
                let tick = recorder.tick();
                match output {
                    Output::Table => println!("{tick}"),
                    Output::Json => {
                        println!("{}", serde_json::to_string(&tick).unwrap_or_default())
                    }
                }
            }
        })
    };
    for p in producers {
        p.await?;
    }
    ticker.abort();
    engine.close().await?;
    Ok(recorder.report())
}
