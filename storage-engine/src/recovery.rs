//! Rebuilding a partition's state from its segment files at open.
//!
//! Runs on the partition's I/O thread with plain blocking file calls, before
//! any append is accepted. Every frame is checked (length bounds, CRC32C, and
//! offsets that continue the segment's run). The first bad frame ends the
//! segment: the bytes from there on are cut off and reported. What is cut
//! is set aside in a file of its own (`*.log.tail-{position}.corrupt`) unless
//! it is only a crash's leftovers: a bad frame in the middle of a segment may
//! be followed by valid records, and those are kept for inspection, not
//! deleted. A segment with nothing valid in it, or one that cannot be read,
//! is renamed to `*.log.corrupt` and reported; the rest of the log stays
//! usable.
//!
//! ## Where the data ends
//!
//! Active segments carry preallocated zeros past their data (see
//! [`EngineBuilder::preallocate_bytes`](crate::EngineBuilder::preallocate_bytes)),
//! and a crash leaves them on disk. So the end of a segment's data is found
//! from its content, never from the file's length:
//!
//! - A frame header of zeros (length 0) where the next frame should start
//!   ends the data. When everything from there to the end of the file is
//!   zeros, the tail is preallocated space: it is cut and counted in
//!   [`RecoveryReport::zero_tails_cut`], not as damage.
//! - In the last segment, a bad frame is a write the crash tore, and is cut
//!   without being set aside, when every non-zero byte after the last valid
//!   frame lies inside the length the bad frame claims (the file may end
//!   inside it, or zeros follow it). Appends are written in order and only
//!   acknowledged once synced, so nothing acknowledged can follow a torn
//!   frame.
//! - Anything else that follows the last valid frame (non-zero bytes past a
//!   bad frame's claimed end, or any bad frame in a sealed segment) may be
//!   damage to acknowledged records: it is set aside before it is cut.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::frame::{self, Decoded, FRAME_HEADER_LEN};
use crate::segment::{IndexEntry, SparseIndex, parse_segment_name};

/// What recovery found and repaired when the engine opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Partitions found on disk.
    pub partitions: usize,
    /// Segment files recovered (including truncated ones).
    pub segments: usize,
    /// Records found valid.
    pub records: u64,
    /// Segments whose torn or corrupt tail was cut off.
    pub truncated_segments: usize,
    /// Bytes cut off those tails.
    pub truncated_bytes: u64,
    /// Unreadable segments moved aside, with their new names.
    pub quarantined: Vec<PathBuf>,
    /// Files holding the bytes cut off after a bad frame that was not a
    /// crash's torn tail (they may hold valid records).
    pub tails_set_aside: Vec<PathBuf>,
    /// Segments whose tail held only zeros (preallocated space a crash left
    /// behind), cut without counting as damage.
    pub zero_tails_cut: usize,
}

impl RecoveryReport {
    pub(crate) fn merge(&mut self, other: RecoveryReport) {
        self.partitions += other.partitions;
        self.segments += other.segments;
        self.records += other.records;
        self.truncated_segments += other.truncated_segments;
        self.truncated_bytes += other.truncated_bytes;
        self.quarantined.extend(other.quarantined);
        self.tails_set_aside.extend(other.tails_set_aside);
        self.zero_tails_cut += other.zero_tails_cut;
    }
}

/// A segment as found on disk, after repair.
#[derive(Debug)]
pub(crate) struct RecoveredSegment {
    pub base_offset: u64,
    pub path: PathBuf,
    pub size: u64,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
    pub index: SparseIndex,
}

/// Limits recovery checks frames against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanLimits {
    pub max_frame_len: usize,
    pub index_interval: u64,
}

/// Recovers every segment in a partition directory, oldest first.
pub(crate) fn recover_partition(
    dir: &Path,
    limits: ScanLimits,
) -> io::Result<(Vec<RecoveredSegment>, RecoveryReport)> {
    let mut report = RecoveryReport {
        partitions: 1,
        ..RecoveryReport::default()
    };
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_name) {
            bases.push((base, entry.path()));
        }
    }
    bases.sort_unstable_by_key(|(base, _)| *base);

    let mut segments: Vec<RecoveredSegment> = Vec::with_capacity(bases.len());
    let count = bases.len();
    for (i, (base, path)) in bases.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let overlaps = segments.last().is_some_and(|prev| base < prev.next_offset);
        let scanned = if overlaps {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "base offset overlaps the previous segment",
            ))
        } else {
            scan_segment(&path, base, limits)
        };
        let scan = match scanned {
            Ok(scan) => scan,
            Err(e) => {
                report.quarantined.push(quarantine(&path, &e.to_string())?);
                continue;
            }
        };
        let data_end = data_end(&path, scan.valid_len, scan.file_len)?;
        if scan.valid_len == 0 && !is_last {
            if data_end > 0 {
                report.quarantined.push(quarantine(
                    &path,
                    scan.stop_reason.unwrap_or("no valid record"),
                )?);
            } else {
                fs::remove_file(&path)?; // an empty sealed segment holds nothing
            }
            continue;
        }
        if data_end == scan.valid_len && scan.valid_len < scan.file_len {
            info!(
                path = %path.display(),
                valid_bytes = scan.valid_len,
                zero_bytes = scan.file_len - scan.valid_len,
                "cutting preallocated zeros after the data"
            );
            cut_to(&path, scan.valid_len)?;
            report.zero_tails_cut += 1;
        } else if scan.valid_len < scan.file_len {
            let cut = scan.file_len - scan.valid_len;
            warn!(
                path = %path.display(),
                valid_bytes = scan.valid_len,
                cut_bytes = cut,
                reason = scan.stop_reason.unwrap_or("torn frame"),
                "truncating segment tail"
            );
            let torn = is_last
                && (scan.stop_reason == Some(TORN_HEADER)
                    || scan
                        .claimed_len
                        .is_some_and(|len| data_end <= scan.valid_len + len));
            if !torn {
                report
                    .tails_set_aside
                    .push(set_aside_tail(&path, scan.valid_len, data_end)?);
            }
            cut_to(&path, scan.valid_len)?;
            report.truncated_segments += 1;
            report.truncated_bytes += cut;
        }
        report.segments += 1;
        report.records += scan.next_offset - base;
        segments.push(RecoveredSegment {
            base_offset: base,
            path,
            size: scan.valid_len,
            next_offset: scan.next_offset,
            max_timestamp_ms: scan.max_timestamp_ms,
            index: scan.index,
        });
    }
    if !report.quarantined.is_empty() || report.truncated_segments > 0 || report.zero_tails_cut > 0
    {
        sync_dir(dir)?;
    }
    Ok((segments, report))
}

/// Why a scan stopped at a frame cut short by the end of the file.
const TORN_HEADER: &str = "torn frame header";
const TORN: &str = "torn frame";

struct Scan {
    file_len: u64,
    valid_len: u64,
    next_offset: u64,
    max_timestamp_ms: i64,
    index: SparseIndex,
    stop_reason: Option<&'static str>,
    /// The length the frame the scan stopped at claims, when that length
    /// was within bounds (its CRC failed or the file ends inside it).
    claimed_len: Option<u64>,
}

/// Reads frames from the start of a segment until the first invalid one.
fn scan_segment(path: &Path, base: u64, limits: ScanLimits) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut scan = Scan {
        file_len,
        valid_len: 0,
        next_offset: base,
        max_timestamp_ms: i64::MIN,
        index: SparseIndex::default(),
        stop_reason: None,
        claimed_len: None,
    };
    let mut buf = vec![0u8; FRAME_HEADER_LEN];
    loop {
        if scan.valid_len == file_len {
            break;
        }
        if file_len - scan.valid_len < FRAME_HEADER_LEN as u64 {
            scan.stop_reason = Some(TORN_HEADER);
            break;
        }
        buf.resize(FRAME_HEADER_LEN, 0);
        reader.read_exact(&mut buf)?;
        let len = match frame::decode(&buf, limits.max_frame_len) {
            Decoded::Incomplete { len } => len,
            Decoded::Invalid(reason) => {
                scan.stop_reason = Some(reason);
                break;
            }
            Decoded::Frame { len, .. } => len, // a payload-less frame
        };
        if (file_len - scan.valid_len) < len as u64 {
            scan.stop_reason = Some(TORN);
            scan.claimed_len = Some(len as u64);
            break;
        }
        buf.resize(len, 0);
        reader.read_exact(&mut buf[FRAME_HEADER_LEN..])?;
        let Decoded::Frame {
            offset,
            timestamp_ms,
            len,
        } = frame::decode(&buf, limits.max_frame_len)
        else {
            scan.stop_reason = Some("checksum mismatch");
            scan.claimed_len = Some(len as u64);
            break;
        };
        if offset != scan.next_offset {
            scan.stop_reason = Some("offset out of sequence");
            break;
        }
        scan.index.observe(
            IndexEntry {
                offset,
                position: scan.valid_len,
                timestamp_ms,
            },
            len as u64,
            limits.index_interval,
        );
        scan.max_timestamp_ms = scan.max_timestamp_ms.max(timestamp_ms);
        scan.next_offset += 1;
        scan.valid_len += len as u64;
    }
    Ok(scan)
}

/// Where the non-zero bytes of `path` end: the position after its last
/// non-zero byte at or after `from`, or `from` when only zeros follow it.
fn data_end(path: &Path, from: u64, file_len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 64 * 1024;
    let file = File::open(path)?;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut end = file_len;
    while end > from {
        let start = end.saturating_sub(CHUNK).max(from);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(last) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(start + last as u64 + 1);
        }
        end = start;
    }
    Ok(from)
}

/// Cuts `path` to `len` bytes and syncs it.
pub(crate) fn cut_to(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Copies the bytes of `path` in `from..to` into a file of their own,
/// synced, and returns that file.
fn set_aside_tail(path: &Path, from: u64, to: u64) -> io::Result<PathBuf> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path)?;
    let mut tail = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut tail, from)?;
    let target = path.with_extension(format!("log.tail-{from}.corrupt"));
    let mut aside = File::create(&target)?;
    io::Write::write_all(&mut aside, &tail)?;
    aside.sync_all()?;
    warn!(
        path = %path.display(),
        position = from,
        bytes = tail.len(),
        moved_to = %target.display(),
        "setting aside the bytes after a corrupt record"
    );
    Ok(target)
}

/// Renames an unreadable segment out of the log and returns its new path.
fn quarantine(path: &Path, reason: &str) -> io::Result<PathBuf> {
    let mut target = path.with_extension("log.corrupt");
    let mut n = 1;
    while target.exists() {
        target = path.with_extension(format!("log.corrupt.{n}"));
        n += 1;
    }
    warn!(path = %path.display(), moved_to = %target.display(), reason, "moving unreadable segment aside");
    fs::rename(path, &target)?;
    Ok(target)
}

/// Makes renames, creations and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Logs the outcome of a whole-engine recovery.
pub(crate) fn log_report(dir: &Path, report: &RecoveryReport) {
    info!(
        dir = %dir.display(),
        partitions = report.partitions,
        segments = report.segments,
        records = report.records,
        truncated_segments = report.truncated_segments,
        truncated_bytes = report.truncated_bytes,
        quarantined = report.quarantined.len(),
        tails_set_aside = report.tails_set_aside.len(),
        zero_tails_cut = report.zero_tails_cut,
        "storage recovered"
    );
}
