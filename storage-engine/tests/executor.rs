//! The raw `FileWriteExecutor` API.

mod common;

use std::time::Duration;

use tidemq_storage_engine::{FileWriteExecutor, IoDriver, StorageError, SyncPolicy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_ordered_per_file_and_readable() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let executor = FileWriteExecutor::builder().threads(2).build()?;
    assert_eq!(executor.threads(), 2);
    if cfg!(target_os = "linux") {
        // This machine runs io_uring; a fallback would be reported, not hidden.
        assert!(matches!(
            executor.driver(),
            IoDriver::IoUring | IoDriver::Polling
        ));
    }
    let file = executor.open(3, tmp.path().join("raw.bin")).await?;
    let mut waiting = Vec::new();
    for i in 0..256u32 {
        let executor = executor.clone();
        let file = file.clone();
        // Sent in order from one task, awaited concurrently.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let data = i.to_le_bytes().to_vec();
        let fut = async move { executor.append(&file, data).await };
        tokio::spawn(async move {
            let _ = tx.send(fut.await);
        });
        waiting.push(rx);
        tokio::task::yield_now().await;
    }
    let mut positions = Vec::new();
    for rx in waiting {
        positions.push(rx.await??);
    }
    positions.sort_unstable();
    assert_eq!(positions, (0..256u64).map(|i| i * 4).collect::<Vec<_>>());
    assert_eq!(executor.len(&file).await?, 1024);
    let all = executor.read_at(&file, 0, 1024).await?;
    let mut seen: Vec<u32> = all
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..256).collect::<Vec<_>>());
    // Reading past the end is an error, not a short read.
    assert!(executor.read_at(&file, 1000, 100).await.is_err());
    executor.sync(&file).await?;
    executor.close(&file).await?;
    executor.shutdown().await?;
    assert!(matches!(
        executor.append(&file, vec![1]).await,
        Err(StorageError::Closed)
    ));
    Ok(())
}

#[tokio::test]
async fn write_failure_poisons_the_file() -> anyhow::Result<()> {
    // /dev/full accepts opens and fails every write with ENOSPC.
    if !std::path::Path::new("/dev/full").exists() {
        return Ok(());
    }
    let executor = FileWriteExecutor::builder().threads(1).build()?;
    let file = executor.open(1, "/dev/full").await?;
    let first = executor.append(&file, vec![0; 128]).await;
    match first {
        Err(StorageError::Io { op, source, .. }) => {
            assert_eq!(op, "append");
            assert_eq!(source.raw_os_error().or(Some(28)), Some(28), "{source}");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    let second = executor.append(&file, vec![0; 128]).await;
    assert!(
        matches!(second, Err(StorageError::Poisoned { partition: 1, .. })),
        "{second:?}"
    );
    executor.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn plain_threads_can_block_on_appends() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let executor = FileWriteExecutor::builder()
        .threads(1)
        .sync_policy(SyncPolicy::Interval(Duration::from_millis(5)))
        .build()?;
    let file = executor.open(0, tmp.path().join("plain.bin")).await?;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let executor = executor.clone();
            let file = file.clone();
            std::thread::spawn(move || {
                futures_executor::block_on(executor.append(&file, vec![7; 10]))
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
    }
    assert_eq!(executor.len(&file).await?, 40);
    executor.shutdown().await?;
    Ok(())
}

#[test]
fn invalid_configuration_is_refused() {
    assert!(matches!(
        FileWriteExecutor::builder().threads(0).build(),
        Err(StorageError::InvalidConfig(_))
    ));
    assert!(matches!(
        FileWriteExecutor::builder()
            .sync_policy(SyncPolicy::Interval(Duration::ZERO))
            .build(),
        Err(StorageError::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn preallocated_zeros_stay_past_the_end_until_sealed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("log");
    let executor = FileWriteExecutor::builder()
        .threads(1)
        .preallocate(64 * 1024)
        .build()?;
    let file = executor.open(1, &path).await?;
    for i in 0..100u64 {
        assert_eq!(executor.append(&file, vec![b'x'; 100]).await?, i * 100);
    }
    assert_eq!(executor.len(&file).await?, 10_000);
    let on_disk = common::wait_for_len(&path, 10_000 + 32 * 1024).await?;
    assert!(on_disk >= 10_000 + 32 * 1024, "{on_disk}");
    assert!(std::fs::read(&path)?[10_000..].iter().all(|&b| b == 0));
    // Past the data is past the end, zeros or not.
    assert!(executor.read_at(&file, 9_990, 20).await.is_err());

    executor.seal(&file).await?;
    executor.sync(&file).await?; // waits for the seal's cut
    assert_eq!(std::fs::metadata(&path)?.len(), 10_000);
    assert_eq!(executor.read_at(&file, 9_990, 10).await?, vec![b'x'; 10]);
    executor.shutdown().await?;
    assert_eq!(std::fs::metadata(&path)?.len(), 10_000);

    // Without a seal, shutdown cuts them too.
    let executor = FileWriteExecutor::builder()
        .threads(1)
        .preallocate(64 * 1024)
        .build()?;
    let file = executor.open(1, &path).await?;
    executor.append(&file, b"more".to_vec()).await?;
    assert!(common::wait_for_len(&path, 10_005).await? > 10_004);
    executor.shutdown().await?;
    assert_eq!(std::fs::metadata(&path)?.len(), 10_004);
    Ok(())
}
