//! Sessions: what the broker keeps for a client across its connections.
//!
//! A [`Session`] holds the client's subscriptions, the deliveries queued for
//! it, the QoS 1/2 messages in flight towards it and the QoS 2 packet ids it
//! has in flight towards the broker. Its state sits behind a plain mutex
//! that is never held across an `.await`; routers push deliveries in and
//! ring [`Session::doorbell`], and the connection task (the only writer to the
//! client's socket) takes them out as its inflight window allows.
//!
//! The queue of deliveries is a [`MemoryQueue`]: in memory here, replaceable
//! by a durable implementation without touching the connection code.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tidemq_proto::mqtt::{LastWill, Protocol, Publish, QoS, SubscriptionOptions};

use crate::durable::{DiskRef, StoredSession};
use crate::message::{Delivery, MessageId};

mod doorbell;
mod handover;
mod key;
mod queue;
mod subscriptions;
mod takeover;
pub use doorbell::Doorbell;
pub use handover::{Handed, HandedMessage};
pub use key::SessionKey;
pub use queue::{MemoryQueue, Queued};
pub use subscriptions::Subscriptions;
use takeover::Takeover;

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The session's queue is at its message or byte limit.
    QueueFull,
    /// QoS 0 message for a session with no connection.
    OfflineQoS0,
    /// The message expired before it could be sent.
    Expired,
    /// The message is larger than the client's maximum packet size.
    TooLarge,
    /// A stored message waited longer than `session.max_message_age_secs`.
    TooOld,
}

impl DropReason {
    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::OfflineQoS0 => "offline_qos0",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
            DropReason::TooOld => "too_old",
        }
    }
}

/// Where an outbound QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Each variant names the packet it waits for.
#[allow(clippy::enum_variant_names)]
pub enum InflightState {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

/// An outbound QoS 1/2 message that the client has not completed.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Its packet id.
    pub packet_id: u16,
    /// What was sent.
    pub delivery: Delivery,
    /// Where it stands.
    pub state: InflightState,
}

/// One subscription of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionEntry {
    /// The options it was made with.
    pub options: SubscriptionOptions,
    /// Its 5.0 subscription identifier.
    pub id: Option<u32>,
    /// Whether the ACL denies some of the topics the filter matches: each
    /// message is then checked before it is delivered.
    pub acl_filtered: bool,
}

/// The live connection attached to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    /// Connection id, unique per broker.
    pub connection_id: u64,
}

/// What an acknowledgement from the client did to an outbound delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// No delivery with that packet id was waiting for it.
    NotInFlight,
    /// It moved on a delivery that lives in memory only.
    InMemory,
    /// It moved on a delivery whose message is in the store at this place.
    Stored(DiskRef),
}

impl Ack {
    fn of(stored: Option<DiskRef>) -> Ack {
        stored.map_or(Ack::InMemory, Ack::Stored)
    }

    /// Where the message is stored, if the delivery was known and stored.
    pub fn stored(self) -> Option<DiskRef> {
        match self {
            Ack::Stored(at) => Some(at),
            Ack::NotInFlight | Ack::InMemory => None,
        }
    }

    /// Whether a delivery was waiting for this acknowledgement.
    pub fn known(self) -> bool {
        self != Ack::NotInFlight
    }
}

/// Who may attach to a session.
#[derive(Debug, Clone, Copy)]
pub enum Claim<'a> {
    /// Any connection.
    Anyone,
    /// Only a connection with the user name that used the session before
    /// (a session of an anonymous client belongs to nobody).
    Owned {
        /// The user name of the connection asking.
        username: Option<&'a str>,
    },
}

/// Why [`Session::attach`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The session has ended.
    Ended,
    /// It belongs to another user.
    NotOwner,
}

/// What [`Session::attach`] found.
#[derive(Debug)]
pub struct Attached {
    /// The connection that had the session until now.
    pub previous: Option<Attachment>,
    /// Whether an earlier connection used the session (there is state to
    /// resume, unless the new connection starts clean).
    pub resumable: bool,
    /// A delayed will of the previous connection: cancelled when the
    /// session is resumed, published when it starts clean.
    pub pending_will: Option<PendingWill>,
}

/// A will waiting for its delay to pass.
#[derive(Debug, Clone)]
pub struct PendingWill {
    /// The will.
    pub will: LastWill,
    /// The user name of the connection that left it, for the ACL.
    pub username: Option<String>,
    /// The session generation it belongs to.
    pub generation: u64,
}

/// The mutable part of a session.
pub struct SessionState {
    /// Protocol of the last connection.
    pub protocol: Protocol,
    /// User name of the last connection, for the ACL.
    pub username: Option<String>,
    /// Subscriptions by filter (shared ones keep their `$share/...` form).
    pub subscriptions: Subscriptions,
    /// Deliveries not sent yet.
    pub queue: MemoryQueue,
    /// Outbound QoS 1/2 messages in send order.
    pub inflight: VecDeque<Inflight>,
    /// Packet ids of inbound QoS 2 messages received and not yet released.
    pub inbound_qos2: BTreeSet<u16>,
    /// Session expiry interval in seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// The connection using this session, if any.
    pub attachment: Option<Attachment>,
    /// The last takeover, until the connection taken over has detached.
    takeover: Takeover,
    /// Bumped on every (re)connect; timers check it to know they are stale.
    pub generation: u64,
    /// A will waiting for its delay. Boxed: most sessions never have one,
    /// and every one pays for the space.
    pub pending_will: Option<Box<PendingWill>>,
    /// Stored messages that expired before they were sent: the connection
    /// records them as completed.
    pub expired_stored: Vec<DiskRef>,
    /// The epoch of a session kept in the message store; `None` for a
    /// session that lives only in memory.
    pub durable: Option<u64>,
    /// Set once the session has ended: it is on its way out of the
    /// registry and the router, and no connection may attach to it.
    pub ended: bool,
    /// The expiry and will-delay timers armed while the session is offline;
    /// a connection that attaches cancels them.
    pub timers: Vec<tokio::task::AbortHandle>,
    /// While the session is being taken over from another node: the ids of
    /// the messages queued here meanwhile, which that node may hand over
    /// too (boxed so the field costs one word: almost no session ever has
    /// one, and every idle connection carries a session).
    #[allow(clippy::box_collection)]
    pub adopting: Option<Box<HashSet<MessageId>>>,
    next_packet_id: u16,
}

/// A client's session. See the [module docs](self).
pub struct Session {
    /// `{tenant}/{client_id}`.
    pub key: SessionKey,
    /// Rung when a delivery is queued for the connection to send, and when
    /// the broker shuts down.
    pub doorbell: Doorbell,
    /// Deliveries dropped for this session.
    pub dropped: AtomicU64,
    state: Mutex<SessionState>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The client identifier (part of the key).
    pub fn client_id(&self) -> &str {
        self.key.client_id()
    }

    /// A new, empty session.
    pub fn new(key: SessionKey, protocol: Protocol, queue: MemoryQueue) -> Self {
        Self {
            key,
            doorbell: Doorbell::default(),
            dropped: AtomicU64::new(0),
            state: Mutex::new(SessionState {
                protocol,
                username: None,
                subscriptions: Subscriptions::new(),
                queue,
                inflight: VecDeque::new(),
                inbound_qos2: BTreeSet::new(),
                expiry_interval: 0,
                attachment: None,
                takeover: Takeover::default(),
                generation: 0,
                pending_will: None,
                expired_stored: Vec::new(),
                durable: None,
                ended: false,
                timers: Vec::new(),
                adopting: None,
                next_packet_id: 1,
            }),
        }
    }

    /// Locks the state. Never hold the guard across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a delivery and wakes the connection.
    pub fn enqueue(&self, delivery: Delivery, queue_qos0_offline: bool) -> Result<(), DropReason> {
        {
            let mut state = self.lock();
            if delivery.qos == QoS::AtMostOnce && state.attachment.is_none() && !queue_qos0_offline
            {
                return Err(DropReason::OfflineQoS0);
            }
            state.note_adopted(&delivery);
            state.queue.push(Queued::Ready(Box::new(delivery)))?;
        }
        self.doorbell.ring();
        Ok(())
    }

    /// Queues a delivery that is in the message store, if the session is
    /// still in the epoch it was stored for. An offline session keeps only
    /// its disk reference.
    pub fn enqueue_stored(&self, delivery: Delivery, epoch: u64) -> Result<(), DropReason> {
        {
            let mut state = self.lock();
            if state.durable != Some(epoch) {
                // A clean start since: the message belonged to the old session.
                return Ok(());
            }
            state.note_adopted(&delivery);
            let stored = delivery.stored;
            let entry = match (state.attachment.is_some(), delivery.stored) {
                (false, Some(at)) => Queued::Stored(at),
                _ => Queued::Ready(Box::new(delivery)),
            };
            match (state.queue.push(entry), stored) {
                (Ok(()), _) => {}
                // Over the byte limit in memory, a message that is on disk
                // waits there (it was acknowledged to its publisher): it is
                // read back when it reaches the front of the queue.
                (Err(DropReason::QueueFull), Some(at)) => state.queue.push(Queued::Stored(at))?,
                (Err(reason), _) => return Err(reason),
            }
        }
        self.doorbell.ring();
        Ok(())
    }

    /// Counts a dropped delivery.
    pub fn count_drop(&self) {
        self.count_drops(1);
    }

    /// Counts `n` dropped deliveries.
    pub fn count_drops(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

impl SessionState {
    /// Moves queued deliveries into flight while the window allows and
    /// returns the PUBLISH packets to send, at most `max` of them (expired
    /// ones are dropped and reported through `on_drop`).
    pub fn take_sendable(
        &mut self,
        window: usize,
        max: usize,
        now: Instant,
        mut on_drop: impl FnMut(DropReason),
    ) -> Vec<Publish> {
        let mut out = Vec::new();
        while self.inflight.len() < window && out.len() < max {
            let (packet_id, stored) = match self.queue.front() {
                None | Some(Queued::Stored(_) | Queued::Recovered(_)) => break,
                Some(Queued::Ready(delivery)) => match delivery.stored {
                    Some(at) => {
                        // Stored messages keep the packet id their place
                        // gives them; wait while it is still in flight.
                        let id = at.packet_id();
                        if self.inflight.iter().any(|i| i.packet_id == id) {
                            break;
                        }
                        (Some(id), true)
                    }
                    None => (None, false),
                },
            };
            let Some(Queued::Ready(delivery)) = self.queue.pop() else {
                break;
            };
            let delivery = *delivery;
            if delivery.message.is_expired(now) {
                on_drop(DropReason::Expired);
                if stored {
                    self.expired_stored.extend(delivery.stored);
                }
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                out.push(delivery.to_publish(None, false, now));
                continue;
            }
            let packet_id = match packet_id {
                Some(id) => id,
                None => self.allocate_packet_id(),
            };
            out.push(delivery.to_publish(Some(packet_id), delivery.dup, now));
            let state = match delivery.qos {
                QoS::ExactlyOnce => InflightState::AwaitPubRec,
                _ => InflightState::AwaitPubAck,
            };
            self.inflight.push_back(Inflight {
                packet_id,
                delivery,
                state,
            });
        }
        out
    }

    /// Whether the front of the queue must be read from the store first.
    pub fn needs_load(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Queued::Stored(_) | Queued::Recovered(_))
        )
    }

    /// The next packet id not in flight.
    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    /// Completes a QoS 1 delivery (PUBACK).
    pub fn on_puback(&mut self, packet_id: u16) -> Ack {
        self.complete(packet_id, InflightState::AwaitPubAck)
    }

    /// Moves a QoS 2 delivery on to PUBREL (PUBREC).
    pub fn on_pubrec(&mut self, packet_id: u16) -> Ack {
        let Some(inflight) = self
            .inflight
            .iter_mut()
            .find(|i| i.packet_id == packet_id && i.state == InflightState::AwaitPubRec)
        else {
            return Ack::NotInFlight;
        };
        inflight.state = InflightState::AwaitPubComp;
        Ack::of(inflight.delivery.stored)
    }

    /// Drops a QoS 2 delivery the client refused in PUBREC (reason >= 0x80).
    pub fn on_pubrec_failed(&mut self, packet_id: u16) -> Ack {
        self.complete(packet_id, InflightState::AwaitPubRec)
    }

    /// Completes a QoS 2 delivery (PUBCOMP).
    pub fn on_pubcomp(&mut self, packet_id: u16) -> Ack {
        self.complete(packet_id, InflightState::AwaitPubComp)
    }

    /// Frees the slot of a delivery that was never sent (QoS 1 or 2).
    pub fn on_unsent(&mut self, packet_id: u16) -> Ack {
        match self.on_puback(packet_id) {
            Ack::NotInFlight => self.on_pubrec_failed(packet_id),
            done => done,
        }
    }

    fn complete(&mut self, packet_id: u16, expected: InflightState) -> Ack {
        let Some(index) = self
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.state == expected)
        else {
            return Ack::NotInFlight;
        };
        match self.inflight.remove(index) {
            Some(inflight) => Ack::of(inflight.delivery.stored),
            None => Ack::NotInFlight,
        }
    }

    /// What the message store keeps of this session, if it is persistent.
    pub fn stored(&self, key: &str) -> Option<StoredSession> {
        self.durable.map(|_| self.described(key))
    }

    /// Calls `each` with every disk reference the session still needs.
    pub fn for_each_stored(&self, each: &mut dyn FnMut(DiskRef)) {
        self.queue.for_each_stored(each);
        for at in self.inflight.iter().filter_map(|i| i.delivery.stored) {
            each(at);
        }
    }

    /// The disk references below `end` in `partition` if every one of them
    /// may move to another place: the session is offline and each is an
    /// unsent stored entry of its queue (none loaded, in flight or sent
    /// before a restart). `None` when one may not.
    pub fn movable_below(&self, partition: u32, end: u64) -> Option<Vec<DiskRef>> {
        let below = |at: &DiskRef| at.partition == partition && at.offset < end;
        if self
            .inflight
            .iter()
            .filter_map(|i| i.delivery.stored)
            .any(|at| below(&at))
        {
            return None;
        }
        let movable = self.queue.unsent_stored(&below)?;
        // A connected session is about to take its messages: leave them.
        (movable.is_empty() || self.attachment.is_none()).then_some(movable)
    }

    /// Gives back the room of emptied queues: a session that once had a
    /// burst keeps no memory for it once its connection is idle.
    pub fn shrink_idle(&mut self) {
        self.queue.shrink_if_empty();
        self.subscriptions.shrink_to_fit();
        if self.inflight.is_empty() {
            self.inflight = VecDeque::new();
        }
        if self.expired_stored.is_empty() {
            self.expired_stored = Vec::new();
        }
    }

    /// Cancels the offline timers (expiry, will delay).
    pub fn cancel_timers(&mut self) {
        for timer in self.timers.drain(..) {
            timer.abort();
        }
    }

    /// Clears everything a clean start discards.
    pub fn reset(&mut self) {
        self.subscriptions.clear();
        self.queue.clear();
        self.inflight.clear();
        self.inbound_qos2.clear();
        self.expired_stored.clear();
        self.next_packet_id = 1;
    }
}

/// Every session of the broker, by flat key `{tenant}/{client_id}`.
#[derive(Default)]
pub struct SessionRegistry {
    sessions: dashmap::DashMap<SessionKey, Arc<Session>>,
    next_connection_id: AtomicU64,
    /// Notified whenever a connection that was taken over has detached
    /// ([`Session::depart`]); the connections that took over wait on it.
    departures: tokio::sync::Notify,
}

impl SessionRegistry {
    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The session with this key.
    pub fn get(&self, key: &str) -> Option<Arc<Session>> {
        self.sessions.get(key).map(|s| Arc::clone(&s))
    }

    /// The session for a key, created by `create` when there is none.
    /// Returns it and whether it already existed.
    pub fn get_or_insert_with(
        &self,
        key: &SessionKey,
        create: impl FnOnce() -> Session,
    ) -> (Arc<Session>, bool) {
        let entry = self.sessions.entry(key.clone());
        let existed = matches!(entry, dashmap::Entry::Occupied(_));
        let session = Arc::clone(entry.or_insert_with(|| Arc::new(create())).value());
        (session, existed)
    }

    /// Removes a session if it is still `session` (not a newer one).
    pub fn remove(&self, session: &Arc<Session>) -> bool {
        self.sessions
            .remove_if(&*session.key, |_, current| Arc::ptr_eq(current, session))
            .is_some()
    }

    /// Calls `each` with every session.
    pub fn for_each(&self, mut each: impl FnMut(&Arc<Session>)) {
        for entry in &self.sessions {
            each(entry.value());
        }
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests;
