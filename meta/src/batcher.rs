//! Application-level batching of writes to one Raft group.
//!
//! The Raft core is a single-threaded actor: every `client_write` is one
//! trip through it, its log append and its apply. Under thousands of
//! concurrent writers that queue is the latency (background report 000).
//! So concurrent writes to a group are coalesced into one
//! [`MetaRequest::Batch`] entry: the batcher takes everything queued (up to
//! `max_requests` and `max_bytes`), writes it as one entry, and while that
//! write is in flight the next batch accumulates. A lone write on an idle
//! group is sent at once: nothing ever waits for a timer.

use std::sync::Arc;
use std::time::Instant;

use openraft::Raft;
use prometheus::Histogram;
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use crate::error::MetaError;
use crate::types::{MetaRequest, MetaResponse, TypeConfig};

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Requests per Raft entry.
    pub max_requests: usize,
    /// Approximate serialized bytes per Raft entry.
    pub max_bytes: usize,
    /// Batches of one group in flight at once.
    pub max_inflight: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_requests: 2048,
            max_bytes: 4 * 1024 * 1024,
            max_inflight: 2,
        }
    }
}

struct Pending {
    request: MetaRequest,
    size: usize,
    reply: oneshot::Sender<Result<MetaResponse, MetaError>>,
}

/// The write path of one Raft group. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

/// Metrics of the batchers.
#[derive(Clone)]
pub struct BatchMetrics {
    /// Time from a batch's submission to its commit and apply.
    pub write_ms: Histogram,
    /// Requests per Raft entry.
    pub batch_size: Histogram,
}

impl Batcher {
    /// Starts the batcher task of `raft` on the current runtime.
    pub fn spawn(
        raft: Raft<TypeConfig>,
        limits: BatchLimits,
        metrics: BatchMetrics,
    ) -> (Batcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(limits.max_requests.max(1) * 4);
        let task = tokio::spawn(run(raft, rx, limits, metrics));
        (Batcher { tx }, task)
    }

    /// Writes `request` through Raft, coalesced with concurrent writes.
    pub async fn write(
        &self,
        request: MetaRequest,
        size: usize,
    ) -> Result<MetaResponse, MetaError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                request,
                size,
                reply,
            })
            .await
            .map_err(|_| MetaError::Closed)?;
        rx.await.map_err(|_| MetaError::Closed)?
    }
}

async fn run(
    raft: Raft<TypeConfig>,
    mut rx: mpsc::Receiver<Pending>,
    limits: BatchLimits,
    metrics: BatchMetrics,
) {
    let inflight = Arc::new(Semaphore::new(limits.max_inflight.max(1)));
    loop {
        // Wait for a slot first, so requests keep accumulating while the
        // group is busy; then take whatever is queued.
        let Ok(permit) = Arc::clone(&inflight).acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < limits.max_requests && bytes < limits.max_bytes {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.size;
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            write_batch(&raft, batch, &metrics).await;
            drop(permit);
        });
    }
}

async fn write_batch(raft: &Raft<TypeConfig>, batch: Vec<Pending>, metrics: &BatchMetrics) {
    metrics.batch_size.observe(batch.len() as f64);
    let started = Instant::now();
    let (mut requests, replies): (Vec<MetaRequest>, Vec<_>) =
        batch.into_iter().map(|p| (p.request, p.reply)).unzip();
    let request = match requests.pop() {
        Some(only) if requests.is_empty() => only,
        Some(last) => {
            requests.push(last);
            MetaRequest::Batch(requests)
        }
        None => return,
    };
    let result = raft.client_write(request).await;
    metrics
        .write_ms
        .observe(started.elapsed().as_secs_f64() * 1e3);
    let responses = match result {
        Ok(written) => match written.data {
            MetaResponse::Batch(responses)
                if replies.len() > 1 && responses.len() == replies.len() =>
            {
                responses.into_iter().map(Ok).collect()
            }
            response if replies.len() == 1 => vec![Ok(response)],
            other => {
                warn!(?other, "batch answered with an unexpected response");
                replies
                    .iter()
                    .map(|_| {
                        Err(MetaError::Raft {
                            reason: "unexpected response to a batch".into(),
                        })
                    })
                    .collect()
            }
        },
        Err(e) => replies
            .iter()
            .map(|_| Err(MetaError::from_raft(&e)))
            .collect(),
    };
    for (reply, response) in replies.into_iter().zip(responses) {
        let _ = reply.send(response);
    }
}
