//! Embedding the storage engine in an application: open, append from many
//! tasks, read everything back, close, reopen and verify.
//!
//! ```text
//! cargo run --release -p tidemq-examples --example embed_storage -- --dir ./data/embed
//! ```

use std::path::PathBuf;

use anyhow::ensure;
use clap::Parser;
use tidemq_storage_engine::{StorageEngine, SyncPolicy};
use tracing::info;

#[derive(Debug, Parser)]
#[command(about = "Embeds the TideMQ storage engine and checks what it stored")]
struct Args {
    /// Data directory (created if missing; existing data is recovered and checked).
    #[arg(long, default_value = "./data/embed")]
    dir: PathBuf,
    /// Partitions to write.
    #[arg(long, default_value_t = 8)]
    partitions: u64,
    /// Writer tasks per partition.
    #[arg(long, default_value_t = 4)]
    writers: u64,
    /// Records each writer appends.
    #[arg(long, default_value_t = 1000)]
    records: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();

    // 1. Open: recovery of anything already in the directory happens here.
    let engine = StorageEngine::builder(&args.dir)
        .sync_policy(SyncPolicy::Always)
        .open()
        .await?;
    info!(report = ?engine.recovery_report(), driver = engine.executor().driver().name(), "engine open");
    let mut start = Vec::new();
    for p in 0..args.partitions {
        if !engine.partitions().contains(&p) {
            engine.create_partition(p).await?;
        }
        start.push(engine.partition_info(p)?.next_offset);
    }

    // 2. Append from many tasks at once; each record names its writer and sequence.
    let mut tasks = Vec::new();
    for p in 0..args.partitions {
        for w in 0..args.writers {
            let engine = engine.clone();
            let records = args.records;
            tasks.push(tokio::spawn(async move {
                for seq in 0..records {
                    let body = format!("partition={p} writer={w} seq={seq}");
                    engine.append(p, &[body.as_bytes()]).await?;
                }
                anyhow::Ok(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let written = args.writers * args.records;
    info!(records = written * args.partitions, "appended");

    // 3. Read back what this run wrote and check every writer's order.
    let verify = |engine: StorageEngine, start: Vec<u64>| async move {
        for p in 0..args.partitions {
            let mut next_seq = vec![0u64; args.writers as usize];
            let mut from = start[p as usize];
            let mut count = 0;
            loop {
                let batch = engine.read(p, from, 256 * 1024).await?;
                let Some(last) = batch.last() else { break };
                from = last.offset + 1;
                for record in batch {
                    let text = std::str::from_utf8(&record.payload)?;
                    let fields: Vec<u64> = text
                        .split(' ')
                        .filter_map(|kv| kv.split_once('=').and_then(|(_, v)| v.parse().ok()))
                        .collect();
                    let [part, writer, seq] = fields[..] else {
                        anyhow::bail!("malformed record {text:?}");
                    };
                    ensure!(part == p, "record of partition {part} found in {p}");
                    ensure!(
                        next_seq[writer as usize] == seq,
                        "writer {writer} out of order"
                    );
                    next_seq[writer as usize] += 1;
                    count += 1;
                }
            }
            ensure!(
                count == written,
                "partition {p}: read {count} of {written} records"
            );
        }
        anyhow::Ok(())
    };
    verify(engine.clone(), start.clone()).await?;

    // 4. Close, reopen, and verify again from disk.
    engine.close().await?;
    let engine = StorageEngine::builder(&args.dir).open().await?;
    verify(engine.clone(), start).await?;
    engine.close().await?;
    println!(
        "ok: {} records in {} partitions written, read back, and verified after reopen in {}",
        written * args.partitions,
        args.partitions,
        args.dir.display()
    );
    Ok(())
}
