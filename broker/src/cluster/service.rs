//! The receiving end of the links: `BrokerLink` on the node's gRPC server.
//! A forwarded message goes to this node's own subscribers only (it is
//! never forwarded again, so there are no loops), in the order its stream
//! carried it. A batch is acknowledged once its messages are queued for
//! the online subscribers and written for the persistent ones; the next
//! batch is routed meanwhile, so acknowledgements may come out of order.
//!
//! A replayed batch (from the sender's hand-off log) may carry messages
//! this node routed already, on a stream that broke before its
//! acknowledgement: it skips each whose number is not above the last it
//! routed from that sender since the start, or, for what it stored before
//! a crash, than the highest number its store held at start for that
//! sender and the message's partition (`Forwarded` records).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use tidemq_meta::NodeId;
use tidemq_proto::grpc::v1 as pb;
use tidemq_proto::grpc::v1::broker_link_server::BrokerLink;
use tidemq_proto::mqtt::{self, Packet, Protocol};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::link::MAX_BATCH_BYTES;
use super::table::RouteTable;
use crate::broker::Shared;
use crate::delivery::{DetachedWrite, ForwardedFrom};
use crate::message::{Message, MessageId};
use crate::router::{ShareId, Shares};

/// Longest a `RoutesApplied` or `FlushLink` call waits, whatever it asks for.
const MAX_ROUTES_WAIT: Duration = Duration::from_secs(10);

/// `BrokerLink` of this node.
pub(crate) struct LinkService {
    /// Set once the broker is serving; calls before that are refused.
    pub(crate) broker: Arc<OnceLock<Arc<Shared>>>,
    pub(crate) table: Arc<RouteTable>,
    pub(crate) received: prometheus::IntCounter,
    pub(crate) malformed: prometheus::IntCounter,
    pub(crate) duplicates: prometheus::IntCounter,
    /// Per sender, the number of the last message routed.
    pub(crate) routed: Arc<DashMap<NodeId, u64>>,
    /// Per (sender, message partition), the highest number the store held
    /// at start: what was stored before a crash.
    pub(crate) stored: Arc<DashMap<(NodeId, u32), u64>>,
}

impl LinkService {
    /// The generated server of this service, with the link's message limit.
    pub(crate) fn server(
        self,
    ) -> tidemq_proto::grpc::v1::broker_link_server::BrokerLinkServer<LinkService> {
        tidemq_proto::grpc::v1::broker_link_server::BrokerLinkServer::new(self)
            .max_decoding_message_size(MAX_BATCH_BYTES)
    }
}

/// The message a peer forwarded, decoded, and which of this node's
/// subscriptions get it.
pub(crate) fn decode(forwarded: pb::ForwardedMessage) -> Result<(Message, Shares), String> {
    let groups = forwarded
        .shares
        .iter()
        .map(|filter| ShareId::parse(filter).ok_or_else(|| format!("a bad share {filter:?}")))
        .collect::<Result<_, _>>()?;
    let shares = Shares::Only {
        plain: forwarded.plain,
        groups,
    };
    let mut buf = BytesMut::from(&forwarded.publish[..]);
    match mqtt::decode(&mut buf, Protocol::V5, usize::MAX) {
        Ok(Some(Packet::Publish(publish))) => {
            let publisher = (!forwarded.publisher.is_empty()).then(|| forwarded.publisher.into());
            Ok((Message::from_publish(publish, publisher), shares))
        }
        Ok(Some(other)) => Err(format!("a {} packet, not a PUBLISH", other.type_number())),
        Ok(None) => Err("a truncated PUBLISH".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits for each batch's store writes in the order the batches came,
/// queues their deliveries on the sessions in that order (the writes of
/// one batch run side by side, but a session must get a sender's messages
/// in order), then acknowledges the batch.
async fn complete_in_order(
    shared: Arc<Shared>,
    mut written: mpsc::Receiver<(Vec<DetachedWrite>, pb::ForwardAck)>,
    acks: mpsc::Sender<Result<pb::ForwardAck, Status>>,
) {
    while let Some((writes, ack)) = written.recv().await {
        for write in futures_util::future::join_all(writes).await {
            crate::delivery::enqueue_stored(&shared, write);
        }
        if acks.send(Ok(ack)).await.is_err() {
            return;
        }
    }
}

/// A forwarded message as the copy rule sees it.
struct Sent {
    origin: NodeId,
    /// Its number (0: unnumbered, never a copy).
    sequence: u64,
    /// Whether it came in a replayed batch: only those may be copies.
    replay: bool,
    /// The message partition its persistent deliveries are stored in.
    partition: Option<u32>,
}

impl Sent {
    /// Whether this node routed the message already (recording that it
    /// has now): a replayed message numbered no higher than the last routed
    /// from its sender since the start, or than the highest the store held
    /// at start for its sender and partition (the sender's messages for one
    /// partition are stored in the order of their numbers).
    fn is_copy(&self, routed: &DashMap<NodeId, u64>, stored: &DashMap<(NodeId, u32), u64>) -> bool {
        if self.sequence == 0 {
            return false;
        }
        let mut last = routed.entry(self.origin).or_insert(0);
        let stored_before = || {
            self.partition.is_some_and(|partition| {
                stored
                    .get(&(self.origin, partition))
                    .is_some_and(|highest| self.sequence <= *highest)
            })
        };
        let copy = self.replay && (self.sequence <= *last || stored_before());
        *last = (*last).max(self.sequence);
        copy
    }
}

#[tonic::async_trait]
impl BrokerLink for LinkService {
    type ForwardStream = ReceiverStream<Result<pb::ForwardAck, Status>>;

    async fn forward(
        &self,
        request: Request<Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let shared = self
            .broker
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("the broker is still starting"))?;
        let mut batches = request.into_inner();
        let (acks, rx) = mpsc::channel(16);
        // Batches whose stored deliveries are being written, in order.
        let (writing, written) = mpsc::channel(16);
        tokio::spawn(complete_in_order(Arc::clone(&shared), written, acks));
        let (received, malformed) = (self.received.clone(), self.malformed.clone());
        let (duplicates, routed) = (self.duplicates.clone(), Arc::clone(&self.routed));
        let stored = Arc::clone(&self.stored);
        tokio::spawn(async move {
            loop {
                let batch = match batches.message().await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => return,
                    Err(status) => {
                        debug!(error = %status, "a peer's link closed");
                        return;
                    }
                };
                let mut writes = Vec::new();
                for forwarded in batch.messages {
                    // Acknowledged with its batch, after all before it.
                    if forwarded.barrier {
                        continue;
                    }
                    // Only a replayed message may be a copy of a stored one.
                    let partition = shared
                        .durable
                        .as_ref()
                        .filter(|_| batch.replay)
                        .map(|store| store.partition_for(&forwarded.publisher));
                    let sent = Sent {
                        origin: batch.origin,
                        sequence: forwarded.sequence,
                        replay: batch.replay,
                        partition,
                    };
                    if sent.is_copy(&routed, &stored) {
                        duplicates.inc();
                        continue;
                    }
                    let from = (sent.sequence != 0).then_some(ForwardedFrom {
                        node: sent.origin,
                        sequence: sent.sequence,
                    });
                    let id = MessageId::from_wire(batch.origin, forwarded.message_id);
                    match decode(forwarded) {
                        Ok((mut message, shares)) => {
                            message.id = id;
                            received.inc();
                            writes.extend(crate::delivery::publish_forwarded(
                                &shared,
                                &Arc::new(message),
                                shares,
                                from,
                            ));
                        }
                        Err(reason) => {
                            malformed.inc();
                            warn!(origin = batch.origin, %reason, "a peer forwarded a bad message");
                        }
                    }
                }
                let ack = pb::ForwardAck {
                    sequence: batch.sequence,
                };
                if writing.send((writes, ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type TakeSessionStream = ReceiverStream<Result<pb::HandedPart, Status>>;

    async fn take_session(
        &self,
        request: Request<Streaming<pb::TakeStep>>,
    ) -> Result<Response<Self::TakeSessionStream>, Status> {
        let shared = self
            .broker
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("the broker is still starting"))?;
        let (out, rx) = mpsc::channel(4);
        tokio::spawn(super::takeover::give(shared, request.into_inner(), out));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn routes_applied(
        &self,
        request: Request<pb::RoutesAppliedRequest>,
    ) -> Result<Response<pb::RoutesAppliedReply>, Status> {
        let request = request.into_inner();
        let wait = Duration::from_millis(u64::from(request.wait_ms)).min(MAX_ROUTES_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let applied = self.table.wait_applied(request.index, wait).await;
        // What this node forwards to the asker after its SUBACK must find
        // a link that is not down (after the asker's restart, say).
        let cluster = self.broker.get().and_then(|shared| shared.cluster.clone());
        if let Some(cluster) = cluster
            && !cluster.link_ready(request.node_id, deadline).await
        {
            return Err(Status::unavailable("the link to the asking node is down"));
        }
        Ok(Response::new(pb::RoutesAppliedReply { applied }))
    }

    async fn flush_link(
        &self,
        request: Request<pb::FlushLinkRequest>,
    ) -> Result<Response<pb::FlushLinkReply>, Status> {
        let request = request.into_inner();
        let wait = Duration::from_millis(u64::from(request.wait_ms)).min(MAX_ROUTES_WAIT);
        let cluster = self.broker.get().and_then(|shared| shared.cluster.clone());
        let flushed = match cluster {
            Some(cluster) => cluster.link_flushed(request.node_id, wait).await,
            // Not serving yet: nothing was forwarded from here.
            None => true,
        };
        Ok(Response::new(pb::FlushLinkReply { flushed }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(origin: NodeId, sequence: u64, replay: bool, partition: Option<u32>) -> Sent {
        Sent {
            origin,
            sequence,
            replay,
            partition,
        }
    }

    #[test]
    fn a_replay_skips_what_was_routed_and_a_first_send_never_is_skipped() {
        let (routed, stored) = (DashMap::new(), DashMap::new());
        let copy = |origin, sequence, replay| {
            sent(origin, sequence, replay, None).is_copy(&routed, &stored)
        };
        assert!(!copy(1, 10, false));
        assert!(!copy(1, 11, false));
        // Sent again by a replay: skipped; beyond: routed.
        assert!(copy(1, 10, true));
        assert!(copy(1, 11, true));
        assert!(!copy(1, 12, true));
        // Another sender counts apart.
        assert!(!copy(2, 5, true));
        // A first send below the last (a sender whose clock went back) is
        // routed: only a replay may be a copy.
        assert!(!copy(1, 3, false));
        assert!(copy(1, 12, true));
        // Unnumbered messages always are.
        assert!(!copy(1, 0, true));
    }

    #[test]
    fn after_a_restart_what_the_store_held_per_partition_is_skipped() {
        let routed = DashMap::new();
        let stored = DashMap::from_iter([((1, 0), 20), ((1, 1), 15)]);
        let copy = |sequence, partition| {
            sent(1, sequence, true, Some(partition)).is_copy(&routed, &stored)
        };
        // Partition 1 held up to 15: 16 was not stored there yet.
        assert!(copy(14, 1));
        assert!(copy(15, 1));
        assert!(!copy(16, 1));
        // Partition 0 held up to 20 (16 is below the last routed anyway).
        assert!(copy(17, 0));
        assert!(copy(20, 0));
        assert!(!copy(21, 0));
    }
}
