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
use tidemq_examples::paths::{Executor, ExecutorOptions, SpawnBlocking, TokioFs};

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
    /// Bytes of zeros the executor keeps written past each file's end
    /// (executor path; 0 = off). The default is the storage engine's.
    #[arg(long, default_value_t = 256 * 1024)]
    preallocate: u64,
    /// Queued bytes that start a commit round while another round's sync
    /// is in flight (executor path; the executor's default).
    #[arg(long, default_value_t = 64 * 1024)]
    overlap_bytes: u64,
    /// Directory for the files (a fresh temporary directory inside it is used).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Rounds over the paths. Every other round runs them in reverse order,
    /// so that a disk whose speed drifts slows every path alike; with more
    /// than one, a summary gives each path's medians and the median of the
    /// per-round ratios of the last path to the first.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One path's run in one round.
#[derive(serde::Serialize)]
struct RoundReport {
    round: usize,
    #[serde(skip)]
    kind: Path,
    #[serde(flatten)]
    report: LoadReport,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.partitions > 0 && args.producers > 0 && args.rounds > 0,
        "partitions, producers and rounds must be above zero"
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

async fn run(args: &Args) -> anyhow::Result<Vec<RoundReport>> {
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
    for round in 1..=args.rounds {
        let mut order: Vec<Path> = args.paths.clone();
        if round % 2 == 0 {
            order.reverse();
        }
        for path in order {
            let report = run_path(args, path, spec, sync, threads).await?;
            reports.push(RoundReport {
                round,
                kind: path,
                report,
            });
        }
    }
    Ok(reports)
}

/// One run of the load through `path`, in a scratch directory of its own.
async fn run_path(
    args: &Args,
    path: Path,
    spec: LoadSpec,
    sync: bool,
    threads: usize,
) -> anyhow::Result<LoadReport> {
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
                    ExecutorOptions {
                        threads,
                        inflight_syncs: args.inflight_syncs,
                        preallocate: args.preallocate,
                        overlap_bytes: args.overlap_bytes,
                    },
                )
                .await?,
            );
            let report = load::run(Arc::clone(&executor), spec).await;
            executor.shutdown().await?;
            report
        }
    };
    Ok(report)
}

fn print_table(args: &Args, reports: &[RoundReport]) {
    println!(
        "storage_ab: sync={:?} partitions={} producers={} payload={}B seconds={} rounds={}",
        args.sync, args.partitions, args.producers, args.payload, args.seconds, args.rounds
    );
    println!(
        "{:>5} {:<28} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}",
        "round", "path", "ops/s", "MB/s", "p50us", "p95us", "p99us", "p999us", "p9999us", "errors"
    );
    for RoundReport {
        round, report: r, ..
    } in reports
    {
        let l = r.latency_us;
        println!(
            "{:>5} {:<28} {:>10.0} {:>9.2} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}",
            round,
            r.path,
            r.ops_per_sec,
            r.mb_per_sec,
            l.p50,
            l.p95,
            l.p99,
            l.p999,
            l.p9999,
            r.errors
        );
    }
    let (Some(first), Some(last)) = (args.paths.first(), args.paths.last()) else {
        return;
    };
    let of = |path: Path| -> Vec<&LoadReport> {
        reports
            .iter()
            .filter(|r| r.kind == path)
            .map(|r| &r.report)
            .collect()
    };
    let (base, tried) = (of(*first), of(*last));
    if args.rounds > 1 {
        println!("medians over {} rounds:", args.rounds);
        for path in &args.paths {
            let runs = of(*path);
            println!(
                "{:<28} ops/s {:>10.0}  p99us {:>8.0}  p9999us {:>9.0}",
                runs.first().map_or("?", |r| r.path.as_str()),
                median(runs.iter().map(|r| r.ops_per_sec)),
                median(runs.iter().map(|r| r.latency_us.p99 as f64)),
                median(runs.iter().map(|r| r.latency_us.p9999 as f64)),
            );
        }
    }
    if let (Some(b), Some(t)) = (base.first(), tried.first()) {
        let pairs = || base.iter().zip(&tried);
        println!(
            "{} vs {} (median of per-round ratios): throughput x{:.2}, p9999 x{:.2}",
            t.path,
            b.path,
            median(pairs().map(|(b, t)| t.ops_per_sec / b.ops_per_sec.max(f64::MIN_POSITIVE))),
            median(
                pairs().map(|(b, t)| t.latency_us.p9999 as f64 / b.latency_us.p9999.max(1) as f64)
            ),
        );
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}
