//! The writer tasks of the message store: one per message partition,
//! appending message records in batches, and one for completions.

use std::collections::BTreeMap;

use prometheus::IntCounter;
use tidemq_storage_engine::StorageEngine;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::{DiskRef, DurableError, Record};

/// A message record and who waits for its offset.
pub(super) struct WriteJob {
    pub(super) bytes: Vec<u8>,
    pub(super) reply: oneshot::Sender<Result<u64, DurableError>>,
}

/// Most records, and about the most bytes, written in one append.
const WRITE_BATCH: usize = 1024;
const WRITE_BATCH_BYTES: usize = 1 << 20;

/// Writes one partition's message records: everything queued while the
/// previous append was on its way to disk goes out as the next append (one
/// write, one fsync), so under load the cost of a write is shared by every
/// publisher waiting at the time. One append at a time keeps the records in
/// the order they were queued, which keeps each publisher's messages in
/// order on disk.
pub(super) async fn message_writer(
    engine: StorageEngine,
    partition: u64,
    mut jobs: mpsc::UnboundedReceiver<WriteJob>,
) {
    let mut queued: Vec<WriteJob> = Vec::with_capacity(WRITE_BATCH);
    let mut carry: Option<WriteJob> = None;
    loop {
        if let Some(job) = carry.take() {
            queued.push(job);
        }
        if queued.is_empty() && jobs.recv_many(&mut queued, WRITE_BATCH).await == 0 {
            return;
        }
        // Take what else is waiting, up to the batch limits.
        let mut bytes: usize = queued.iter().map(|j| j.bytes.len()).sum();
        while queued.len() < WRITE_BATCH && bytes < WRITE_BATCH_BYTES {
            match jobs.try_recv() {
                Ok(job) => {
                    bytes += job.bytes.len();
                    queued.push(job);
                }
                Err(_) => break,
            }
        }
        if queued.len() > 1 && bytes > WRITE_BATCH_BYTES {
            carry = queued.pop();
        }
        let records: Vec<&[u8]> = queued.iter().map(|j| j.bytes.as_slice()).collect();
        let result = engine.append(partition, &records).await;
        match result {
            Ok(appended) => {
                for (i, job) in queued.drain(..).enumerate() {
                    let _ = job.reply.send(Ok(appended.first_offset + i as u64));
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for job in queued.drain(..) {
                    let _ = job.reply.send(Err(DurableError::Batch {
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }
}

/// Work for the ack writer task.
pub(super) enum AckJob {
    /// Record that `key` completed the message at `at`.
    Ack(DiskRef, String, u64),
    /// Answer once everything queued before is written.
    Flush(oneshot::Sender<()>),
}

/// Most completions written in one round.
const ACK_BATCH: usize = 4096;

/// Writes completions in batches: everything queued when it wakes, one
/// append per partition. A completion is not waited for by anyone (at worst
/// the message is delivered again after a crash, which QoS 1 and 2 allow),
/// so it need not cost an append, or an fsync, of its own.
pub(super) async fn ack_writer(
    engine: StorageEngine,
    mut jobs: mpsc::UnboundedReceiver<AckJob>,
    errors: IntCounter,
) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    while jobs.recv_many(&mut batch, ACK_BATCH).await > 0 {
        let mut by_partition: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        let mut flushed = Vec::new();
        for job in batch.drain(..) {
            match job {
                AckJob::Ack(at, key, epoch) => {
                    let record = Record::Ack {
                        key,
                        epoch,
                        offset: at.offset,
                    };
                    match record.encode() {
                        Ok(bytes) => by_partition.entry(at.partition).or_default().push(bytes),
                        Err(e) => {
                            errors.inc();
                            warn!(error = %e, "cannot encode a completion");
                        }
                    }
                }
                AckJob::Flush(done) => flushed.push(done),
            }
        }
        let writes = by_partition.iter().map(|(partition, records)| {
            let engine = &engine;
            async move {
                (
                    records.len(),
                    engine.append(u64::from(*partition), records).await,
                )
            }
        });
        for (count, result) in futures_util::future::join_all(writes).await {
            if let Err(e) = result {
                errors.inc_by(count as u64);
                warn!(error = %e, records = count, "cannot record completed messages");
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}
