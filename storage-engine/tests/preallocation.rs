//! Preallocated zeros past the active segment's end: kept while the engine
//! runs, cut when a segment is sealed or closed, and told apart from damage
//! by recovery after a crash.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use common::{counter, framed_len, payload, segment_files, small_engine, wait_for_len};
use tidemq_storage_engine::{FRAME_HEADER_LEN, RecoveryReport, StorageEngine};

const WINDOW: u64 = 256 * 1024;

async fn append_records(engine: &StorageEngine, range: std::ops::Range<u64>) -> anyhow::Result<()> {
    for offset in range {
        assert_eq!(
            engine.append(1, &[payload(1, offset)]).await?.first_offset,
            offset
        );
    }
    Ok(())
}

/// Writes 20 records with preallocation, then leaves the files as a crash
/// would: the active segment still carries its zeros.
async fn crashed_fixture(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let engine = small_engine(dir)
        .segment_bytes(1 << 20)
        .preallocate_bytes(WINDOW)
        .open()
        .await?;
    engine.create_partition(1).await?;
    append_records(&engine, 0..20).await?;
    let file = segment_files(dir, 1)[0].clone();
    wait_for_len(&file, framed_len(1, 20) + WINDOW / 2).await?;
    // A copy taken while the engine runs is what a crash leaves on disk.
    let running = std::fs::read(&file)?;
    engine.close().await?;
    std::fs::write(&file, &running)?;
    Ok(file)
}

async fn reopen(dir: &Path) -> anyhow::Result<(StorageEngine, RecoveryReport)> {
    let engine = small_engine(dir).segment_bytes(1 << 20).open().await?;
    let report = engine.recovery_report().clone();
    Ok((engine, report))
}

#[tokio::test]
async fn zeros_are_kept_ahead_while_open_and_cut_when_sealed_or_closed() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let engine = small_engine(tmp.path())
        .preallocate_bytes(WINDOW)
        .open()
        .await?;
    engine.create_partition(1).await?;
    append_records(&engine, 0..20).await?;
    let active = &segment_files(tmp.path(), 1)[0];
    let on_disk = wait_for_len(active, framed_len(1, 20) + WINDOW / 2).await?;
    assert!(
        on_disk >= framed_len(1, 20) + WINDOW / 2,
        "zeros past the data while open: {on_disk} bytes for {} of data",
        framed_len(1, 20)
    );
    assert!(
        counter(engine.registry(), "tidemq_storage_preallocated_bytes_total")
            >= WINDOW as f64 / 2.0
    );

    // Cross a few 64 KiB segments: each one sealed is cut to its data.
    append_records(&engine, 20..1000).await?;
    let files = segment_files(tmp.path(), 1);
    assert!(files.len() >= 3, "{files:?}");
    // The cut runs on the I/O thread after the roll; the last one sealed
    // may still be in flight.
    for sealed in &files[..files.len() - 2] {
        let data = std::fs::read(sealed)?;
        assert_ne!(data.last(), Some(&0), "{} ends in zeros", sealed.display());
    }
    engine.close().await?;

    // Closed: every file is exactly its frames, and a reopen repairs nothing.
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    assert_eq!(total, framed_len(1, 1000));
    let engine = small_engine(tmp.path()).open().await?;
    let report = engine.recovery_report().clone();
    assert_eq!(
        (
            report.truncated_segments,
            report.zero_tails_cut,
            report.records
        ),
        (0, 0, 1000),
        "{report:?}"
    );
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn zeros_a_crash_leaves_are_cut_without_counting_as_damage() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let file = crashed_fixture(tmp.path()).await?;
    assert!(std::fs::metadata(&file)?.len() > framed_len(1, 20));
    let (engine, report) = reopen(tmp.path()).await?;
    assert_eq!(
        (
            report.zero_tails_cut,
            report.truncated_segments,
            report.records
        ),
        (1, 0, 20),
        "{report:?}"
    );
    assert!(report.tails_set_aside.is_empty(), "{report:?}");
    assert_eq!(std::fs::metadata(&file)?.len(), framed_len(1, 20));
    assert_eq!(engine.append(1, &[b"next"]).await?.first_offset, 20);
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_frame_torn_inside_the_zeros_is_cut_but_not_set_aside() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let file = crashed_fixture(tmp.path()).await?;
    // The first half of a would-be record 20: a valid length field, a CRC
    // that cannot match, zeros after it (the write a crash cut short).
    let mut frame =
        std::fs::read(&file)?[framed_len(1, 19) as usize..framed_len(1, 20) as usize].to_vec();
    frame[8..16].copy_from_slice(&20u64.to_le_bytes());
    let half = frame.len() / 2;
    let mut f = OpenOptions::new().write(true).open(&file)?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(framed_len(1, 20)))?;
    f.write_all(&frame[..half])?;
    drop(f);

    let (engine, report) = reopen(tmp.path()).await?;
    assert_eq!(
        (report.truncated_segments, report.records),
        (1, 20),
        "{report:?}"
    );
    assert!(
        report.tails_set_aside.is_empty(),
        "a torn write is not damage: {report:?}"
    );
    let records = engine.read(1, 0, 1 << 20).await?;
    assert_eq!(records.len(), 20);
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn bytes_past_a_bad_frames_claimed_end_are_set_aside() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let file = crashed_fixture(tmp.path()).await?;
    // Record 19's payload damaged, then non-zero bytes well after the frame
    // it claims to be: not what a torn append leaves, so it is kept.
    let at = framed_len(1, 19) + FRAME_HEADER_LEN as u64 + 2;
    let mut f = OpenOptions::new().write(true).open(&file)?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(at))?;
    f.write_all(b"#")?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(framed_len(1, 20) + 8192))?;
    f.write_all(b"stray bytes")?;
    drop(f);

    let (engine, report) = reopen(tmp.path()).await?;
    assert_eq!(
        (report.truncated_segments, report.records),
        (1, 19),
        "{report:?}"
    );
    assert_eq!(report.tails_set_aside.len(), 1, "{report:?}");
    let aside = std::fs::read(&report.tails_set_aside[0])?;
    assert_eq!(
        aside.len() as u64,
        framed_len(1, 20) + 8192 + 11 - framed_len(1, 19)
    );
    assert!(aside.ends_with(b"stray bytes"));
    engine.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_that_reach_a_fill_in_flight_wait_for_it() -> anyhow::Result<()> {
    // Records of 3/8 of the window: each round's end passes the start of
    // the fill the round before started, so a round that did not wait would
    // race an O_DIRECT write of zeros over its own data.
    let tmp = tempfile::tempdir()?;
    let window = 64 * 1024;
    let engine = small_engine(tmp.path())
        .segment_bytes(4 << 20)
        .max_record_bytes(64 * 1024)
        .preallocate_bytes(window)
        .open()
        .await?;
    engine.create_partition(1).await?;
    let record = |i: u64| -> Vec<u8> {
        let seed = format!("r{i};");
        seed.bytes().cycle().take(24 * 1024).collect()
    };
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    engine.append(1, &[record(w * 1000 + i)]).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    let mut seen = 0;
    let mut from = 0;
    loop {
        let batch = engine.read(1, from, 1 << 20).await?;
        let Some(last) = batch.last() else { break };
        from = last.offset + 1;
        for r in &batch {
            let text = std::str::from_utf8(&r.payload)?;
            let seed = &text[..text.find(';').map_or(0, |i| i + 1)];
            let whole: String = seed.chars().cycle().take(24 * 1024).collect();
            assert_eq!(text, whole, "record {} was overwritten", r.offset);
            seen += 1;
        }
    }
    assert_eq!(seen, 160);
    assert!(counter(engine.registry(), "tidemq_storage_preallocated_bytes_total") > 0.0);
    engine.close().await?;
    // And what is on disk after a reopen is the same.
    let engine = small_engine(tmp.path())
        .segment_bytes(4 << 20)
        .max_record_bytes(64 * 1024)
        .open()
        .await?;
    let report = engine.recovery_report();
    assert_eq!(
        (report.records, report.truncated_segments),
        (160, 0),
        "{report:?}"
    );
    engine.close().await?;
    Ok(())
}
