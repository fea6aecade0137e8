//! Handling of the packets a connected client sends.

use std::sync::Arc;

use tidemq_proto::mqtt::{
    AckProperties, Disconnect, Packet, PubResponse, Publish, QoS, ReasonCode,
};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tracing::Instrument;

use super::acks::{Work, Write};
use super::{Connection, End, Io};
use crate::auth::Action;
use crate::cluster::Confirms;
use crate::delivery::{self, PendingRecord, Stored, ToStore};
use crate::durable::{DiskRef, DurableError, Origin};
use crate::message::Message;

/// What a PUBLISH waits for before its acknowledgement.
type PublishWrite = Write<PendingRecord, Stored>;

impl Connection {
    /// Handles one packet; `Err` ends the connection.
    pub(super) fn handle(&mut self, packet: Packet, io: &mut Io) -> Result<(), End> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, io),
            Packet::PubAck(ack) => {
                let done = self.session.lock().on_puback(ack.packet_id);
                self.completed(done.stored());
                Ok(())
            }
            Packet::PubRec(rec) => {
                self.on_pubrec(rec, io);
                Ok(())
            }
            Packet::PubRel(rel) => {
                self.on_pubrel(rel, io);
                Ok(())
            }
            Packet::PubComp(comp) => {
                let done = self.session.lock().on_pubcomp(comp.packet_id);
                self.completed(done.stored());
                Ok(())
            }
            Packet::Subscribe(subscribe) => {
                self.on_subscribe(subscribe, io);
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.on_unsubscribe(unsubscribe, io);
                Ok(())
            }
            Packet::PingReq => {
                self.reply(io, Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => Err(self.on_disconnect(disconnect)),
            // No enhanced authentication method is offered, so AUTH is never valid.
            Packet::Auth(_) => Err(End::Violation(ReasonCode::ProtocolError)),
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => Err(End::Violation(ReasonCode::ProtocolError)),
        }
    }

    fn on_publish(&mut self, mut publish: Publish, io: &mut Io) -> Result<(), End> {
        self.aliases.resolve(&mut publish).map_err(End::Violation)?;
        let config = self.shared.config.load();
        if publish.retain && !config.mqtt.retain_available {
            return Err(End::Violation(ReasonCode::RetainNotSupported));
        }
        let packet_id = publish.packet_id.unwrap_or(0);
        let qos = publish.qos;
        if qos == QoS::ExactlyOnce && self.qos2_received(packet_id) {
            // A resend of a message already accepted (or being written):
            // acknowledge again in its turn, do not route it twice.
            self.reply(io, Packet::PubRec(PubResponse::success(packet_id)));
            return Ok(());
        }
        if qos != QoS::AtMostOnce && self.unacknowledged() >= self.limits.receive_maximum() {
            return Err(End::Violation(ReasonCode::ReceiveMaximumExceeded));
        }
        let max_properties = self.shared.config.load().mqtt.max_user_properties;
        let (reason, write) = if publish.properties.user_properties.len() > max_properties {
            // Every subscriber would get a copy of them.
            self.count_dropped("too_many_user_properties");
            (ReasonCode::QuotaExceeded, Write::None)
        } else if self.allowed(Action::Publish, &publish.topic) {
            self.route(publish, packet_id)?
        } else {
            self.count_dropped("not_authorized");
            (ReasonCode::NotAuthorized, Write::None)
        };
        let response = PubResponse {
            packet_id,
            reason,
            properties: AckProperties::default(),
        };
        let (response, qos2) = match qos {
            QoS::AtMostOnce => (None, None),
            QoS::AtLeastOnce => (Some(Packet::PubAck(response)), None),
            // A refused QoS 2 message ends its flow at PUBREC (5.0); in
            // 3.1.1 the flow always completes. The packet id counts as
            // received only once the message is written.
            QoS::ExactlyOnce => {
                let flows = !reason.is_error() || !self.protocol.is_v5();
                (Some(Packet::PubRec(response)), flows.then_some(packet_id))
            }
        };
        self.respond(
            io,
            Work {
                qos2,
                publish: qos != QoS::AtMostOnce,
                refusal: self.refusal(qos, packet_id),
                ..Work::after(write, response)
            },
        );
        Ok(())
    }

    /// What the publisher is told if its message cannot be stored (a full
    /// disk): a 5.0 client gets PUBACK/PUBREC 0x97 (quota exceeded) and
    /// stays connected; a 3.1.1 client cannot be told, so its connection
    /// ends before anything is acknowledged (`None`). A QoS 0 message has no
    /// answer either way.
    fn refusal(&self, qos: QoS, packet_id: u16) -> Option<Option<Packet>> {
        let response = PubResponse {
            packet_id,
            reason: ReasonCode::QuotaExceeded,
            properties: AckProperties::default(),
        };
        match qos {
            QoS::AtMostOnce => Some(None),
            _ if !self.protocol.is_v5() => None,
            QoS::AtLeastOnce => Some(Some(Packet::PubAck(response))),
            QoS::ExactlyOnce => Some(Some(Packet::PubRec(response))),
        }
    }

    /// Counts a PUBLISH that was not routed.
    pub(super) fn count_dropped(&self, reason: &str) {
        self.shared
            .metrics
            .messages_dropped
            .with_label_values(&[reason])
            .inc();
    }

    /// Whether an inbound QoS 2 message with this packet id was received
    /// (or is being written).
    fn qos2_received(&self, packet_id: u16) -> bool {
        self.acks.qos2_in_progress(packet_id)
            || self.session.lock().inbound_qos2.contains(&packet_id)
    }

    /// QoS 1/2 messages received and not acknowledged yet, as the receive
    /// maximum counts them: 5.0 counts every one until its PUBACK or
    /// PUBCOMP; 3.1.1 has no receive maximum, so only unreleased QoS 2 flows
    /// count (QoS 1 messages waiting for the store hold input back instead).
    fn unacknowledged(&self) -> usize {
        let unreleased = self.session.lock().inbound_qos2.len();
        if self.protocol.is_v5() {
            unreleased + self.acks.unacked_publishes()
        } else {
            unreleased
        }
    }

    /// Routes an authorized PUBLISH: in-memory deliveries are queued now;
    /// returns the reason code for the publisher and what the store must
    /// write before it is acknowledged.
    fn route(
        &mut self,
        publish: Publish,
        packet_id: u16,
    ) -> Result<(ReasonCode, PublishWrite), End> {
        let qos = publish.qos;
        let mut message =
            Message::from_publish(publish, Some(Arc::clone(self.session.key.as_arc())));
        message.id = self.shared.cluster.as_ref().map(|c| c.next_message_id());
        let message = Arc::new(message);
        self.shared.metrics.messages_in.inc();
        // A QoS 2 message names its flow, so that a resend after a crash is
        // recognised.
        let origin = match (qos, self.session.lock().durable) {
            (QoS::ExactlyOnce, Some(epoch)) => Some(Origin {
                key: self.session.key.to_string(),
                epoch,
                packet_id,
            }),
            _ => None,
        };
        let (outcome, to_store, confirms) =
            delivery::route(&self.shared, &message, origin, delivery::Scope::Cluster).map_err(
                |e| {
                    delivery::count_storage_error(&self.shared.metrics);
                    tracing::warn!(error = %e, "cannot store a message");
                    End::ServerError
                },
            )?;
        outcome.count_drops(&self.shared.metrics);
        let reason = if outcome.retain_refused {
            ReasonCode::QuotaExceeded
        } else if outcome.delivered == 0 && outcome.dropped() == 0 && outcome.forwarded == 0 {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        let write = match to_store {
            ToStore::Nothing if confirms.is_empty() => Write::None,
            ToStore::Record(record) if confirms.is_empty() => Write::Record(record),
            // The other nodes' confirmations: the record waits with them
            // instead of joining this pass's shared write.
            ToStore::Nothing => Write::Alone(
                confirms
                    .confirmed()
                    .map(|confirmed| confirmed.map(|()| None).map_err(DurableError::from))
                    .boxed(),
            ),
            ToStore::Record(record) => {
                let write = delivery::write_records(&self.shared, vec![record])
                    .map(|r| r.map(|mut stored| stored.pop()));
                Write::Alone(wait_both(&self.shared, write, confirms))
            }
            ToStore::Write(write) => Write::Alone(wait_both(&self.shared, write, confirms)),
        };
        Ok((reason, write))
    }

    /// Sends `response` in its turn, once `write` is on disk.
    pub(super) fn respond_after(
        &mut self,
        io: &mut Io,
        write: impl Future<Output = Result<(), DurableError>> + Send + 'static,
        response: Packet,
    ) {
        let write = Write::Alone(write.map(|r| r.map(|()| None)).boxed());
        self.respond(io, Work::after(write, Some(response)));
    }

    /// Notes that a stored message was completed (PUBACK, PUBCOMP, refused
    /// in PUBREC, expired or never sent); the pass records it at its end
    /// ([`Connection::record_completions`]).
    pub(super) fn completed(&mut self, stored: Option<DiskRef>) {
        self.completions.extend(stored);
    }

    /// Records the completions of this pass without waiting, one record per
    /// partition: at worst a message is sent again after a crash, which QoS
    /// 1 and 2 allow.
    pub(super) fn record_completions(&mut self) {
        if self.completions.is_empty() {
            return;
        }
        if let Some((store, epoch)) = self.durable() {
            // Their order within a record does not matter.
            self.completions.sort_unstable_by_key(|at| at.partition);
            let mut offsets = Vec::with_capacity(self.completions.len());
            for run in self.completions.chunk_by(|a, b| a.partition == b.partition) {
                offsets.clear();
                offsets.extend(run.iter().map(|at| at.offset));
                store.acks(run[0].partition, &self.session.key, epoch, &offsets);
            }
        }
        self.completions.clear();
    }

    fn on_pubrec(&mut self, rec: PubResponse, io: &mut Io) {
        if rec.reason.is_error() {
            let done = self.session.lock().on_pubrec_failed(rec.packet_id);
            self.completed(done.stored());
            return;
        }
        let known = self.session.lock().on_pubrec(rec.packet_id);
        let mut release = PubResponse::success(rec.packet_id);
        if !known.known() {
            release.reason = ReasonCode::PacketIdentifierNotFound;
        }
        let release = Packet::PubRel(release);
        // PUBREL only once the store knows PUBREC came: after a crash the
        // message must not be sent again, since the client may have
        // forgotten the packet id by then.
        match (known.stored(), self.durable()) {
            (Some(at), Some((store, epoch))) => {
                let key = self.session.key.to_string();
                self.respond_after(
                    io,
                    async move { store.released(at, &key, epoch).await },
                    release,
                );
            }
            _ => self.reply(io, release),
        }
    }

    fn on_pubrel(&mut self, rel: PubResponse, io: &mut Io) {
        let known = self.session.lock().inbound_qos2.remove(&rel.packet_id);
        let mut complete = PubResponse::success(rel.packet_id);
        if !known {
            complete.reason = ReasonCode::PacketIdentifierNotFound;
        }
        let complete = Packet::PubComp(complete);
        // PUBCOMP frees the packet id for a new message: the store must
        // forget it first, or a restart would take the new message for a
        // resend of the old one.
        match self.durable().filter(|_| known) {
            Some((store, epoch)) => {
                let key = self.session.key.to_string();
                let packet_id = rel.packet_id;
                self.respond_after(
                    io,
                    async move { store.inbound_released(&key, epoch, packet_id).await },
                    complete,
                );
            }
            None => self.reply(io, complete),
        }
    }

    /// A client DISCONNECT; may change the session expiry (5.0).
    fn on_disconnect(&mut self, disconnect: Disconnect) -> End {
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.connect_expiry == 0 && expiry != 0 {
                // MQTT-3.14.2-2: a session that was to end may not be extended.
                return End::Violation(ReasonCode::ProtocolError);
            }
            let max = self.shared.config.load().mqtt.max_session_expiry_secs;
            self.session.lock().expiry_interval = expiry.min(max);
            if expiry > 0
                && let Some(write) = self.persist_session()
            {
                let metrics = self.shared.metrics.clone();
                tokio::spawn(
                    async move {
                        if let Err(e) = write.await {
                            delivery::count_storage_error(&metrics);
                            tracing::warn!(error = %e, "cannot store a session's new expiry");
                        }
                    }
                    .in_current_span(),
                );
            }
        }
        End::ClientDisconnect(disconnect.reason)
    }

    /// Asks the ACL, if one is configured. Nobody publishes to `$SYS`.
    pub(super) fn allowed(&self, action: Action, topic: &str) -> bool {
        if action == Action::Publish && crate::sys::is_sys(topic) {
            return false;
        }
        let auth = self.shared.auth.load();
        auth.acl.as_ref().is_none_or(|acl| {
            acl.check(
                self.username.as_deref(),
                self.session.client_id(),
                action,
                topic,
            )
        })
    }
}

/// A store write and the other nodes' confirmations, side by side. When a
/// node's copy could not be kept, the publisher is refused, but what was
/// stored here is still delivered.
fn wait_both(
    shared: &Arc<crate::broker::Shared>,
    write: impl Future<Output = Result<Option<Stored>, DurableError>> + Send + 'static,
    confirms: Confirms,
) -> BoxFuture<'static, Result<Option<Stored>, DurableError>> {
    let shared = Arc::clone(shared);
    async move {
        let (written, confirmed) = futures_util::future::join(write, confirms.confirmed()).await;
        let stored = written?;
        if let Err(refused) = confirmed {
            if let Some(stored) = stored {
                stored.enqueue(&shared.metrics);
            }
            return Err(refused.into());
        }
        Ok(stored)
    }
    .boxed()
}
