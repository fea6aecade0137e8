//! Coalescing of one process's session writes: concurrent
//! [`MetaClient::put_session`] calls leave as one CreateSessions request.
//!
//! A broker writes a session on every persistent CONNECT. One gRPC request
//! per session costs an HTTP/2 stream, a protobuf round trip and a Raft
//! batcher slot each; under a connect storm that per-request cost, not Raft,
//! bounds the rate. Here every write queued while earlier requests are on
//! their way goes out together in the next request (up to
//! [`COALESCE_MAX_SESSIONS`] sessions or [`COALESCE_MAX_BYTES`]), with at
//! most [`COALESCE_IN_FLIGHT`] requests in flight. A lone write leaves at
//! once: nothing waits for a timer.
//!
//! Writes of one caller keep their order, since each call returns only once
//! its write is applied. Writes of different callers that are in flight at
//! the same time have no order between them, as with separate requests.

use std::sync::{Arc, Weak};

use tidemq_proto::grpc::v1 as pb;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::client::{Inner, MetaClient};
use crate::error::MetaError;

/// Most sessions in one coalesced request.
pub const COALESCE_MAX_SESSIONS: usize = 1024;
/// About the most bytes of sessions in one coalesced request (well under
/// gRPC's 4 MiB message limit).
pub const COALESCE_MAX_BYTES: usize = 1 << 20;
/// Coalesced requests in flight at once.
pub const COALESCE_IN_FLIGHT: usize = 4;

/// A write and who waits for it.
struct Pending {
    session: pb::Session,
    done: oneshot::Sender<Result<(), Arc<MetaError>>>,
}

/// The queue of a client's session writes; its task ends when the client
/// (every clone) is dropped.
pub(crate) struct SessionWriter {
    queue: mpsc::UnboundedSender<Pending>,
}

impl SessionWriter {
    /// Starts the writer task on `runtime`.
    pub(crate) fn start(runtime: &tokio::runtime::Handle, client: Weak<Inner>) -> SessionWriter {
        let (queue, pending) = mpsc::unbounded_channel();
        runtime.spawn(run(client, pending));
        SessionWriter { queue }
    }

    /// Queues `session` and waits until it is applied (or failed).
    pub(crate) async fn put(&self, session: pb::Session) -> Result<(), MetaError> {
        let (done, result) = oneshot::channel();
        self.queue
            .send(Pending { session, done })
            .map_err(|_| MetaError::Closed)?;
        match result.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(MetaError::Coalesced(e)),
            Err(_) => Err(MetaError::Closed),
        }
    }
}

/// Approximate encoded size of a session.
fn size(session: &pb::Session) -> usize {
    session.client_key.len() + session.payload.len() + 32
}

async fn run(client: Weak<Inner>, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let permits = Arc::new(Semaphore::new(COALESCE_IN_FLIGHT));
    let mut carry: Option<Pending> = None;
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let mut bytes = size(&first.session);
        let mut batch = vec![first];
        while batch.len() < COALESCE_MAX_SESSIONS {
            let Ok(pending) = queue.try_recv() else {
                break;
            };
            bytes += size(&pending.session);
            if bytes > COALESCE_MAX_BYTES {
                carry = Some(pending);
                break;
            }
            batch.push(pending);
        }
        let Some(inner) = client.upgrade() else {
            return;
        };
        let client = MetaClient { inner };
        tokio::spawn(async move {
            let _permit = permit;
            let (sessions, waiters): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.session, p.done)).unzip();
            let result = client
                .create_sessions(sessions)
                .await
                .map(|_| ())
                .map_err(Arc::new);
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        });
    }
}
