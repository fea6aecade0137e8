//! [`LogWriter`]: one thread (`meta-raft-log`) that turns the log writes of
//! every Raft group on the node into as few synced RocksDB writes as possible.
//!
//! Each round it takes everything queued (appends, votes, truncations and
//! purges of any group, up to a bound), puts it into ONE `WriteBatch` in
//! queue order, writes it with ONE sync, and only then completes every
//! request. N groups appending at once therefore cost one fsync, not N, and
//! the longer a sync takes the more the next round carries. After a failed
//! write the writer refuses everything: a log that may have lost a write must
//! not be reported durable.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use rocksdb::{DB, WriteBatch, WriteOptions};

use crate::error::StoreError;
use crate::metrics::{StoreMetrics, as_ms};

/// At most this many requests go into one write, so one round stays short.
const MAX_REQUESTS_PER_BATCH: usize = 4096;
/// ... and at most this many bytes.
const MAX_BYTES_PER_BATCH: usize = 32 << 20;

/// One mutation of a log store write.
#[derive(Debug)]
pub(crate) enum LogOp {
    Put {
        cf: Arc<str>,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Deletes `[from, to)`.
    DeleteRange {
        cf: Arc<str>,
        from: Vec<u8>,
        to: Vec<u8>,
    },
}

impl LogOp {
    fn bytes(&self) -> usize {
        match self {
            LogOp::Put { key, value, .. } => key.len() + value.len(),
            LogOp::DeleteRange { from, to, .. } => from.len() + to.len(),
        }
    }
}

/// Called on the writer thread once the write is on disk (or failed).
pub(crate) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send + 'static>;

/// A write of one group's log store: applied atomically with the rest of its
/// round, in submission order.
pub(crate) struct LogWrite {
    pub(crate) group: u32,
    /// Log entries carried, for the entries-per-batch metric.
    pub(crate) entries: usize,
    /// Whether it must be synced before completion (appends, votes).
    pub(crate) sync: bool,
    pub(crate) ops: Vec<LogOp>,
    pub(crate) done: Completion,
}

/// The submitting side of the writer thread. Dropping the last handle stops
/// the thread after it has finished the queued writes.
#[derive(Debug)]
pub(crate) struct LogWriter {
    tx: Option<Sender<LogWrite>>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    pub(crate) fn start(db: Arc<DB>, metrics: StoreMetrics) -> Result<Self, StoreError> {
        // Unbounded on purpose: openraft bounds in-flight appends per group,
        // and `append` must return without blocking.
        let (tx, rx) = mpsc::channel();
        let name = "meta-raft-log".to_string();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || run(&db, &rx, &metrics))
            .map_err(|source| StoreError::Spawn { name, source })?;
        Ok(LogWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a write. On error the write was not queued and `done` is
    /// dropped without being called.
    pub(crate) fn submit(&self, write: LogWrite) -> Result<(), StoreError> {
        let tx = self.tx.as_ref().ok_or(StoreError::WriterClosed)?;
        tx.send(write).map_err(|_| StoreError::WriterClosed)
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the meta-raft-log thread panicked");
        }
    }
}

fn run(db: &DB, rx: &Receiver<LogWrite>, metrics: &StoreMetrics) {
    let mut sync_opts = WriteOptions::default();
    sync_opts.set_sync(true);
    let plain_opts = WriteOptions::default();
    let mut failed: Option<String> = None;

    while let Ok(first) = rx.recv() {
        let mut round = vec![first];
        let mut bytes = round[0].ops.iter().map(LogOp::bytes).sum::<usize>();
        while round.len() < MAX_REQUESTS_PER_BATCH && bytes < MAX_BYTES_PER_BATCH {
            let Ok(next) = rx.try_recv() else { break };
            bytes += next.ops.iter().map(LogOp::bytes).sum::<usize>();
            round.push(next);
        }

        if let Some(reason) = &failed {
            for write in round {
                (write.done)(Err(StoreError::WriterFailed {
                    reason: reason.clone(),
                }));
            }
            continue;
        }

        let (batch, accepted) = build_batch(db, round);
        if accepted.is_empty() {
            continue;
        }
        let sync = accepted.iter().any(|w| w.sync);
        let started = Instant::now();
        let result = db.write_opt(batch, if sync { &sync_opts } else { &plain_opts });
        let elapsed = started.elapsed();
        metrics.observe_op("log_write", elapsed);
        metrics.log_batch_duration.observe(as_ms(elapsed));
        metrics.log_batch_requests.observe(accepted.len() as f64);
        let entries: usize = accepted.iter().map(|w| w.entries).sum();
        metrics.log_batch_entries.observe(entries as f64);
        let groups: BTreeSet<u32> = accepted.iter().map(|w| w.group).collect();
        metrics.log_batch_groups.observe(groups.len() as f64);

        match result {
            Ok(()) => {
                for write in accepted {
                    (write.done)(Ok(()));
                }
            }
            Err(source) => {
                let reason = source.to_string();
                tracing::error!(error = %reason, "raft log write failed; refusing further log writes");
                failed = Some(reason.clone());
                for write in accepted {
                    (write.done)(Err(StoreError::WriterFailed {
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }
}

/// Puts every write of the round into one batch. A write naming a column
/// family that does not exist is failed on its own and left out.
fn build_batch(db: &DB, round: Vec<LogWrite>) -> (WriteBatch, Vec<LogWrite>) {
    let mut batch = WriteBatch::default();
    let mut accepted = Vec::with_capacity(round.len());
    'writes: for write in round {
        for op in &write.ops {
            let name = match op {
                LogOp::Put { cf, .. } | LogOp::DeleteRange { cf, .. } => cf,
            };
            if db.cf_handle(name).is_none() {
                let name = name.to_string();
                (write.done)(Err(StoreError::MissingColumnFamily { name }));
                continue 'writes;
            }
        }
        for op in &write.ops {
            match op {
                LogOp::Put { cf, key, value } => {
                    if let Some(cf) = db.cf_handle(cf) {
                        batch.put_cf(&cf, key, value);
                    }
                }
                LogOp::DeleteRange { cf, from, to } => {
                    if let Some(cf) = db.cf_handle(cf) {
                        batch.delete_range_cf(&cf, from, to);
                    }
                }
            }
        }
        accepted.push(write);
    }
    (batch, accepted)
}

/// Converts a writer result for openraft's flush callback.
pub(crate) fn to_io(result: Result<(), StoreError>) -> Result<(), io::Error> {
    result.map_err(StoreError::into_io)
}
