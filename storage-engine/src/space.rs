//! The free-space floor: appends stop while the data directory's
//! filesystem has less than `min_free_bytes` free, and go on by themselves
//! once space is freed.
//!
//! Keeping a floor, rather than writing until the disk is full, leaves room
//! for what must still be written when the log cannot take more: the
//! metadata stores next to it, their files at the next start, and the
//! segment cuts of a repair. A thread of its own (`storage-space`) samples
//! the filesystem (`statvfs`) every `space_check_interval`; an append only
//! reads that sample, less what was appended since, so no filesystem call
//! runs on the caller's thread.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tracing::warn;

use crate::error::{Result, StorageError};

/// Free space of the data directory's filesystem, as last sampled.
pub(crate) struct FreeSpace {
    /// Appends are refused below this many free bytes (0: never).
    min_free: u64,
    /// Free bytes at the last sample.
    free: AtomicU64,
    /// Bytes appended since the last sample.
    appended: AtomicU64,
    gauge: IntGauge,
    refused: IntCounter,
}

impl FreeSpace {
    /// A floor of `min_free` bytes, starting from a first sample of `free`.
    pub(crate) fn new(min_free: u64, free: u64, gauge: IntGauge, refused: IntCounter) -> Self {
        gauge.set(i64::try_from(free).unwrap_or(i64::MAX));
        Self {
            min_free,
            free: AtomicU64::new(free),
            appended: AtomicU64::new(0),
            gauge,
            refused,
        }
    }

    /// Takes `bytes` from the free space, or refuses them if that would
    /// leave less than the floor.
    pub(crate) fn reserve(&self, bytes: u64) -> Result<()> {
        if self.min_free == 0 {
            return Ok(());
        }
        let free = self
            .free
            .load(Ordering::Relaxed)
            .saturating_sub(self.appended.load(Ordering::Relaxed));
        if free < self.min_free.saturating_add(bytes) {
            self.refused.inc();
            return Err(StorageError::DiskFull {
                free,
                min_free: self.min_free,
            });
        }
        self.appended.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Records a new sample of the filesystem.
    fn sampled(&self, free: u64) {
        self.free.store(free, Ordering::Relaxed);
        self.appended.store(0, Ordering::Relaxed);
        self.gauge.set(i64::try_from(free).unwrap_or(i64::MAX));
    }
}

/// Samples the free space of `dir` every `interval` until the engine is
/// dropped.
pub(crate) fn spawn_sampler<T: Send + Sync + 'static>(
    engine: Weak<T>,
    space: impl Fn(&T) -> &FreeSpace + Send + 'static,
    dir: PathBuf,
    interval: Duration,
) -> Result<()> {
    std::thread::Builder::new()
        .name("storage-space".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                std::thread::sleep(interval);
                let Some(inner) = engine.upgrade() else {
                    return;
                };
                match free_bytes(&dir) {
                    Ok(free) => {
                        failing = false;
                        space(&inner).sampled(free);
                    }
                    Err(e) if !failing => {
                        failing = true;
                        warn!(dir = %dir.display(), error = %e, "cannot read the free disk space");
                    }
                    Err(_) => {}
                }
            }
        })
        .map(|_| ())
        .map_err(|e| StorageError::io("spawn space thread", "storage-space", e))
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and
    // `stat` is a plain-data struct statvfs fills in.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return Err(io::Error::last_os_error());
        }
        stat
    };
    // The field types are u64 on 64-bit Linux, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(blocks.saturating_mul(block_size))
}
