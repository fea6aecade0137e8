//! Helpers shared by the storage-engine integration tests.
#![allow(dead_code)]

use std::path::Path;

use tidemq_storage_engine::{EngineBuilder, StorageEngine};

/// A builder with small segments so tests cross segment boundaries quickly.
pub fn small_engine(dir: &Path) -> EngineBuilder {
    StorageEngine::builder(dir)
        .io_threads(2)
        .segment_bytes(64 * 1024)
        .index_interval_bytes(512)
        .max_record_bytes(16 * 1024)
}

/// A payload that encodes where it belongs, so a test can tell a record
/// that is intact from one that is torn or misplaced.
pub fn payload(partition: u64, offset: u64) -> Vec<u8> {
    let len = 50 + (offset as usize * 37 + partition as usize * 11) % 400;
    let seed = format!("p{partition}-o{offset};");
    seed.bytes().cycle().take(len).collect()
}

/// Paths of the segment files of one partition, oldest first.
pub fn segment_files(dir: &Path, partition: u64) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("partitions").join(partition.to_string()))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "log"));
    files.sort();
    files
}

/// A filesystem of its own with little space (a size-limited tmpfs), for
/// tests of a full disk. Unmounted when dropped.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` on a new temporary directory. `None` when
    /// not running as root (mounting needs it; CI runs as root), so a
    /// developer's unprivileged `cargo test` skips the test and says so.
    pub fn mount(bytes: u64) -> anyhow::Result<Option<Self>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a small filesystem needs root");
            return Ok(None);
        }
        let dir = tempfile::tempdir()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tidemq-test"])
            .arg(dir.path())
            .status()?;
        anyhow::ensure!(status.success(), "mount tmpfs failed: {status}");
        Ok(Some(Self { dir }))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem with a file of zeros until a write fails;
    /// returns the file, whose removal gives the space back.
    pub fn fill(&self) -> anyhow::Result<std::path::PathBuf> {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path)?;
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        Ok(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Waits (up to 10 s) until the file at `path` is at least `len` bytes long
/// (preallocated zeros are written beside the appends, not inside them),
/// and returns its length.
pub async fn wait_for_len(path: &Path, len: u64) -> anyhow::Result<u64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = std::fs::metadata(path)?.len();
        if now >= len || std::time::Instant::now() > deadline {
            return Ok(now);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Size on disk of the frames of records `0..count` of `partition`, as
/// written with [`payload`].
pub fn framed_len(partition: u64, count: u64) -> u64 {
    (0..count)
        .map(|o| (payload(partition, o).len() + tidemq_storage_engine::FRAME_HEADER_LEN) as u64)
        .sum()
}

/// The value of the counter `name` in `registry`, 0 when it is not there.
pub fn counter(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .into_iter()
        .find(|f| f.name() == name)
        .map_or(0.0, |f| f.get_metric()[0].get_counter().get_value())
}
