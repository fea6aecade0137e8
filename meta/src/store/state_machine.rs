//! [`MetaStateMachine`]: openraft's state machine for one group, persisted
//! in the group's `g{n}_sm` column family.

use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend};

use super::Shared;
use super::apply::{Applied, apply_entries};
use super::keys::{self, GroupCfs};
use super::reader::MetaState;
use super::slot::{MetaSnapshotBuilder, SnapshotSlot};
use super::snapshot;
use super::snapshot_data::{Encoding, MetaSnapshotData};
use crate::error::StoreError;
use crate::metrics::as_ms;
use crate::types::{
    Entry, LogId, MetaResponse, MetadataUpdate, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

/// The state machine of one group. openraft owns it; read through
/// [`MetaStateMachine::state`].
#[derive(Debug)]
pub struct MetaStateMachine {
    shared: Arc<Shared>,
    cfs: Arc<GroupCfs>,
    slot: Arc<SnapshotSlot>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// `raft_apply_batch_duration_ms{group}` of this group.
    apply_duration: prometheus::Histogram,
}

impl MetaStateMachine {
    /// Loads the group's applied state, first finishing a snapshot install
    /// that a crash interrupted (snapshot file newer than the data).
    pub(crate) async fn load(shared: Arc<Shared>, cfs: Arc<GroupCfs>) -> Result<Self, StoreError> {
        let dir = shared.snapshot_dir.clone();
        let job_cfs = Arc::clone(&cfs);
        let (slot, last_applied, membership) = shared
            .run("load_state_machine", move |db| {
                let slot = SnapshotSlot::load(&dir, Arc::clone(&job_cfs))?;
                let (mut applied, mut membership) = read_applied(db, &job_cfs)?;
                let interrupted = slot.current_meta().is_some_and(|m| m.last_log_id > applied);
                if interrupted && let Some((meta, blob)) = slot.read()? {
                    tracing::warn!(group = job_cfs.group, id = %meta.snapshot_id, "finishing an interrupted snapshot install");
                    snapshot::install(db, &job_cfs, &meta, &blob)?;
                    applied = meta.last_log_id;
                    membership = meta.last_membership;
                }
                Ok((slot, applied, membership))
            })
            .await?;
        let apply_duration = shared
            .metrics
            .apply_duration
            .with_label_values(&[cfs.group.to_string()]);
        Ok(MetaStateMachine {
            apply_duration,
            shared,
            cfs,
            slot: Arc::new(slot),
            last_applied,
            membership,
        })
    }

    /// The Raft group this state machine belongs to.
    pub fn group(&self) -> u32 {
        self.cfs.group
    }

    /// Resolves when the whole store (every group) has closed.
    pub fn closed(&self) -> super::StoreClosed {
        super::StoreClosed(self.shared.closed.0.subscribe())
    }

    /// A cloneable read handle on this group's state.
    pub fn state(&self) -> MetaState {
        MetaState::new(Arc::clone(&self.shared), Arc::clone(&self.cfs))
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.last_applied
    }
}

fn read_applied(
    db: &rocksdb::DB,
    cfs: &GroupCfs,
) -> Result<(Option<LogId>, StoredMembership), StoreError> {
    let applied: Option<Option<LogId>> = super::get_json(db, &cfs.sm, keys::APPLIED, "applied")?;
    let membership = super::get_json(db, &cfs.sm, keys::MEMBERSHIP, "membership")?;
    Ok((applied.flatten(), membership.unwrap_or_default()))
}

impl RaftStateMachine<TypeConfig> for MetaStateMachine {
    type SnapshotBuilder = MetaSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetaResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let cfs = Arc::clone(&self.cfs);
        let (applied, membership) = (self.last_applied, self.membership.clone());
        let Applied {
            responses,
            last_applied,
            membership,
            routes,
            retained,
        } = self
            .shared
            .run("apply", move |db| {
                apply_entries(db, &cfs, entries, applied, membership)
            })
            .await
            .map_err(|e| e.into_raft(ErrorSubject::StateMachine, ErrorVerb::Write))?;
        self.last_applied = last_applied;
        self.membership = membership;
        if self.cfs.group == crate::GroupRouter::METADATA_GROUP {
            self.shared.metadata.send(MetadataUpdate::Applied {
                applied: last_applied.map_or(0, |id| id.index),
                changes: routes,
                retained,
            });
        }
        self.apply_duration.observe(as_ms(started.elapsed()));
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> MetaSnapshotBuilder {
        MetaSnapshotBuilder {
            shared: Arc::clone(&self.shared),
            cfs: Arc::clone(&self.cfs),
            slot: Arc::clone(&self.slot),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<MetaSnapshotData>, StorageError> {
        Ok(Box::new(MetaSnapshotData::default()))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<MetaSnapshotData>,
    ) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let blob = snapshot.into_bytes().await.map_err(|e| {
            StoreError::CorruptSnapshot {
                reason: e.to_string(),
            }
            .into_raft(subject(), ErrorVerb::Read)
        })?;
        let cfs = Arc::clone(&self.cfs);
        let slot = Arc::clone(&self.slot);
        let job_meta = meta.clone();
        // The file first: a crash before the data is replaced is finished
        // from the file by `load`.
        self.shared
            .run("snapshot_install", move |db| {
                snapshot::verify(&job_meta, &blob)?;
                slot.store(&job_meta, &blob)?;
                snapshot::install(db, &cfs, &job_meta, &blob)
            })
            .await
            .map_err(|e| {
                e.into_raft(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                )
            })?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        if self.cfs.group == crate::GroupRouter::METADATA_GROUP {
            self.shared.metadata.send(MetadataUpdate::Reload {
                applied: meta.last_log_id.map_or(0, |id| id.index),
            });
        }
        tracing::info!(group = self.cfs.group, id = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    /// The current snapshot's meta at once; its data is encoded from the
    /// checkpoint only when read (at start openraft keeps just the meta).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some((meta, pinned)) = self.slot.pin_current() else {
            return Ok(None);
        };
        let (shared, slot, wanted) = (
            Arc::clone(&self.shared),
            Arc::clone(&self.slot),
            meta.clone(),
        );
        // Encoding a checkpoint reads the whole state: off the apply pool.
        let encoding: Encoding = Box::pin(async move {
            shared
                .run_background("snapshot_read", move |_db| {
                    slot.read_pinned(&wanted, &pinned)
                })
                .await
                .map_err(std::io::Error::other)
        });
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(MetaSnapshotData::encoded_by(encoding)),
        }))
    }
}
