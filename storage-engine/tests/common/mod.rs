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
