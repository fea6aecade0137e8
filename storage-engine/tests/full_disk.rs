//! A full disk: appends fail with the I/O error and then fast, nothing that
//! was acknowledged is lost, reads keep working, and once space is freed
//! the partition takes appends again without reopening the engine.

mod common;

use std::time::Duration;

use common::{SmallDisk, payload, small_engine};
use tidemq_storage_engine::{StorageEngine, StorageError};

/// Appends one record per call until an append fails; returns the offsets
/// acknowledged and the error.
async fn append_until_full(
    engine: &StorageEngine,
    from: u64,
) -> anyhow::Result<(Vec<u64>, StorageError)> {
    let mut acked = Vec::new();
    for offset in from..from + 100_000 {
        match engine.append(0, &[payload(0, offset)]).await {
            Ok(r) => {
                anyhow::ensure!(r.first_offset == offset, "offsets continue without a gap");
                acked.push(r.first_offset);
            }
            Err(e) => return Ok((acked, e)),
        }
    }
    anyhow::bail!("the small disk never filled")
}

async fn read_all(engine: &StorageEngine) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let batch = engine.read(0, next, 64 * 1024).await?;
        let Some(last) = batch.last() else {
            return Ok(out);
        };
        next = last.offset + 1;
        out.extend(batch.into_iter().map(|r| (r.offset, r.payload.to_vec())));
    }
}

fn is_out_of_space(e: &StorageError) -> bool {
    match e {
        StorageError::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_appends_and_recovers_when_space_is_freed() -> anyhow::Result<()> {
    let Some(disk) = SmallDisk::mount(1024 * 1024)? else {
        return Ok(());
    };
    let dir = disk.path().join("store");
    let engine = small_engine(&dir)
        .heal_retry(Duration::from_millis(50))
        .open()
        .await?;
    engine.create_partition(0).await?;
    let filler = disk.fill()?;

    // Whatever room is left fills up; the failing append reports the disk.
    let (mut acked, error) = append_until_full(&engine, 0).await?;
    assert!(is_out_of_space(&error), "ENOSPC, got {error}");
    // While the disk is full, appends fail at once and reads still work.
    let again = engine.append(0, &[b"x"]).await;
    assert!(
        matches!(again, Err(StorageError::Poisoned { .. })),
        "poisoned, got {again:?}"
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    let retried = engine.append(0, &[b"x"]).await;
    assert!(retried.is_err(), "the repair finds the disk still full");
    let stored = read_all(&engine).await?;
    assert_eq!(stored.len(), acked.len());

    // Space comes back: after the retry interval the partition heals, and
    // the offsets of the failed records are given out again.
    std::fs::remove_file(&filler)?;
    tokio::time::sleep(Duration::from_millis(80)).await;
    let next = acked.len() as u64;
    for offset in next..next + 200 {
        let r = engine.append(0, &[payload(0, offset)]).await?;
        assert_eq!(r.first_offset, offset);
        acked.push(offset);
    }
    let healed = common::counter(engine.registry(), "tidemq_storage_healed_partitions_total");
    assert!(healed >= 1.0, "the repair is counted");

    // Everything acknowledged is there, in order, intact, and survives a
    // reopen.
    let check = |stored: Vec<(u64, Vec<u8>)>| {
        assert_eq!(stored.len(), acked.len());
        for ((offset, bytes), want) in stored.iter().zip(&acked) {
            assert_eq!(offset, want);
            assert_eq!(bytes, &payload(0, *offset), "record {offset} intact");
        }
    };
    check(read_all(&engine).await?);
    engine.close().await?;
    let engine = small_engine(&dir).open().await?;
    check(read_all(&engine).await?);
    engine.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_opens_on_a_full_disk() -> anyhow::Result<()> {
    let Some(disk) = SmallDisk::mount(512 * 1024)? else {
        return Ok(());
    };
    let dir = disk.path().join("store");
    let engine = small_engine(&dir).open().await?;
    engine.create_partition(0).await?;
    let (acked, _) = append_until_full(&engine, 0).await?;
    drop(engine.close().await);
    let _filler = disk.fill()?;

    let engine = small_engine(&dir).open().await?;
    assert_eq!(read_all(&engine).await?.len(), acked.len());
    assert!(engine.append(0, &[b"x"]).await.is_err(), "still full");
    engine.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_stop_at_the_free_space_floor_and_resume_above_it() -> anyhow::Result<()> {
    let Some(disk) = SmallDisk::mount(4 * 1024 * 1024)? else {
        return Ok(());
    };
    let dir = disk.path().join("store");
    let floor = 1024 * 1024;
    // Preallocated zeros take real space and count against the floor like
    // records do; a small window keeps most of the margin for records.
    let engine = small_engine(&dir)
        .preallocate_bytes(64 * 1024)
        .min_free_bytes(floor)
        .space_check_interval(Duration::from_millis(10))
        .open()
        .await?;
    engine.create_partition(0).await?;
    // Leave about 1.5 MiB free: half a MiB above the floor.
    let filler = disk.fill()?;
    let len = std::fs::metadata(&filler)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)?
        .set_len(len - 3 * floor / 2)?;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let (mut acked, error) = append_until_full(&engine, 0).await?;
    assert!(
        matches!(error, StorageError::DiskFull { min_free, .. } if min_free == floor),
        "stopped at the floor, got {error}"
    );
    let written: usize = acked.iter().map(|&o| payload(0, o).len()).sum();
    assert!(
        (256 * 1024..1024 * 1024).contains(&written),
        "about half a MiB went in before the floor: {written}"
    );
    // Nothing failed on disk: no poison, just the same refusal, fast (for
    // a batch well past the floor's margin: the floor counts bytes
    // appended since the last sample, the filesystem counts pages).
    let big = vec![vec![b'b'; 16 * 1024]; 10];
    let again = engine.append(0, &big).await;
    assert!(
        matches!(again, Err(StorageError::DiskFull { .. })),
        "{again:?}"
    );

    std::fs::remove_file(&filler)?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let next = acked.len() as u64;
    for offset in next..next + 100 {
        assert_eq!(
            engine.append(0, &[payload(0, offset)]).await?.first_offset,
            offset
        );
        acked.push(offset);
    }
    assert_eq!(read_all(&engine).await?.len(), acked.len());
    let refused = common::counter(engine.registry(), "tidemq_storage_disk_full_refusals_total");
    assert!(refused >= 2.0, "refusals are counted: {refused}");
    engine.close().await?;
    Ok(())
}
