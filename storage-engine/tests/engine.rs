//! End-to-end behaviour of the storage engine on real files.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{payload, segment_files, small_engine};
use tidemq_storage_engine::{Retention, StorageEngine, StorageError, SyncPolicy};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_keep_per_partition_order() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let engine = small_engine(tmp.path()).open().await?;
    for p in 0..4 {
        engine.create_partition(p).await?;
    }
    // 32 tasks, 8 per partition, each appending its own numbered sequence.
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let partition = task % 4;
            let mut offsets = Vec::new();
            for seq in 0..100u64 {
                let record = format!("{task}:{seq}");
                let r = engine.append(partition, &[record.as_bytes()]).await?;
                offsets.push(r.first_offset);
            }
            Ok::<_, StorageError>((task, offsets))
        }));
    }
    let mut acked: HashMap<u64, Vec<u64>> = HashMap::new();
    for t in tasks {
        let (task, offsets) = t.await??;
        // A task's own appends were acknowledged with increasing offsets.
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "task {task}");
        acked.insert(task, offsets);
    }
    for p in 0..4u64 {
        let mut records = Vec::new();
        let mut from = 0;
        loop {
            let batch = engine.read(p, from, 4096).await?;
            let Some(last) = batch.last() else { break };
            from = last.offset + 1;
            records.extend(batch);
        }
        assert_eq!(records.len(), 800, "partition {p}");
        // Offsets are dense and each task's sequence appears in order.
        let mut next_seq: HashMap<u64, u64> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as u64);
            let text = std::str::from_utf8(&r.payload)?;
            let (task, seq) = text
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("bad payload"))?;
            let (task, seq): (u64, u64) = (task.parse()?, seq.parse()?);
            assert_eq!(task % 4, p);
            assert_eq!(acked[&task][seq as usize], r.offset);
            let expected = next_seq.entry(task).or_default();
            assert_eq!(seq, *expected);
            *expected += 1;
        }
    }
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn reads_cross_segments_and_use_the_index() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let engine = small_engine(tmp.path()).open().await?;
    engine.create_partition(9).await?;
    for offset in 0..2000 {
        engine.append(9, &[payload(9, offset)]).await?;
    }
    let info = engine.partition_info(9)?;
    assert!(info.segments > 5, "segments rolled: {}", info.segments);
    assert_eq!(segment_files(tmp.path(), 9).len(), info.segments);
    assert_eq!((info.log_start, info.next_offset), (0, 2000));

    // Random starting points, including the first record of each segment.
    for from in [0, 1, 137, 999, 1000, 1500, 1998, 1999] {
        let records = engine.read(9, from, 64 * 1024).await?;
        assert_eq!(records[0].offset, from);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, from + i as u64);
            assert_eq!(r.payload.as_ref(), payload(9, r.offset).as_slice());
        }
    }
    // A read that spans a segment boundary returns both sides.
    let files = segment_files(tmp.path(), 9);
    let second_base: u64 = files[1]
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| anyhow::anyhow!("segment name"))?
        .parse()?;
    let across = engine.read(9, second_base - 2, 2000).await?;
    assert!(across.len() >= 4);
    assert_eq!(across[0].offset, second_base - 2);
    assert_eq!(across[3].offset, second_base + 1);

    assert!(engine.read(9, 2000, 1024).await?.is_empty());
    // max_bytes is honoured but at least one record is returned.
    assert_eq!(engine.read(9, 5, 1).await?.len(), 1);
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn offset_for_time_finds_the_first_record_at_or_after() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let engine = small_engine(tmp.path()).open().await?;
    engine.create_partition(1).await?;
    let mut stamps = Vec::new();
    for round in 0..4u64 {
        for i in 0..300 {
            let r = engine.append(1, &[payload(1, round * 300 + i)]).await?;
            stamps.push(r.timestamp_ms);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]));
    for probe in [600usize, 900, 301] {
        let ts = stamps[probe];
        let expected = stamps.iter().position(|&s| s >= ts).map(|p| p as u64);
        assert_eq!(engine.offset_for_time(1, ts).await?, expected);
    }
    assert_eq!(engine.offset_for_time(1, i64::MIN).await?, Some(0));
    assert_eq!(engine.offset_for_time(1, stamps[1199] + 1).await?, None);
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn reopen_after_clean_shutdown_keeps_everything() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let engine = small_engine(tmp.path()).open().await?;
    for p in [3, 70] {
        engine.create_partition(p).await?;
        for offset in 0..500 {
            engine.append(p, &[payload(p, offset)]).await?;
        }
    }
    engine.close().await?;
    assert!(matches!(
        engine.append(3, &[b"late"]).await,
        Err(StorageError::Closed)
    ));

    let engine = small_engine(tmp.path()).open().await?;
    assert_eq!(engine.partitions(), vec![3, 70]);
    let report = engine.recovery_report();
    assert_eq!((report.partitions, report.records), (2, 1000));
    assert_eq!(
        (report.truncated_segments, report.quarantined.len()),
        (0, 0)
    );
    for p in [3, 70] {
        assert_eq!(engine.partition_info(p)?.next_offset, 500);
        let r = engine.append(p, &[payload(p, 500)]).await?;
        assert_eq!(r.first_offset, 500);
        let back = engine.read(p, 490, 1 << 20).await?;
        assert_eq!(back.len(), 11);
        for r in back {
            assert_eq!(r.payload.as_ref(), payload(p, r.offset).as_slice());
        }
    }
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn size_retention_removes_oldest_segments() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let engine = small_engine(tmp.path()).open().await?;
    let retention = Retention {
        max_bytes: Some(200 * 1024),
        max_age: None,
    };
    engine.create_partition_with(5, retention).await?;
    for offset in 0..3000 {
        engine.append(5, &[payload(5, offset)]).await?;
    }
    let info = engine.partition_info(5)?;
    assert!(
        info.size_bytes <= 200 * 1024 + 64 * 1024,
        "size {}",
        info.size_bytes
    );
    assert!(info.log_start > 0);
    assert_eq!(segment_files(tmp.path(), 5).len(), info.segments);
    let err = engine.read(5, 0, 100).await.err();
    assert!(
        matches!(err, Some(StorageError::OffsetOutOfRange { log_start, .. }) if log_start == info.log_start)
    );
    let first = engine.read(5, info.log_start, 100).await?;
    assert_eq!(first[0].offset, info.log_start);
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn trim_removes_only_segments_wholly_below_the_offset() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let engine = small_engine(tmp.path()).open().await?;
    engine.create_partition(6).await?;
    for offset in 0..3000 {
        engine.append(6, &[payload(6, offset)]).await?;
    }
    let before = engine.partition_info(6)?;
    assert!(before.segments > 3, "{before:?}");
    // Nothing below offset 0: nothing goes.
    assert_eq!(engine.trim_before(6, 0).await?, 0);
    engine.trim_before(6, 1500).await?;
    let after = engine.partition_info(6)?;
    assert!(after.log_start > 0 && after.log_start <= 1500, "{after:?}");
    assert_eq!(segment_files(tmp.path(), 6).len(), after.segments);
    // Offset 1500 and everything after it are still readable.
    let records = engine.read(6, 1500, 100).await?;
    assert_eq!(records[0].offset, 1500);
    assert_eq!(records[0].payload, payload(6, 1500));
    // Trimming past the end replaces the segment being written by an
    // empty one: nothing is left on disk, and offsets go on.
    engine.trim_before(6, u64::MAX).await?;
    let last = engine.partition_info(6)?;
    assert_eq!(last.segments, 1);
    assert_eq!((last.log_start, last.next_offset), (3000, 3000));
    assert_eq!(last.size_bytes, 0);
    assert_eq!(segment_files(tmp.path(), 6).len(), 1);
    engine.append(6, &[payload(6, 3000)]).await?;
    engine.close().await?;
    // Reopened, the trimmed log starts where it was trimmed.
    let engine = small_engine(tmp.path()).open().await?;
    assert_eq!(engine.partition_info(6)?.log_start, last.log_start);
    assert_eq!(engine.partition_info(6)?.next_offset, 3001);
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn age_retention_runs_in_the_background() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let engine = small_engine(tmp.path())
        .retention_check_interval(Duration::from_millis(50))
        .open()
        .await?;
    let retention = Retention {
        max_bytes: None,
        max_age: Some(Duration::from_millis(300)),
    };
    engine.create_partition_with(2, retention).await?;
    for offset in 0..1000 {
        engine.append(2, &[payload(2, offset)]).await?;
    }
    let before = engine.partition_info(2)?.segments;
    assert!(before > 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    engine.append(2, &[payload(2, 1000)]).await?;
    // Sealed segments are older than max_age now; the background pass removes them.
    let mut info = engine.partition_info(2)?;
    for _ in 0..100 {
        if info.segments == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        info = engine.partition_info(2)?;
    }
    assert_eq!(info.segments, 1, "only the active segment is left");
    assert_eq!(segment_files(tmp.path(), 2).len(), 1);
    assert_eq!(info.next_offset, 1001);
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn bad_calls_get_clear_errors() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let engine = small_engine(tmp.path()).open().await?;
    assert!(matches!(
        engine.append(42, &[b"x"]).await,
        Err(StorageError::UnknownPartition(42))
    ));
    assert!(matches!(
        engine.read(42, 0, 10).await,
        Err(StorageError::UnknownPartition(42))
    ));
    engine.create_partition(1).await?;
    assert!(matches!(
        engine.create_partition(1).await,
        Err(StorageError::PartitionExists(1))
    ));
    let big = vec![0u8; 16 * 1024 + 1];
    let err = engine.append(1, &[big]).await.err();
    assert!(matches!(
        err,
        Some(StorageError::RecordTooLarge {
            size: 16385,
            max: 16384
        })
    ));
    let none: [&[u8]; 0] = [];
    assert!(matches!(
        engine.append(1, &none).await,
        Err(StorageError::EmptyBatch)
    ));
    // Nothing was written by the failed calls.
    assert_eq!(engine.partition_info(1)?.next_offset, 0);
    let message = StorageError::UnknownPartition(42).to_string();
    assert_eq!(message, "unknown partition 42");
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn delete_partition_removes_its_files() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let engine = small_engine(tmp.path()).open().await?;
    engine.create_partition(8).await?;
    for offset in 0..400 {
        engine.append(8, &[payload(8, offset)]).await?;
    }
    engine.delete_partition(8).await?;
    assert!(!tmp.path().join("partitions/8").exists());
    assert!(matches!(
        engine.append(8, &[b"x"]).await,
        Err(StorageError::UnknownPartition(8))
    ));
    engine.create_partition(8).await?;
    assert_eq!(engine.append(8, &[b"again"]).await?.first_offset, 0);
    engine.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_pending_writes() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    for sync in [
        SyncPolicy::Never,
        SyncPolicy::Interval(Duration::from_secs(3600)),
    ] {
        let dir = tmp.path().join(format!("{sync:?}"));
        let engine = small_engine(&dir).sync_policy(sync).open().await?;
        engine.create_partition(1).await?;
        // Appends race with close: each either completes before the I/O
        // thread stops (and must then be on disk) or fails with `Closed`.
        let tasks: Vec<_> = (0..400u64)
            .map(|i| {
                let engine = engine.clone();
                tokio::spawn(async move { engine.append(1, &[payload(1, i)]).await })
            })
            .collect();
        // Close once some appends are through (the rest race with it).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while engine.partition_info(1)?.next_offset == 0 {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "no append went through"
            );
            tokio::task::yield_now().await;
        }
        engine.close().await?;
        let mut acked = Vec::new();
        for t in tasks {
            match t.await? {
                Ok(r) => acked.push(r.first_offset),
                Err(StorageError::Closed) => {}
                Err(e) => return Err(e.into()),
            }
        }
        assert!(
            !acked.is_empty(),
            "{sync:?}: some appends were queued before close"
        );
        let engine = small_engine(&dir).open().await?;
        let info = engine.partition_info(1)?;
        assert_eq!(info.next_offset, acked.len() as u64, "{sync:?}");
        let records = engine.read(1, 0, 1 << 20).await?;
        assert_eq!(records.len(), acked.len());
        engine.close().await?;
    }
    Ok(())
}

#[tokio::test]
async fn metrics_are_exported() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let registry = prometheus::Registry::new();
    let engine = StorageEngine::builder(tmp.path())
        .io_threads(1)
        .registry(registry.clone())
        .open()
        .await?;
    engine.create_partition(1).await?;
    engine.append(1, &[b"abc".as_slice(), b"de"]).await?;
    let families = registry.gather();
    let value = |name: &str| {
        families
            .iter()
            .find(|f| f.name() == name)
            .map(|f| f.get_metric()[0].get_counter().get_value())
    };
    assert_eq!(value("tidemq_storage_appended_records_total"), Some(2.0));
    assert_eq!(value("tidemq_storage_appended_bytes_total"), Some(5.0));
    let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
    for expected in [
        "tidemq_storage_append_duration_seconds",
        "tidemq_storage_commit_batch_requests",
        "tidemq_storage_fsync_duration_seconds",
        "tidemq_storage_queue_depth",
        "tidemq_storage_io_driver",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn every_new_segment_is_synced_into_its_directory() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let registry = prometheus::Registry::new();
    let engine = small_engine(tmp.path())
        .registry(registry.clone())
        .open()
        .await?;
    let dir_syncs = || common::counter(&registry, "tidemq_storage_dir_syncs_total");
    engine.create_partition(3).await?;
    let first = dir_syncs();
    assert!(first >= 1.0, "the partition's first segment");
    for offset in 0..2_000 {
        engine.append(3, &[payload(3, offset)]).await?;
    }
    let segments = engine.partition_info(3)?.segments as f64;
    assert!(segments > 3.0);
    assert!(
        dir_syncs() >= first + segments - 1.0,
        "one directory sync per rolled segment: {} for {segments} segments",
        dir_syncs()
    );
    engine.close().await?;
    Ok(())
}
