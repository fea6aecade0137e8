//! One live session per client id across the cluster: a client that
//! connects to another node than the one holding its session takes the
//! session over from that node (`BrokerLink.TakeSession`).
//!
//! The meta service's record of a persistent session names the node that
//! holds it. A CONNECT on node B for a session node A holds, per that
//! record, goes:
//!
//! 1. B asks A to hand it over. A attaches the session to no connection,
//!    which disconnects its client (5.0: DISCONNECT 0x8E) exactly as a
//!    takeover on one node does, and waits until that connection is gone.
//!    For a clean start A ends the session there (its record and store
//!    entry gone before it answers) and that is all.
//! 2. A sends a copy of the session: subscriptions, the messages in flight
//!    to the client with their packet ids, the queue (read back from disk
//!    where it is stored there), the inbound QoS 2 packet ids. It keeps the
//!    session meanwhile: messages still reach it.
//! 3. B stores the messages as its own, builds the session, subscribes it
//!    (its routes applied by every node, as for a SUBACK) and records it
//!    in its store and the meta service as its own.
//! 4. B commits. A stops routing to the session, sends what was queued
//!    since its copy, and forgets the session (its store only: the meta
//!    record is B's now). B puts those messages after the copy, ahead of
//!    what it received itself meanwhile, and answers CONNACK with session
//!    present.
//!
//! A stream that ends before the commit leaves the session with A (its
//! client offline, its expiry running again); B refuses its CONNECT
//! (0x88) once `cluster.takeover_wait_ms` has passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemq_meta::NodeId;
use tidemq_proto::grpc::v1 as pb;
use tidemq_proto::grpc::v1::broker_link_client::BrokerLinkClient;
use tidemq_proto::grpc::v1::handed_part::Part;
use tidemq_proto::grpc::v1::take_step::Step;
use tidemq_proto::mqtt::QoS;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use super::Cluster;
use super::link::MAX_BATCH_BYTES;
use crate::broker::Shared;
use crate::durable::record::{self, RecipientRef};
use crate::durable::{AppendGuard, DiskRef, DurableError, Record, SessionCatalog, StoredSession};
use crate::message::{Delivery, MessageId};
use crate::session::{Attachment, Claim, Handed, HandedMessage, Refusal, Session};

/// Messages in one part of a hand-over, at most.
const PART_MESSAGES: usize = 256;
/// Bytes of one part, about at most (a message of any size a link carries
/// fits a part alone).
const PART_BYTES: usize = 1024 * 1024;

/// Why a session could not be taken from the node holding it.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// The meta service or the store could not be read or written.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// The holding node could not be asked.
    #[error("node {owner} holding the session cannot be reached: {reason}")]
    Unreachable {
        /// The node holding the session.
        owner: NodeId,
        /// What failed.
        reason: String,
    },
    /// The session belongs to another user than the one asking.
    #[error("the session belongs to another user")]
    NotOwner,
    /// The holding node sent something that is not a hand-over.
    #[error("node {owner} sent a bad hand-over: {reason}")]
    Malformed {
        /// The node holding the session.
        owner: NodeId,
        /// What was wrong.
        reason: String,
    },
}

/// A session a node handed over, stored here but not committed yet.
pub(crate) struct Taken {
    owner: NodeId,
    /// What the owner sent (the messages not stored here yet).
    pub(crate) session: StoredSession,
    pub(crate) inbound_qos2: Vec<u16>,
    pub(crate) messages: Vec<HandedMessage>,
    steps: mpsc::Sender<pb::TakeStep>,
    parts: Streaming<pb::HandedPart>,
}

impl Cluster {
    /// Asks the node holding `key`, as the meta service records it, to hand
    /// the session over (`resume`), or to end it (a clean start), if `claim`
    /// may have it. `None` when no other node holds it (or it was ended
    /// there).
    pub(crate) async fn take_session(
        &self,
        catalog: &SessionCatalog,
        key: &str,
        resume: bool,
        claim: Claim<'_>,
    ) -> Result<Option<Taken>, TakeoverError> {
        let Some(owner) = catalog.owner(key).await? else {
            return Ok(None);
        };
        // A node that left the cluster took its sessions with it.
        let Some(addr) = self.peers.addr_of(owner).filter(|_| owner != self.me) else {
            return Ok(None);
        };
        let unreachable = |reason: String| TakeoverError::Unreachable { owner, reason };
        let channel = self
            .channels
            .get(&addr)
            .map_err(|e| unreachable(e.to_string()))?;
        let (steps, rx) = mpsc::channel(2);
        let (owned, username) = match claim {
            Claim::Anyone => (false, None),
            Claim::Owned { username } => (true, username.map(str::to_string)),
        };
        let take = pb::TakeSession {
            client_key: key.to_string(),
            node_id: self.me,
            resume,
            owned,
            username,
        };
        let _ = steps.try_send(pb::TakeStep {
            step: Some(Step::Take(take)),
        });
        let mut parts = BrokerLinkClient::new(channel)
            .max_encoding_message_size(MAX_BATCH_BYTES)
            .max_decoding_message_size(MAX_BATCH_BYTES)
            .take_session(ReceiverStream::new(rx))
            .await
            .map_err(|s| unreachable(s.message().to_string()))?
            .into_inner();
        let (header, messages) = read_parts(owner, &mut parts, true).await?;
        if header.as_ref().is_some_and(|h| h.not_owner) {
            return Err(TakeoverError::NotOwner);
        }
        let header = header.filter(|h| h.found && resume);
        let Some(header) = header else {
            debug!(
                owner,
                resume, "no session to resume from the node the meta service named"
            );
            return Ok(None);
        };
        let malformed = |reason: String| TakeoverError::Malformed { owner, reason };
        let session = match Record::decode(header.record.into()) {
            Ok(Record::Session(session)) if session.key == key => session,
            Ok(_) => return Err(malformed("not this session's record".into())),
            Err(e) => return Err(malformed(e.to_string())),
        };
        let inbound_qos2 = header
            .inbound_qos2
            .into_iter()
            .filter_map(|id| u16::try_from(id).ok())
            .collect();
        Ok(Some(Taken {
            owner,
            session,
            inbound_qos2,
            messages,
            steps,
            parts,
        }))
    }

    /// Counts a session that moved here, or a CONNECT refused because it
    /// could not.
    pub(crate) fn count_takeover(&self, taken: bool) {
        let result = if taken { "taken" } else { "failed" };
        self.metrics.takeovers.with_label_values(&[result]).inc();
    }
}

impl Taken {
    /// The node that held the session.
    pub(crate) fn owner(&self) -> NodeId {
        self.owner
    }

    /// Tells the owner the session is stored here: it forgets it and sends
    /// what it queued since its copy.
    pub(crate) async fn commit(mut self) -> Result<Vec<HandedMessage>, TakeoverError> {
        let commit = pb::TakeStep {
            step: Some(Step::Commit(pb::CommitTake {})),
        };
        let owner = self.owner;
        if self.steps.send(commit).await.is_err() {
            return Err(TakeoverError::Unreachable {
                owner,
                reason: "the stream ended before the commit".into(),
            });
        }
        let (_, messages) = read_parts(owner, &mut self.parts, false).await?;
        Ok(messages)
    }
}

/// Reads parts up to `end`: the session part first when `header`, then
/// messages.
async fn read_parts(
    owner: NodeId,
    parts: &mut Streaming<pb::HandedPart>,
    header: bool,
) -> Result<(Option<pb::HandedSession>, Vec<HandedMessage>), TakeoverError> {
    let malformed = |reason: String| TakeoverError::Malformed { owner, reason };
    let mut session = None;
    let mut messages = Vec::new();
    loop {
        let part = parts
            .message()
            .await
            .map_err(|s| TakeoverError::Unreachable {
                owner,
                reason: s.message().to_string(),
            })?;
        match part.and_then(|p| p.part) {
            Some(Part::Session(s)) if header && session.is_none() => {
                let found = s.found;
                session = Some(s);
                if !found {
                    return Ok((session, messages));
                }
            }
            Some(Part::Messages(m)) if session.is_some() || !header => {
                for message in m.messages {
                    messages.push(from_pb(message).map_err(malformed)?);
                }
            }
            Some(Part::End(_)) if session.is_some() || !header => return Ok((session, messages)),
            None => return Err(malformed("the stream ended early".into())),
            Some(_) => return Err(malformed("parts out of order".into())),
        }
    }
}

fn to_pb(message: &HandedMessage) -> Option<pb::HandedMessage> {
    let forwarded = super::encode(&message.delivery.message)?;
    let (packet_id, released) = message.inflight.unwrap_or((0, false));
    Some(pb::HandedMessage {
        publish: forwarded.publish,
        publisher: forwarded.publisher,
        qos: message.delivery.qos as u32,
        retain: message.delivery.retain,
        subscription_ids: message.delivery.subscription_ids.clone(),
        packet_id: u32::from(packet_id),
        released,
        origin: message.delivery.message.id.map_or(0, |id| id.node),
        message_id: message.delivery.message.id.map_or(0, |id| id.seq),
    })
}

fn from_pb(message: pb::HandedMessage) -> Result<HandedMessage, String> {
    let forwarded = pb::ForwardedMessage {
        publish: message.publish,
        publisher: message.publisher,
        ..pb::ForwardedMessage::default()
    };
    let (mut decoded, _) = super::service::decode(forwarded)?;
    decoded.id = MessageId::from_wire(message.origin, message.message_id);
    let qos = u8::try_from(message.qos)
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("QoS {}", message.qos))?;
    let packet_id =
        u16::try_from(message.packet_id).map_err(|_| format!("packet id {}", message.packet_id))?;
    Ok(HandedMessage {
        delivery: Delivery {
            message: Arc::new(decoded),
            qos,
            retain: message.retain,
            subscription_ids: message.subscription_ids,
            stored: None,
            dup: false,
        },
        inflight: (packet_id != 0).then_some((packet_id, message.released)),
    })
}

/// Stores handed messages as this node's for the session `key` in `epoch`
/// (one `Publish` record each, in order, in the session's own partition;
/// a `Released` record after each the client answered PUBREC for) and
/// returns them with their places here, and the guard that keeps the trim
/// off them until the session holds them.
pub(crate) async fn store_handed(
    shared: &Shared,
    key: &str,
    epoch: u64,
    mut messages: Vec<HandedMessage>,
) -> Result<(Vec<HandedMessage>, Option<AppendGuard>), DurableError> {
    let Some(store) = &shared.durable else {
        return Ok((messages, None));
    };
    let partition = store.partition_for(key);
    let guard = store.begin_append(partition);
    let now = Instant::now();
    for chunk in messages.chunks_mut(PART_MESSAGES) {
        let mut records = Vec::with_capacity(chunk.len());
        for handed in chunk.iter() {
            let d = &handed.delivery;
            let recipient = RecipientRef {
                key,
                epoch,
                qos: d.qos,
                retain: d.retain,
                subscription_ids: &d.subscription_ids,
            };
            let bytes = record::publish_record(
                &record::message_publish(&d.message),
                record::expiry_to_unix(&d.message, now),
                None,
                std::iter::once(recipient),
            )?;
            records.push(store.checked_size(bytes)?);
        }
        let first = store.send_records(partition, records)?.await?;
        for (handed, offset) in chunk.iter_mut().zip(first..) {
            let at = DiskRef { partition, offset };
            handed.delivery.stored = Some(at);
            if handed.inflight.is_some_and(|(_, released)| released) {
                store.released(at, key, epoch).await?;
            }
        }
    }
    Ok((messages, Some(guard)))
}

/// Serves `TakeSession`: hands a session of this node to the node asking.
pub(crate) async fn give(
    shared: Arc<Shared>,
    mut steps: Streaming<pb::TakeStep>,
    out: mpsc::Sender<Result<pb::HandedPart, Status>>,
) {
    let take = match steps.message().await {
        Ok(Some(pb::TakeStep {
            step: Some(Step::Take(take)),
        })) => take,
        _ => return,
    };
    let Some(session) = shared.sessions.get(&take.client_key) else {
        let _ = out.send(Ok(header(None))).await;
        return;
    };
    let claim = if take.owned {
        Claim::Owned {
            username: take.username.as_deref(),
        }
    } else {
        Claim::Anyone
    };
    let phantom = match hold(&shared, &session, claim, take.resume).await {
        Ok(phantom) => phantom,
        Err(Refusal::NotOwner) => {
            debug!(client = %take.client_key, from = take.node_id, "a session was asked for by another user: kept");
            let _ = out.send(Ok(not_owner())).await;
            return;
        }
        Err(Refusal::Ended) => {
            let _ = out.send(Ok(header(None))).await;
            return;
        }
    };
    let cluster = shared.cluster.clone();
    let count = |result: &str| {
        if let Some(cluster) = &cluster {
            cluster.metrics.takeovers.with_label_values(&[result]).inc();
        }
    };
    if !take.resume {
        // A clean start elsewhere: the session ends here, before the other
        // node writes its own record.
        crate::connection::end_for_takeover(&shared, &session, true).await;
        let _ = out.send(Ok(header(None))).await;
        count("ended");
        return;
    }
    let copy = session.lock().handover(&take.client_key, None);
    let queue_end = copy.queue_end;
    let wait = shared.config.load().cluster.takeover_wait();
    let sent = send_handed(&shared, &out, &take.client_key, copy).await;
    let committed = sent
        && matches!(
            tokio::time::timeout(wait, steps.message()).await,
            Ok(Ok(Some(pb::TakeStep {
                step: Some(Step::Commit(_))
            })))
        );
    if !committed {
        warn!(client = %take.client_key, to = take.node_id, "a session's hand-over was not completed: it stays here");
        crate::connection::hold_released(&shared, &session, phantom);
        count("kept");
        return;
    }
    // What other members sent here for the session before the taking
    // node's routes reached them arrives first (half the wait at most: the
    // taking node waits for the rest as long as for the commit).
    if let Some(cluster) = &cluster {
        let deadline = tokio::time::Instant::now() + wait / 2;
        cluster.links_flushed_to_me(deadline).await;
    }
    // Nothing reaches the session from here on; what reached it since the
    // copy goes to the other node too.
    shared.router.remove_session(&session);
    let rest = session.lock().handover(&take.client_key, Some(queue_end));
    crate::connection::end_for_takeover(&shared, &session, false).await;
    if send_handed(&shared, &out, &take.client_key, rest).await {
        count("given");
        info!(client = %take.client_key, to = take.node_id, "session handed over");
    }
}

/// Takes `session` from its connection (which closes: 5.0 DISCONNECT 0x8E)
/// and waits until that has gone; the session is then attached to no
/// connection. Refused when the session ended meanwhile, or `claim` may
/// not have it (its connection is then left alone).
async fn hold(
    shared: &Shared,
    session: &Session,
    claim: Claim<'_>,
    resume: bool,
) -> Result<Attachment, Refusal> {
    let phantom = Attachment {
        connection_id: shared.sessions.next_connection_id(),
    };
    let attached = session
        .attach(phantom, claim, resume)
        .map_err(|(_, refusal)| refusal)?;
    if let Some(previous) = attached.previous
        && !shared
            .sessions
            .wait_departure(session, previous.connection_id, Duration::from_secs(5))
            .await
    {
        warn!(client = %session.client_id(), "the connection taken over did not close in time");
    }
    Ok(phantom)
}

/// Sends a copy of a session (or what was queued since one): its header
/// part first when it has one, the messages in parts (stored ones read
/// back first), then `end`. Returns whether all of it went out.
async fn send_handed(
    shared: &Shared,
    out: &mpsc::Sender<Result<pb::HandedPart, Status>>,
    key: &str,
    handed: Handed,
) -> bool {
    if let Some(session) = &handed.session {
        let mut first = header(Some(session));
        if let Some(Part::Session(s)) = &mut first.part {
            s.inbound_qos2 = handed
                .inbound_qos2
                .iter()
                .map(|&id| u32::from(id))
                .collect();
        }
        if out.send(Ok(first)).await.is_err() {
            return false;
        }
    }
    let refs: Vec<DiskRef> = handed.stored.iter().map(|(_, at)| *at).collect();
    let loaded = match load(shared, key, &refs).await {
        Ok(loaded) => loaded,
        Err(e) => {
            warn!(client = key, error = %e, "cannot read a session's stored messages to hand it over");
            let _ = out.send(Err(Status::internal(e.to_string()))).await;
            return false;
        }
    };
    let messages = handed.in_order(loaded);
    let mut part = Vec::new();
    let mut bytes = 0;
    for message in &messages {
        let Some(encoded) = to_pb(message) else {
            continue;
        };
        let size = encoded.publish.len() + 64;
        if !part.is_empty() && (part.len() >= PART_MESSAGES || bytes + size > PART_BYTES) {
            if !send_part(out, std::mem::take(&mut part)).await {
                return false;
            }
            bytes = 0;
        }
        bytes += size;
        part.push(encoded);
    }
    if !part.is_empty() && !send_part(out, part).await {
        return false;
    }
    out.send(Ok(end())).await.is_ok()
}

async fn send_part(
    out: &mpsc::Sender<Result<pb::HandedPart, Status>>,
    messages: Vec<pb::HandedMessage>,
) -> bool {
    let part = pb::HandedPart {
        part: Some(Part::Messages(pb::HandedMessages { messages })),
    };
    out.send(Ok(part)).await.is_ok()
}

/// Reads back the stored messages of a session's queue, one answer per
/// reference (`None`: gone from the store, which `load` logs).
async fn load(
    shared: &Shared,
    key: &str,
    refs: &[DiskRef],
) -> Result<Vec<Option<HandedMessage>>, DurableError> {
    let Some(store) = &shared.durable else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(refs.len());
    for chunk in refs.chunks(PART_MESSAGES) {
        // One answer per reference, in their order.
        out.extend(
            store
                .load(key, chunk)
                .await?
                .into_iter()
                .map(|(_, delivery)| {
                    delivery.map(|delivery| HandedMessage {
                        delivery,
                        inflight: None,
                    })
                }),
        );
    }
    Ok(out)
}

/// The first part: the session's record, or that there is none.
fn header(session: Option<&StoredSession>) -> pb::HandedPart {
    let record = session.map(|s| Record::Session(s.clone()).encode());
    let handed = match record {
        Some(Ok(record)) => pb::HandedSession {
            found: true,
            record,
            ..pb::HandedSession::default()
        },
        Some(Err(e)) => {
            warn!(error = %e, "cannot encode a session to hand it over");
            pb::HandedSession::default()
        }
        None => pb::HandedSession::default(),
    };
    pb::HandedPart {
        part: Some(Part::Session(handed)),
    }
}

/// The only part when the session belongs to another user.
fn not_owner() -> pb::HandedPart {
    pb::HandedPart {
        part: Some(Part::Session(pb::HandedSession {
            not_owner: true,
            ..pb::HandedSession::default()
        })),
    }
}

fn end() -> pb::HandedPart {
    pb::HandedPart {
        part: Some(Part::End(pb::HandedEnd {})),
    }
}
