//! Recovery from torn and corrupt segment files.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{framed_len, payload, segment_files, small_engine};
use tidemq_storage_engine::{FRAME_HEADER_LEN, StorageEngine};

/// Writes `count` records to partition 1 and closes the engine.
async fn fixture(dir: &Path, count: u64) -> anyhow::Result<()> {
    let engine = small_engine(dir).open().await?;
    engine.create_partition(1).await?;
    for offset in 0..count {
        engine.append(1, &[payload(1, offset)]).await?;
    }
    engine.close().await?;
    Ok(())
}

/// Reopens, checks the first `intact` records and that the log continues from there.
async fn assert_recovered(
    dir: &Path,
    intact: u64,
    truncated_bytes: u64,
) -> anyhow::Result<StorageEngine> {
    let engine = small_engine(dir).open().await?;
    let report = engine.recovery_report().clone();
    assert_eq!(report.truncated_segments, 1, "{report:?}");
    assert_eq!(report.truncated_bytes, truncated_bytes, "{report:?}");
    assert_eq!(engine.partition_info(1)?.next_offset, intact);
    let records = engine.read(1, 0, 1 << 20).await?;
    assert_eq!(records.len() as u64, intact);
    for r in &records {
        assert_eq!(r.payload.as_ref(), payload(1, r.offset).as_slice());
    }
    // The log takes appends again right after the last valid record.
    assert_eq!(
        engine.append(1, &[b"after repair"]).await?.first_offset,
        intact
    );
    let again = engine.read(1, intact, 100).await?;
    assert_eq!(again[0].payload.as_ref(), b"after repair");
    let truncated = engine
        .registry()
        .gather()
        .into_iter()
        .find(|f| f.name() == "tidemq_storage_truncated_bytes_total")
        .map(|f| f.get_metric()[0].get_counter().get_value());
    assert_eq!(truncated, Some(truncated_bytes as f64));
    Ok(engine)
}

#[tokio::test]
async fn truncated_frame_is_cut_off() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    fixture(tmp.path(), 20).await?;
    let file = &segment_files(tmp.path(), 1)[0];
    // Cut the last frame in the middle, as a crash during the write would.
    let cut_at = framed_len(1, 19) + 10;
    OpenOptions::new().write(true).open(file)?.set_len(cut_at)?;
    let engine = assert_recovered(tmp.path(), 19, 10).await?;
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn flipped_byte_ends_the_valid_log() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    fixture(tmp.path(), 20).await?;
    let file = &segment_files(tmp.path(), 1)[0];
    let len = std::fs::metadata(file)?.len();
    // Flip one payload byte of record 15: records 15..20 are cut.
    let at = framed_len(1, 15) + FRAME_HEADER_LEN as u64 + 3;
    let mut f = OpenOptions::new().read(true).write(true).open(file)?;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(at))?;
    std::io::Read::read_exact(&mut f, &mut byte)?;
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&[byte[0] ^ 0x40])?;
    drop(f);
    let engine = assert_recovered(tmp.path(), 15, len - framed_len(1, 15)).await?;
    // Not a torn write: what followed the bad record is kept aside.
    let aside = &engine.recovery_report().tails_set_aside;
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::metadata(&aside[0])?.len(), len - framed_len(1, 15));
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn corruption_inside_a_sealed_segment_sets_the_rest_aside() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    fixture(tmp.path(), 1500).await?;
    let files = segment_files(tmp.path(), 1);
    assert!(files.len() >= 3);
    let sealed = &files[0];
    let sealed_bytes = std::fs::read(sealed)?;
    let next_base: u64 = files[1]
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| anyhow::anyhow!("name"))?
        .parse()?;
    // Flip a payload byte of record 10; records 11.. of the segment are valid.
    let at = framed_len(1, 10) + FRAME_HEADER_LEN as u64 + 1;
    let mut f = OpenOptions::new().write(true).open(sealed)?;
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&[sealed_bytes[at as usize] ^ 0x01])?;
    drop(f);

    let engine = small_engine(tmp.path()).open().await?;
    let report = engine.recovery_report().clone();
    assert_eq!(report.truncated_segments, 1, "{report:?}");
    assert_eq!(report.tails_set_aside.len(), 1, "{report:?}");
    // The bytes from the bad record on, valid records included, are kept
    // byte for byte; the segment itself ends before it.
    let aside = std::fs::read(&report.tails_set_aside[0])?;
    let mut original_tail = sealed_bytes[framed_len(1, 10) as usize..].to_vec();
    original_tail[FRAME_HEADER_LEN + 1] ^= 0x01;
    assert_eq!(aside, original_tail);
    assert_eq!(std::fs::metadata(sealed)?.len(), framed_len(1, 10));
    let metric = engine
        .registry()
        .gather()
        .into_iter()
        .find(|f| f.name() == "tidemq_storage_tails_set_aside_total")
        .map(|f| f.get_metric()[0].get_counter().get_value());
    assert_eq!(metric, Some(1.0));
    // The log around the hole is served: records 0..10, then the next segment.
    let all = engine.read(1, 0, 1 << 20).await?;
    let offsets: Vec<u64> = all.iter().map(|r| r.offset).take(11).collect();
    let mut expected: Vec<u64> = (0..10).collect();
    expected.push(next_base);
    assert_eq!(offsets, expected);
    let skipped = engine.read(1, 10, 100).await?;
    assert_eq!(skipped[0].offset, next_base);
    assert_eq!(engine.partition_info(1)?.next_offset, 1500);
    engine.close().await?;
    Ok(())
}

#[tokio::test]
async fn unreadable_segment_is_moved_aside() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    fixture(tmp.path(), 1500).await?;
    let files = segment_files(tmp.path(), 1);
    assert!(files.len() >= 3);
    // Destroy the second segment's first frame: nothing in it is readable.
    let victim = files[1].clone();
    let mut f = OpenOptions::new().write(true).open(&victim)?;
    f.write_all(&[0xFF; 64])?;
    drop(f);
    let victim_base: u64 = victim
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| anyhow::anyhow!("name"))?
        .parse()?;
    let third_base: u64 = files[2]
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| anyhow::anyhow!("name"))?
        .parse()?;

    let engine = small_engine(tmp.path()).open().await?;
    let report = engine.recovery_report();
    assert_eq!(report.quarantined.len(), 1);
    assert!(
        report.quarantined[0]
            .to_string_lossy()
            .ends_with(".log.corrupt")
    );
    assert!(report.quarantined[0].exists());
    assert!(!victim.exists());
    // Everything around the hole is still served; a read in the hole skips it.
    assert_eq!(engine.partition_info(1)?.next_offset, 1500);
    let before = engine.read(1, victim_base - 1, 100).await?;
    assert_eq!(before[0].offset, victim_base - 1);
    let skipped = engine.read(1, victim_base, 100).await?;
    assert_eq!(skipped[0].offset, third_base);
    assert_eq!(
        skipped[0].payload.as_ref(),
        payload(1, third_base).as_slice()
    );
    engine.close().await?;
    Ok(())
}
