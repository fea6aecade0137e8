//! A/B test of storage paths: the same load through `tokio::fs`,
//! `spawn_blocking` + `std::fs`, and the io_uring `FileWriteExecutor`, printed
//! side by side.
//!
//! ```text
//! cargo run --release -p tidemq-examples --example storage_ab -- \
//!     --sync always --partitions 32 --producers 32 --payload 1024 --seconds 10
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tidemq_examples::load::{self, LoadReport, LoadSpec};
use tidemq_examples::paths::{Executor, SpawnBlocking, TokioFs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Sync {
    /// fdatasync before every acknowledgement.
    Always,
    /// No fdatasync on the write path.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Path {
    Tokio,
    Blocking,
    Executor,
}

#[derive(Debug, Parser)]
#[command(about = "Runs one load through each storage path and prints one table")]
struct Args {
    /// Partition files (producer i writes to partition i % partitions).
    #[arg(long, default_value_t = 32)]
    partitions: usize,
    /// Concurrent producer tasks.
    #[arg(long, default_value_t = 32)]
    producers: usize,
    /// Bytes per record.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Seconds per path.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Sync policy.
    #[arg(long, value_enum, default_value_t = Sync::Always)]
    sync: Sync,
    /// Paths to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Path::Tokio, Path::Blocking, Path::Executor])]
    paths: Vec<Path>,
    /// I/O threads of the executor (default: number of cores).
    #[arg(long)]
    io_threads: Option<usize>,
    /// Commit rounds per file whose fdatasync may overlap (executor path).
    #[arg(long, default_value_t = 4)]
    inflight_syncs: usize,
    /// Directory for the files (a fresh temporary directory inside it is used).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.partitions > 0 && args.producers > 0,
        "partitions and producers must be above zero"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let reports = runtime.block_on(run(&args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print_table(&args, &reports);
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Vec<LoadReport>> {
    let spec = LoadSpec {
        partitions: args.partitions,
        producers: args.producers,
        payload: args.payload,
        duration: Duration::from_secs(args.seconds),
    };
    let sync = args.sync == Sync::Always;
    let threads = args
        .io_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut reports = Vec::new();
    for path in &args.paths {
        let dir = tempfile::tempdir_in(&args.dir).context("creating a scratch directory")?;
        let report = match path {
            Path::Tokio => {
                load::run(
                    Arc::new(TokioFs::open(dir.path(), spec.partitions, sync)?),
                    spec,
                )
                .await
            }
            Path::Blocking => {
                load::run(
                    Arc::new(SpawnBlocking::open(dir.path(), spec.partitions, sync)?),
                    spec,
                )
                .await
            }
            Path::Executor => {
                let executor = Arc::new(
                    Executor::open(
                        dir.path(),
                        spec.partitions,
                        sync,
                        threads,
                        args.inflight_syncs,
                    )
                    .await?,
                );
                let report = load::run(Arc::clone(&executor), spec).await;
                executor.shutdown().await?;
                report
            }
        };
        reports.push(report);
    }
    Ok(reports)
}

fn print_table(args: &Args, reports: &[LoadReport]) {
    println!(
        "storage_ab: sync={:?} partitions={} producers={} payload={}B seconds={}",
        args.sync, args.partitions, args.producers, args.payload, args.seconds
    );
    println!(
        "{:<28} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}",
        "path", "ops/s", "MB/s", "p50us", "p95us", "p99us", "p999us", "p9999us", "errors"
    );
    for r in reports {
        let l = r.latency_us;
        println!(
            "{:<28} {:>10.0} {:>9.2} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}",
            r.path, r.ops_per_sec, r.mb_per_sec, l.p50, l.p95, l.p99, l.p999, l.p9999, r.errors
        );
    }
    if let [base, .., last] = reports {
        println!(
            "{} vs {}: throughput x{:.2}, p9999 x{:.2}",
            last.path,
            base.path,
            last.ops_per_sec / base.ops_per_sec.max(f64::MIN_POSITIVE),
            last.latency_us.p9999 as f64 / (base.latency_us.p9999.max(1)) as f64
        );
    }
}
