//! Crash durability: a child process appends with `SyncPolicy::Always` and
//! prints every acknowledged offset; the test SIGKILLs it mid-load, reopens
//! the directory and checks that every acknowledged record is intact.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::small_engine;
use tidemq_storage_engine::StorageEngine;

const CHILD_ENV: &str = "TIDEMQ_CRASH_CHILD_DIR";
const PARTITIONS: u64 = 4;

/// The child's body. Runs only when the parent test starts this binary with
/// `CHILD_ENV` set; in a normal test run it returns at once.
#[test]
fn crash_child() -> anyhow::Result<()> {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let engine = small_engine(dir.as_ref()).open().await?;
        for p in 0..PARTITIONS {
            engine.create_partition(p).await?;
        }
        println!("READY");
        let tasks: Vec<_> = (0..16)
            .map(|producer| tokio::spawn(produce(engine.clone(), producer)))
            .collect();
        for t in tasks {
            t.await??;
        }
        Ok(())
    })
}

/// Appends self-describing records forever, printing each acknowledgement.
async fn produce(engine: StorageEngine, producer: u64) -> anyhow::Result<()> {
    let partition = producer % PARTITIONS;
    for seq in 0.. {
        let body = format!("producer={producer};seq={seq};");
        let r = engine.append(partition, &[body.as_bytes()]).await?;
        println!("ACK {partition} {} {body}", r.first_offset);
    }
    Ok(())
}

#[test]
fn acknowledged_records_survive_sigkill() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let reader = std::thread::spawn(move || {
        let mut acked: HashMap<(u64, u64), String> = HashMap::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut parts = line.splitn(4, ' ');
            if parts.next() != Some("ACK") {
                continue;
            }
            let (Some(p), Some(o), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if let (Ok(p), Ok(o)) = (p.parse(), o.parse()) {
                acked.insert((p, o), body.to_string());
            }
        }
        acked
    });
    // Let it run under load, then kill it without warning.
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill()?; // SIGKILL on Unix
    child.wait()?;
    let acked = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    assert!(
        acked.len() > 100,
        "the child acknowledged only {} appends in {:?}",
        acked.len(),
        started.elapsed()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let engine = small_engine(tmp.path()).open().await?;
        let mut found = 0;
        for p in 0..PARTITIONS {
            let mut from = 0;
            loop {
                let batch = engine.read(p, from, 1 << 20).await?;
                let Some(last) = batch.last() else { break };
                from = last.offset + 1;
                for r in batch {
                    // Every readable record is whole and well-formed (the
                    // CRC was checked by `read`); acked ones match exactly.
                    let text = std::str::from_utf8(&r.payload)?;
                    assert!(
                        text.starts_with("producer=") && text.ends_with(';'),
                        "{text}"
                    );
                    if let Some(body) = acked.get(&(p, r.offset)) {
                        assert_eq!(text, body, "partition {p} offset {}", r.offset);
                        found += 1;
                    }
                }
            }
        }
        assert_eq!(found, acked.len(), "every acknowledged record is present");
        engine.close().await?;
        anyhow::Ok(())
    })?;
    // A second reopen of a directory that was already repaired is clean.
    runtime.block_on(async {
        let engine = small_engine(tmp.path()).open().await?;
        assert_eq!(engine.recovery_report().truncated_segments, 0);
        engine.close().await?;
        anyhow::Ok(())
    })?;
    Ok(())
}
