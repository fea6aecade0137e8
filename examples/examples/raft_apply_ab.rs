//! A/B/C test of the meta service's Raft apply path: the same apply load with
//! RocksDB called inline on the tokio worker, through `spawn_blocking`, and
//! through the `RocksPool` (`meta-rocksdb-{i}` threads), printed side by side.
//!
//! ```text
//! cargo build --release --workspace --examples
//! $CARGO_TARGET_DIR/release/examples/raft_apply_ab \
//!     --seconds 10 --concurrency 64 --batch 64 --workers 2 --pool-threads 2
//! ```
//!
//! Each apply is one unsynced `WriteBatch` of `--batch` session records
//! (JSON, about 150 bytes each, keys `s/{tenant}/{client_id}`) plus
//! `!applied` and `!membership`, as `meta/src/store/apply.rs` writes it, into
//! a `g1_sm` column family of a fresh RocksDB per mode. `--concurrency` tasks
//! apply one batch after another on a runtime of `--workers` workers for
//! `--seconds` each mode.
//!
//! Reading the table:
//!
//! - **applies/s, records/s**: throughput of the mode.
//! - **apply p50..max**: from "task ready for its next apply" to "batch
//!   written", so waiting for a free worker (inline), blocking thread or
//!   pool thread counts, not only the RocksDB call.
//! - **probe p50..max**: a thread sends a timestamp every millisecond to a
//!   task on the same runtime, which records how long each one waited. It
//!   stands in for Raft heartbeats and gRPC handlers: this is what blocking
//!   the workers costs everything else on the node.
//! - **x/pool** columns: the mode's figure divided by the pool's. Above 1 is
//!   more throughput, or more latency, than the pool.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tidemq_examples::raft_apply::{self, ApplyMode, ApplyReport, ApplySpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// RocksDB on the tokio worker running the apply.
    Inline,
    /// RocksDB in `tokio::task::spawn_blocking`.
    Blocking,
    /// RocksDB on the `RocksPool` threads.
    Pool,
}

impl From<Mode> for ApplyMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Inline => ApplyMode::Inline,
            Mode::Blocking => ApplyMode::SpawnBlocking,
            Mode::Pool => ApplyMode::Pool,
        }
    }
}

#[derive(Debug, Parser)]
#[command(about = "Runs one Raft apply load per way of reaching RocksDB and prints one table")]
struct Args {
    /// Seconds per mode.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent apply tasks.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Session records per apply (one WriteBatch).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// RocksPool threads (pool mode).
    #[arg(long, default_value_t = 2)]
    pool_threads: usize,
    /// RocksPool queue depth (pool mode).
    #[arg(long, default_value_t = 1024)]
    pool_queue: usize,
    /// Distinct sessions; later records overwrite earlier ones.
    #[arg(long, default_value_t = 1_000_000)]
    sessions: u64,
    /// Microseconds between probe messages.
    #[arg(long, default_value_t = 1000)]
    probe_interval_us: u64,
    /// Modes to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Mode::Inline, Mode::Blocking, Mode::Pool])]
    modes: Vec<Mode>,
    /// Directory for the databases (a fresh temporary directory inside it per
    /// mode; default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.workers > 0 && args.concurrency > 0 && args.batch > 0 && args.sessions > 0,
        "workers, concurrency, batch and sessions must be above zero"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()?;
    let reports = runtime.block_on(run(&args))?;
    print_table(&args, &reports);
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Vec<ApplyReport>> {
    let spec = ApplySpec {
        concurrency: args.concurrency,
        batch: args.batch,
        duration: Duration::from_secs(args.seconds),
        pool_threads: args.pool_threads,
        pool_queue: args.pool_queue,
        sessions: args.sessions,
        probe_interval: Duration::from_micros(args.probe_interval_us.max(1)),
    };
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut reports = Vec::new();
    for &mode in &args.modes {
        let mode = ApplyMode::from(mode);
        let dir = tempfile::tempdir_in(&base)
            .with_context(|| format!("creating a scratch directory in {}", base.display()))?;
        eprintln!(
            "{}: {} s in {}",
            mode.name(),
            args.seconds,
            dir.path().display()
        );
        let report = raft_apply::run_mode(dir.path(), mode, spec)
            .await
            .with_context(|| format!("mode {}", mode.name()))?;
        reports.push(report);
    }
    Ok(reports)
}

/// One row of the table: a label and how to read the figure of a report.
type Row = (&'static str, fn(&ApplyReport) -> f64);

const ROWS: [Row; 11] = [
    ("applies/s", |r| r.applies_per_sec),
    ("records/s", |r| r.records_per_sec),
    ("apply p50 µs", |r| r.apply_us.p50 as f64),
    ("apply p99 µs", |r| r.apply_us.p99 as f64),
    ("apply p99.9 µs", |r| r.apply_us.p999 as f64),
    ("apply max µs", |r| r.apply_us.max as f64),
    ("probe p50 µs", |r| r.probe_us.p50 as f64),
    ("probe p99 µs", |r| r.probe_us.p99 as f64),
    ("probe p99.9 µs", |r| r.probe_us.p999 as f64),
    ("probe max µs", |r| r.probe_us.max as f64),
    ("probes", |r| r.probes as f64),
];

fn print_table(args: &Args, reports: &[ApplyReport]) {
    println!(
        "raft_apply_ab: workers={} concurrency={} batch={} value={}B sessions={} pool_threads={} seconds={}",
        args.workers,
        args.concurrency,
        args.batch,
        raft_apply::session_value_len(),
        args.sessions,
        args.pool_threads,
        args.seconds
    );
    let pool = reports.iter().find(|r| r.mode == ApplyMode::Pool);
    let others: Vec<&ApplyReport> = match pool {
        Some(_) => reports
            .iter()
            .filter(|r| r.mode != ApplyMode::Pool)
            .collect(),
        None => Vec::new(),
    };

    let mut header = format!("| {:<15} |", "");
    for r in reports {
        header.push_str(&format!(" {:>14} |", r.mode.name()));
    }
    for r in &others {
        header.push_str(&format!(" {:>20} |", format!("{}/pool", r.mode.name())));
    }
    println!("{header}");
    let columns = reports.len() + others.len();
    let mut rule = format!("|{}|", "-".repeat(17));
    for i in 0..columns {
        let width = if i < reports.len() { 16 } else { 22 };
        rule.push_str(&format!("{}:|", "-".repeat(width - 1)));
    }
    println!("{rule}");

    for (label, value) in ROWS {
        let mut line = format!("| {label:<15} |");
        for r in reports {
            line.push_str(&format!(" {:>14} |", thousands(value(r))));
        }
        for r in &others {
            let ratio = match pool.map(value) {
                Some(base) if base > 0.0 => format!("x{:.2}", value(r) / base),
                _ => "-".to_string(),
            };
            line.push_str(&format!(" {ratio:>20} |"));
        }
        println!("{line}");
    }
}

/// `1234567.8` as `1,234,568`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
