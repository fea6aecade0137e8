//! Repairing a partition poisoned by a failed write or sync.
//!
//! A failed write (a full disk, say) or `fdatasync` poisons its file: that
//! append and every one queued behind it fails, so the log never
//! acknowledges a record that follows a hole. Once every append sent before
//! the failure has been answered, the next append repairs the partition
//! before it is planned: each segment holding bytes that were never
//! acknowledged is closed, cut back to its last acknowledged record and
//! synced, and the active segment is opened again on a fresh descriptor.
//! Offsets that were assigned to failed records are given out again. A
//! repair that fails (the disk is still full) leaves the partition poisoned;
//! appends fail at once with [`StorageError::Poisoned`] until the next try,
//! [`EngineBuilder::heal_retry`](super::EngineBuilder::heal_retry) later.
//!
//! With [`SyncPolicy::Always`](crate::SyncPolicy::Always) every acknowledged
//! record was synced by a sync that succeeded before the failure, so the
//! repair loses nothing that was acknowledged.

use std::io;
use std::path::Path;

use tracing::{info, warn};

use super::StorageEngine;
use crate::error::{Result, StorageError};
use crate::partition::{HealPlan, Partition, PartitionState};

/// Counts an append as sent to the I/O thread until it is answered, or
/// until its caller stops waiting for it: a partition is repaired only when
/// no append is on its way.
pub(super) struct Inflight<'a> {
    part: &'a Partition,
    counted: bool,
}

impl<'a> Inflight<'a> {
    pub(super) fn new(part: &'a Partition) -> Self {
        Self {
            part,
            counted: false,
        }
    }

    /// The append was handed to the I/O thread (under the partition lock).
    pub(super) fn sent(&mut self, state: &mut PartitionState) {
        state.inflight += 1;
        self.counted = true;
    }

    /// The I/O thread answered (under the partition lock).
    pub(super) fn answered(&mut self, state: &mut PartitionState) {
        if std::mem::take(&mut self.counted) {
            state.inflight -= 1;
        }
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.part.lock().inflight -= 1;
        }
    }
}

impl StorageEngine {
    /// Repairs `part` if it is poisoned and due for a try. `Ok` when the
    /// partition takes appends; the poison otherwise.
    pub(super) async fn heal_if_poisoned(&self, part: &Partition) -> Result<()> {
        let plan = {
            let mut state = part.lock();
            if state.poisoned.is_none() {
                return Ok(());
            }
            match state.plan_heal(self.inner.heal_retry) {
                Some(plan) => plan,
                None => return state.check_open(part.id),
            }
        };
        let healed = self.repair(&plan).await;
        part.lock().finish_heal(&plan, &healed);
        match &healed {
            Ok(()) => {
                self.inner.metrics.healed_partitions.inc();
                info!(
                    partition = part.id,
                    segments = plan.cuts.len(),
                    "partition repaired after a failed write; appends resume"
                );
            }
            Err(e) => {
                warn!(partition = part.id, error = %e, "partition still cannot be repaired");
            }
        }
        healed
    }

    async fn repair(&self, plan: &HealPlan) -> Result<()> {
        let executor = &self.inner.executor;
        for (_, file, len) in &plan.cuts {
            // Closing a poisoned file reports its poison: expected here.
            if let Err(StorageError::Closed) = executor.close(file).await {
                return Err(StorageError::Closed);
            }
            let (path, len) = (file.path().to_path_buf(), *len);
            executor
                .run_blocking(file.partition(), move || cut(&path, len))
                .await?
                .map_err(|e| StorageError::io("truncate", file.path(), e))?;
        }
        executor.len(&plan.active).await.map(|_| ())
    }
}

/// Cuts the file at `path` to `len` bytes and syncs it. A file that was
/// never created is fine when nothing of it was acknowledged.
fn cut(path: &Path, len: u64) -> io::Result<()> {
    match crate::recovery::cut_to(path, len) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && len == 0 => Ok(()),
        cut => cut,
    }
}
