//! Where a group's current snapshot lives, and how one is built.
//!
//! A snapshot this node builds is a RocksDB checkpoint of the store:
//! `{dir}/snapshots/{snapshot id}.ckpt/`, made of hard links to the live SST
//! files after a memtable flush, so building one costs the same with ten
//! sessions or five million. Its meta (the group's applied log id and
//! membership in that checkpoint) is in `g{n}.ckpt.json`, replaced
//! atomically. The blob a follower needs ([`super::snapshot`]) is encoded
//! from the checkpoint only when openraft asks for the current snapshot:
//! when a follower must catch up by snapshot, and once at start.
//!
//! A snapshot received from a leader arrives as a blob, is kept as
//! `g{n}.snap` (so a crash during its install is finished at the next start)
//! and stays the current snapshot until this node builds a newer one.
//!
//! Each checkpoint pins the SST files it links until the next one replaces
//! it: at most one per group, and at worst as large as the store was when
//! it was taken.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::Snapshot;
use openraft::{ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use rocksdb::DB;
use rocksdb::checkpoint::Checkpoint;
use serde::{Deserialize, Serialize};

use super::Shared;
use super::keys::GroupCfs;
use super::snapshot;
use super::snapshot_data::MetaSnapshotData;
use crate::error::StoreError;
use crate::types::{SnapshotMeta, StorageError, TypeConfig};

/// Bytes of a received snapshot file written between two syncs.
const SYNC_CHUNK: usize = 1 << 20;

/// Where a snapshot's records are. A clone of a checkpoint source holds the
/// checkpoint on disk ([`SnapshotSlot::pin_current`]).
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A blob received from a leader, in `g{n}.snap`.
    Blob,
    /// A checkpoint this node built. Shared with the encodings that read
    /// it: a replaced checkpoint is removed once none holds it.
    Checkpoint(Arc<PathBuf>),
}

#[derive(Debug, Clone)]
struct Current {
    meta: SnapshotMeta,
    source: Source,
}

/// `g{n}.ckpt.json`: the checkpoint that is the group's current snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct Pointer {
    meta: SnapshotMeta,
    /// The checkpoint's directory name inside the snapshot directory.
    dir: String,
}

/// The current snapshot of one group.
#[derive(Debug)]
pub(crate) struct SnapshotSlot {
    dir: PathBuf,
    cfs: Arc<GroupCfs>,
    current: Mutex<Option<Current>>,
    /// Replaced checkpoints an encoding still reads.
    retired: Mutex<Vec<Arc<PathBuf>>>,
}

impl SnapshotSlot {
    /// Finds the group's current snapshot (the newer of a received blob and
    /// a built checkpoint) and removes checkpoints nothing points to.
    pub(crate) fn load(dir: &Path, cfs: Arc<GroupCfs>) -> Result<Self, StoreError> {
        let slot = SnapshotSlot {
            dir: dir.to_path_buf(),
            cfs,
            current: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
        };
        let blob = read_header(&slot.blob_path())
            .map_err(|source| slot.io(slot.blob_path(), source))?
            .map(|header| snapshot::decode_meta(&header).map(|(meta, _)| meta))
            .transpose()?
            .map(|meta| Current {
                meta,
                source: Source::Blob,
            });
        let checkpoint = slot.read_pointer()?.map(|pointer| Current {
            meta: pointer.meta,
            source: Source::Checkpoint(Arc::new(dir.join(pointer.dir))),
        });
        let current = match (blob, checkpoint) {
            (Some(b), Some(c)) if b.meta.last_log_id > c.meta.last_log_id => Some(b),
            (_, Some(c)) => Some(c),
            (b, None) => b,
        };
        slot.remove_stale_checkpoints(current.as_ref())?;
        *lock(&slot.current) = current;
        Ok(slot)
    }

    pub(crate) fn current_meta(&self) -> Option<SnapshotMeta> {
        lock(&self.current).as_ref().map(|c| c.meta.clone())
    }

    /// Makes a received `blob` the current snapshot unless a newer one
    /// already is. Written to a temporary file, synced, then renamed over
    /// the old one.
    pub(crate) fn store(&self, meta: &SnapshotMeta, blob: &[u8]) -> Result<(), StoreError> {
        let mut current = lock(&self.current);
        if current
            .as_ref()
            .is_some_and(|c| c.meta.last_log_id > meta.last_log_id)
        {
            return Ok(());
        }
        let path = self.blob_path();
        let tmp = path.with_extension("snap.tmp");
        let io = |source| self.io(tmp.clone(), source);
        let mut file = fs::File::create(&tmp).map_err(io)?;
        // Synced a chunk at a time: one write-back of the whole blob would
        // fill the device's queue and stall the Raft log's fsyncs behind it
        // (p99 spikes of ~100 ms at every snapshot, docs/benchmarks.md §7d).
        for chunk in blob.chunks(SYNC_CHUNK) {
            file.write_all(chunk).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        self.sync_dir()?;
        let replaced = current.replace(Current {
            meta: meta.clone(),
            source: Source::Blob,
        });
        drop(current);
        if let Some(Current {
            source: Source::Checkpoint(old),
            ..
        }) = replaced
        {
            self.retire(old)?;
        }
        Ok(())
    }

    /// Takes a checkpoint of `db` and makes it the current snapshot. Costs
    /// a memtable flush and a hard link per SST file, whatever the size of
    /// the state.
    pub(crate) fn checkpoint(&self, db: &DB) -> Result<SnapshotMeta, StoreError> {
        let building = self.dir.join(format!("g{}.ckpt.building", self.cfs.group));
        remove_dir(&building).map_err(|source| self.io(building.clone(), source))?;
        Checkpoint::new(db)
            .and_then(|c| c.create_checkpoint(&building))
            .map_err(StoreError::rocks("checkpoint"))?;
        let meta = snapshot::read_meta(&open_read_only(&building, &self.cfs)?, &self.cfs)?;
        let name = format!("{}.ckpt", meta.snapshot_id);
        let target = self.dir.join(&name);
        fs::rename(&building, &target).map_err(|source| self.io(target.clone(), source))?;
        let pointer = Pointer {
            meta: meta.clone(),
            dir: name,
        };
        self.write_pointer(&pointer)?;
        let replaced = {
            let mut current = lock(&self.current);
            if current
                .as_ref()
                .is_some_and(|c| c.meta.last_log_id > meta.last_log_id)
            {
                // A newer snapshot was installed meanwhile: this one is stale.
                drop(current);
                remove_dir(&target).map_err(|source| self.io(target.clone(), source))?;
                return Ok(meta);
            }
            current.replace(Current {
                meta: meta.clone(),
                source: Source::Checkpoint(Arc::new(target)),
            })
        };
        match replaced.map(|c| c.source) {
            Some(Source::Checkpoint(old)) => self.retire(old)?,
            Some(Source::Blob) => match fs::remove_file(self.blob_path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(self.io(self.blob_path(), e));
                }
                _ => {}
            },
            None => {}
        }
        Ok(meta)
    }

    /// The current snapshot as a blob: read from its file, or encoded from
    /// its checkpoint.
    pub(crate) fn read(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
        let Some((meta, source)) = self.pin_current() else {
            return Ok(None);
        };
        let blob = self.read_pinned(&meta, &source)?;
        Ok(Some((meta, blob)))
    }

    /// The current snapshot's meta and a hold on its records, without any
    /// I/O: a checkpoint held this way stays on disk until it is read.
    pub(crate) fn pin_current(&self) -> Option<(SnapshotMeta, Source)> {
        let current = lock(&self.current);
        current.as_ref().map(|c| (c.meta.clone(), c.source.clone()))
    }

    /// The blob of the snapshot `meta`, pinned by [`Self::pin_current`].
    pub(crate) fn read_pinned(
        &self,
        meta: &SnapshotMeta,
        source: &Source,
    ) -> Result<Vec<u8>, StoreError> {
        match source {
            Source::Checkpoint(dir) => {
                snapshot::encode(&open_read_only(dir, &self.cfs)?, &self.cfs, meta)
            }
            // A received blob is replaced only by a newer one, which a node
            // serving snapshots (a leader) does not receive; its header says
            // which one was read.
            Source::Blob => {
                let path = self.blob_path();
                let blob = fs::read(&path).map_err(|source| self.io(path, source))?;
                if snapshot::decode_meta(&blob)?.0 != *meta {
                    return Err(StoreError::CorruptSnapshot {
                        reason: format!(
                            "snapshot {} was replaced before it was read",
                            meta.snapshot_id
                        ),
                    });
                }
                Ok(blob)
            }
        }
    }

    /// Keeps a replaced checkpoint until no encoding holds it, and removes
    /// the retired ones nothing holds any more.
    fn retire(&self, old: Arc<PathBuf>) -> Result<(), StoreError> {
        let mut retired = lock(&self.retired);
        retired.push(old);
        let mut kept = Vec::with_capacity(retired.len());
        for dir in retired.drain(..) {
            if Arc::strong_count(&dir) == 1 {
                remove_dir(&dir).map_err(|source| self.io(dir.to_path_buf(), source))?;
            } else {
                kept.push(dir);
            }
        }
        *retired = kept;
        Ok(())
    }

    fn blob_path(&self) -> PathBuf {
        self.dir.join(format!("g{}.snap", self.cfs.group))
    }

    fn pointer_path(&self) -> PathBuf {
        self.dir.join(format!("g{}.ckpt.json", self.cfs.group))
    }

    fn read_pointer(&self) -> Result<Option<Pointer>, StoreError> {
        let path = self.pointer_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(StoreError::decode("checkpoint pointer", b"ckpt.json")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(path, e)),
        }
    }

    /// Replaces `g{n}.ckpt.json`: temporary file, sync, rename, directory sync.
    fn write_pointer(&self, pointer: &Pointer) -> Result<(), StoreError> {
        let path = self.pointer_path();
        let tmp = path.with_extension("json.tmp");
        let json = super::to_json(pointer, "checkpoint pointer")?;
        let io = |source| self.io(tmp.clone(), source);
        let mut file = fs::File::create(&tmp).map_err(io)?;
        file.write_all(&json).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        self.sync_dir()
    }

    /// Removes this group's checkpoints other than `keep`'s: ones a crash
    /// left half built or already replaced.
    fn remove_stale_checkpoints(&self, keep: Option<&Current>) -> Result<(), StoreError> {
        let kept = match keep.map(|c| &c.source) {
            Some(Source::Checkpoint(dir)) => Some(dir.to_path_buf()),
            _ => None,
        };
        let prefix = format!("g{}-", self.cfs.group);
        let building = format!("g{}.ckpt.building", self.cfs.group);
        let entries =
            fs::read_dir(&self.dir).map_err(|source| self.io(self.dir.clone(), source))?;
        for entry in entries {
            let entry = entry.map_err(|source| self.io(self.dir.clone(), source))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = (name.starts_with(&prefix) && name.ends_with(".ckpt")) || name == building;
            if ours && kept.as_deref() != Some(entry.path().as_path()) {
                tracing::info!(group = self.cfs.group, checkpoint = %name, "removing a stale snapshot checkpoint");
                remove_dir(&entry.path()).map_err(|source| self.io(entry.path(), source))?;
            }
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| self.io(self.dir.clone(), source))
    }

    fn io(&self, path: PathBuf, source: std::io::Error) -> StoreError {
        StoreError::SnapshotIo { path, source }
    }
}

/// Opens a checkpoint's copy of the group's state machine, read-only.
fn open_read_only(dir: &Path, cfs: &GroupCfs) -> Result<DB, StoreError> {
    DB::open_cf_for_read_only(&rocksdb::Options::default(), dir, [&cfs.sm], false)
        .map_err(StoreError::rocks("open checkpoint"))
}

/// Removes a directory tree; one that is not there is already removed.
fn remove_dir(dir: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Reads magic, length and meta of a snapshot file, not its records.
fn read_header(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut header = vec![0u8; snapshot::MAGIC.len() + 4];
    file.read_exact(&mut header)?;
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[snapshot::MAGIC.len()..]);
    let len = u32::from_be_bytes(len) as usize;
    header.resize(snapshot::MAGIC.len() + 4 + len, 0);
    file.read_exact(&mut header[snapshot::MAGIC.len() + 4..])?;
    Ok(Some(header))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Builds snapshots of one group; see [`RaftSnapshotBuilder`].
#[derive(Debug)]
pub struct MetaSnapshotBuilder {
    pub(crate) shared: Arc<Shared>,
    pub(crate) cfs: Arc<GroupCfs>,
    pub(crate) slot: Arc<SnapshotSlot>,
}

impl RaftSnapshotBuilder<TypeConfig> for MetaSnapshotBuilder {
    /// Takes a checkpoint. openraft keeps only the meta of a snapshot it
    /// asked to build, so the data returned is empty; the blob is encoded
    /// from the checkpoint by `get_current_snapshot` when a follower needs it.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let slot = Arc::clone(&self.slot);
        let started = std::time::Instant::now();
        let meta = self
            .shared
            .run_background("snapshot_build", move |db| slot.checkpoint(db))
            .await
            .map_err(|e| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        tracing::info!(
            group = self.cfs.group,
            id = %meta.snapshot_id,
            ms = started.elapsed().as_millis() as u64,
            "snapshot checkpoint built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(MetaSnapshotData::default()),
        })
    }
}
