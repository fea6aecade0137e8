//! The writer tasks of the message store: one per message partition,
//! appending that partition's records in batches.

use std::sync::Arc;

use prometheus::IntCounter;
use tidemq_storage_engine::{AppendResult, StorageEngine, StorageError};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::DurableError;
use super::backlog::Backlog;

/// Work for a partition's writer.
pub(super) enum WriteJob {
    /// A completion record nobody waits for (at worst the message is
    /// delivered again after a crash, which QoS 1 and 2 allow): it rides
    /// with the partition's next batch instead of costing an append, or an
    /// fsync, of its own. `count`: the completions the record holds.
    Completion { record: Vec<u8>, count: u64 },
    /// Records appended together at consecutive offsets; answered with the
    /// first once they are written (and synced, with the engine's default
    /// policy).
    Records {
        records: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<u64, DurableError>>,
    },
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

impl WriteJob {
    pub(super) fn size(&self) -> usize {
        match self {
            WriteJob::Completion { record, .. } => record.len(),
            WriteJob::Records { records, .. } => records.iter().map(Vec::len).sum(),
            WriteJob::Flush(_) => 0,
        }
    }
}

/// Most jobs, and about the most bytes, written in one append.
const WRITE_BATCH: usize = 1024;
const WRITE_BATCH_BYTES: usize = 1 << 20;

/// Writes one partition's records: everything queued while the previous
/// append was on its way to disk goes out as the next append (one write,
/// one fsync), so under load the cost of a write is shared by every
/// publisher waiting at the time, and completions cost no write of their
/// own. One append at a time keeps the records in the order they were
/// queued, which keeps each publisher's messages in order on disk.
pub(super) async fn partition_writer(
    engine: StorageEngine,
    partition: u64,
    mut jobs: mpsc::UnboundedReceiver<WriteJob>,
    ack_errors: IntCounter,
    backlog: Arc<Backlog>,
) {
    let mut queued: Vec<WriteJob> = Vec::with_capacity(WRITE_BATCH);
    let mut carry: Option<WriteJob> = None;
    loop {
        // A job carried over from the last batch was counted out already.
        let carried = carry.take().map_or(0, |job| {
            let size = job.size();
            queued.push(job);
            size
        });
        if queued.is_empty() && jobs.recv_many(&mut queued, WRITE_BATCH).await == 0 {
            return;
        }
        // Take what else is waiting, up to the batch limits.
        let mut bytes: usize = queued.iter().map(WriteJob::size).sum();
        while queued.len() < WRITE_BATCH && bytes < WRITE_BATCH_BYTES {
            match jobs.try_recv() {
                Ok(job) => {
                    bytes += job.size();
                    queued.push(job);
                }
                Err(_) => break,
            }
        }
        backlog.take(bytes - carried);
        if queued.len() > 1 && bytes > WRITE_BATCH_BYTES {
            carry = queued.pop();
        }

        let records: Vec<&[u8]> = queued
            .iter()
            .flat_map(|job| match job {
                WriteJob::Completion { record, .. } => std::slice::from_ref(record),
                WriteJob::Records { records, .. } => records.as_slice(),
                WriteJob::Flush(_) => &[],
            })
            .map(Vec::as_slice)
            .collect();
        let result = if records.is_empty() {
            None
        } else {
            Some(engine.append(partition, &records).await)
        };
        drop(records);
        answer(queued.drain(..), result, &ack_errors);
    }
}

/// Answers a batch's jobs: each record with its offset (the batch's records
/// took consecutive offsets in job order), or with the error.
fn answer(
    jobs: impl Iterator<Item = WriteJob>,
    result: Option<Result<AppendResult, StorageError>>,
    ack_errors: &IntCounter,
) {
    let (mut next, failure) = match result {
        Some(Ok(appended)) => (appended.first_offset, None),
        Some(Err(e)) => (0, Some(Arc::new(e))),
        None => (0, None),
    };
    let mut failed_acks = 0u64;
    for job in jobs {
        match job {
            WriteJob::Completion { count, .. } => {
                failed_acks += if failure.is_some() { count } else { 0 };
                next += 1;
            }
            WriteJob::Records { records, reply } => {
                let _ = reply.send(match &failure {
                    None => Ok(next),
                    Some(error) => Err(DurableError::Batch(Arc::clone(error))),
                });
                next += records.len() as u64;
            }
            WriteJob::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
    if let Some(reason) = failure
        && failed_acks > 0
    {
        ack_errors.inc_by(failed_acks);
        warn!(error = %reason, completions = failed_acks, "cannot record completed messages");
    }
}
