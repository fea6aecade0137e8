//! A session handed from one node of a cluster to another.
//!
//! The node that holds a session hands it over when a client reconnects
//! to another node: first a copy of everything ([`SessionState::handover`]),
//! while the session is held by no connection, then, once the other node
//! has stored that copy, what was queued since (`handover` again, from
//! where the copy ended). The other node builds its session from the copy
//! ([`SessionState::adopt`]) before its client gets CONNACK.

use super::{Inflight, InflightState, Queued, SessionState, SubscriptionEntry};
use crate::durable::{DiskRef, StoredSession, StoredSubscription};
use crate::message::Delivery;

/// What a session holds, as another node takes it.
#[derive(Debug, Default)]
pub struct Handed {
    /// Its subscriptions, expiry, protocol and user name (the epoch is the
    /// old node's; the new node starts its own).
    pub session: Option<StoredSession>,
    /// Packet ids of inbound QoS 2 messages not yet released.
    pub inbound_qos2: Vec<u16>,
    /// Messages in flight to the client, in send order, then the queue.
    pub messages: Vec<HandedMessage>,
    /// Queued messages that are on disk only, each with the place in
    /// `messages` it goes before (`messages.len()`: after them all), in
    /// queue order: the owner reads them back and puts them there.
    pub stored: Vec<(usize, DiskRef)>,
    /// Where the queue stood: the next copy starts here.
    pub queue_end: usize,
}

impl Handed {
    /// The messages in queue order, with the stored ones read back
    /// (`loaded[i]` for `stored[i]`; `None`: gone from the store) put in
    /// their places.
    pub fn in_order(self, loaded: Vec<Option<HandedMessage>>) -> Vec<HandedMessage> {
        let mut places = self.stored.iter().map(|(place, _)| *place).peekable();
        let mut loaded = loaded.into_iter();
        let mut ordered = Vec::with_capacity(self.messages.len() + self.stored.len());
        for (i, message) in self.messages.into_iter().enumerate() {
            while places.next_if_eq(&i).is_some() {
                ordered.extend(loaded.next().flatten());
            }
            ordered.push(message);
        }
        ordered.extend(loaded.flatten());
        ordered
    }
}

/// One message of a handed session.
#[derive(Debug, Clone)]
pub struct HandedMessage {
    /// The delivery (its disk place is the old node's, or the new node's
    /// once stored there).
    pub delivery: Delivery,
    /// In flight: its packet id and whether the client answered PUBREC.
    pub inflight: Option<(u16, bool)>,
}

impl SessionState {
    /// A copy of what the session holds for another node: its subscriptions
    /// and in-flight messages with the queue (`since` is `None`), or only
    /// what was queued at place `since` and after. Nothing is taken out:
    /// the session stays whole until the other node has it.
    pub fn handover(&self, key: &str, since: Option<usize>) -> Handed {
        let mut handed = Handed {
            queue_end: self.queue.len(),
            ..Handed::default()
        };
        let from = since.unwrap_or(0);
        if since.is_none() {
            handed.session = Some(self.described(key));
            handed.inbound_qos2 = self.inbound_qos2.iter().copied().collect();
            handed.messages = self
                .inflight
                .iter()
                .map(|i| HandedMessage {
                    delivery: i.delivery.clone(),
                    inflight: Some((i.packet_id, i.state == InflightState::AwaitPubComp)),
                })
                .collect();
        }
        for entry in self.queue.items.iter().skip(from) {
            match entry {
                Queued::Ready(delivery) => handed.messages.push(HandedMessage {
                    delivery: (**delivery).clone(),
                    inflight: None,
                }),
                Queued::Stored(at) | Queued::Recovered(at) => {
                    handed.stored.push((handed.messages.len(), *at));
                }
            }
        }
        handed
    }

    /// The session apart from its messages, persistent or not.
    pub(super) fn described(&self, key: &str) -> StoredSession {
        StoredSession {
            key: key.to_string(),
            epoch: self.durable.unwrap_or(0),
            expiry_secs: self.expiry_interval,
            protocol: self.protocol,
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(filter, entry)| StoredSubscription {
                    filter: filter.to_string(),
                    options: entry.options,
                    id: entry.id,
                })
                .collect(),
            username: self.username.clone(),
        }
    }

    /// Takes on a session another node handed over, stored here in `epoch`:
    /// its subscriptions (`subscriptions`, checked against the ACL by the
    /// caller), inbound QoS 2 state, and messages, each in flight again
    /// with its packet id or queued. Returns how many did not fit the queue.
    pub fn adopt(
        &mut self,
        session: &StoredSession,
        subscriptions: &[(String, SubscriptionEntry)],
        inbound_qos2: &[u16],
        epoch: u64,
        messages: Vec<HandedMessage>,
    ) -> usize {
        self.adopting = Some(Box::default());
        self.expiry_interval = session.expiry_secs;
        self.protocol = session.protocol;
        self.username = session.username.clone();
        self.durable = Some(epoch);
        // A reconnect resumes it (session present).
        self.generation = self.generation.max(1);
        self.inbound_qos2.extend(inbound_qos2.iter().copied());
        for (filter, entry) in subscriptions {
            self.subscriptions.insert(filter, *entry);
        }
        self.take_messages(messages, 0)
    }

    /// Records, while the session is being taken over, that a message was
    /// queued here.
    pub(super) fn note_adopted(&mut self, delivery: &Delivery) {
        if let (Some(seen), Some(id)) = (&mut self.adopting, delivery.message.id) {
            seen.insert(id);
        }
    }

    /// Ends the takeover: of the messages the other node queued last,
    /// those this node queued itself meanwhile are left out (a publish
    /// after this node's routes were in place and before the other node let
    /// go reached both).
    pub fn adopted(&mut self, mut last: Vec<HandedMessage>) -> Vec<HandedMessage> {
        if let Some(seen) = self.adopting.take() {
            last.retain(|m| m.delivery.message.id.is_none_or(|id| !seen.contains(&id)));
        }
        last
    }

    /// Puts messages another node handed over at place `at` of the queue
    /// (those in flight into the inflight window); returns how many did
    /// not fit.
    pub fn take_messages(&mut self, messages: Vec<HandedMessage>, at: usize) -> usize {
        let mut later = self.queue.items.split_off(at.min(self.queue.items.len()));
        self.queue.bytes -= later.iter().map(super::queue::entry_bytes).sum::<usize>();
        let mut dropped = 0;
        for message in messages {
            match message.inflight {
                Some((packet_id, released)) => self.inflight.push_back(Inflight {
                    packet_id,
                    delivery: Delivery {
                        dup: true,
                        ..message.delivery
                    },
                    state: match (released, message.delivery.qos) {
                        (true, _) => InflightState::AwaitPubComp,
                        (false, tidemq_proto::mqtt::QoS::ExactlyOnce) => InflightState::AwaitPubRec,
                        (false, _) => InflightState::AwaitPubAck,
                    },
                }),
                None => {
                    if self
                        .queue
                        .push(Queued::Ready(Box::new(message.delivery)))
                        .is_err()
                    {
                        dropped += 1;
                    }
                }
            }
        }
        for entry in later.drain(..) {
            if self.queue.push(entry).is_err() {
                dropped += 1;
            }
        }
        dropped
    }
}
