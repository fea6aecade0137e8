//! Handling of the packets a connected client sends.

use std::sync::Arc;
use std::time::Instant;

use tidemq_proto::mqtt::{
    AckProperties, Disconnect, Packet, PubResponse, Publish, QoS, ReasonCode, RetainHandling,
    SubAck, Subscribe, UnsubAck, Unsubscribe, parse_shared_filter,
};

use super::{Connection, End, Io};
use crate::auth::Action;
use crate::message::{Delivery, Message};
use crate::session::SubscriptionEntry;

impl Connection {
    /// Handles one packet; `Err` ends the connection.
    pub(super) fn handle(&mut self, packet: Packet, io: &mut Io) -> Result<(), End> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, io),
            Packet::PubAck(ack) => {
                self.session.lock().on_puback(ack.packet_id);
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
                self.session.lock().on_pubcomp(comp.packet_id);
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
                self.send(io, &Packet::PingResp);
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
        self.resolve_topic_alias(&mut publish)?;
        let config = self.shared.config.load();
        if publish.retain && !config.mqtt.retain_available {
            return Err(End::Violation(ReasonCode::RetainNotSupported));
        }
        let packet_id = publish.packet_id.unwrap_or(0);
        if publish.qos == QoS::ExactlyOnce {
            let state = self.session.lock();
            if state.inbound_qos2.contains(&packet_id) {
                // A resend of a message already accepted: acknowledge again,
                // do not route it twice.
                drop(state);
                self.send(io, &Packet::PubRec(PubResponse::success(packet_id)));
                return Ok(());
            }
            if state.inbound_qos2.len() >= self.receive_maximum {
                return Err(End::Violation(ReasonCode::ReceiveMaximumExceeded));
            }
        }
        let allowed = self.allowed(Action::Publish, &publish.topic);
        let qos = publish.qos;
        let mut reason = ReasonCode::Success;
        if allowed {
            let message = Arc::new(Message::from_publish(
                publish,
                Some(Arc::clone(&self.session.key)),
            ));
            self.shared.metrics.messages_in.inc();
            if message.retain {
                let count = self.shared.router.retain(&message);
                self.shared.metrics.retained.set(count as i64);
            }
            let outcome = self.shared.router.route(
                &message,
                &self.shared.sessions,
                config.session.queue_qos0_offline,
            );
            outcome.count_drops(&self.shared.metrics);
            if outcome.delivered == 0 && outcome.dropped() == 0 {
                reason = ReasonCode::NoMatchingSubscribers;
            }
        } else {
            self.shared
                .metrics
                .messages_dropped
                .with_label_values(&["not_authorized"])
                .inc();
            reason = ReasonCode::NotAuthorized;
        }
        let response = PubResponse {
            packet_id,
            reason,
            properties: AckProperties::default(),
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(io, &Packet::PubAck(response)),
            QoS::ExactlyOnce => {
                // A refused QoS 2 message ends its flow at PUBREC (5.0); in
                // 3.1.1 the flow always completes.
                if !reason.is_error() || !self.protocol.is_v5() {
                    self.session.lock().inbound_qos2.insert(packet_id);
                }
                self.send(io, &Packet::PubRec(response));
            }
        }
        Ok(())
    }

    /// Replaces an inbound topic alias by its topic, or records a new one.
    fn resolve_topic_alias(&mut self, publish: &mut Publish) -> Result<(), End> {
        let Some(alias) = publish.properties.topic_alias.take() else {
            return Ok(());
        };
        if alias == 0 || alias > self.alias_in_max {
            return Err(End::Violation(ReasonCode::TopicAliasInvalid));
        }
        if publish.topic.is_empty() {
            match self.alias_in.get(&alias) {
                Some(topic) => publish.topic = topic.clone(),
                None => return Err(End::Violation(ReasonCode::ProtocolError)),
            }
        } else {
            self.alias_in.insert(alias, publish.topic.clone());
        }
        Ok(())
    }

    fn on_pubrec(&mut self, rec: PubResponse, io: &mut Io) {
        let mut state = self.session.lock();
        if rec.reason.is_error() {
            state.on_pubrec_failed(rec.packet_id);
            return;
        }
        let known = state.on_pubrec(rec.packet_id);
        drop(state);
        let mut release = PubResponse::success(rec.packet_id);
        if !known {
            release.reason = ReasonCode::PacketIdentifierNotFound;
        }
        self.send(io, &Packet::PubRel(release));
    }

    fn on_pubrel(&mut self, rel: PubResponse, io: &mut Io) {
        let known = self.session.lock().inbound_qos2.remove(&rel.packet_id);
        let mut complete = PubResponse::success(rel.packet_id);
        if !known {
            complete.reason = ReasonCode::PacketIdentifierNotFound;
        }
        self.send(io, &Packet::PubComp(complete));
    }

    fn on_subscribe(&mut self, subscribe: Subscribe, io: &mut Io) {
        let now = Instant::now();
        let queue_qos0 = self.shared.config.load().session.queue_qos0_offline;
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for request in &subscribe.filters {
            let inner = match parse_shared_filter(&request.filter) {
                Ok(Some(shared)) => Some(shared.filter),
                Ok(None) => None,
                Err(_) => {
                    reasons.push(ReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            if !self.allowed(Action::Subscribe, &request.filter) {
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            let entry = SubscriptionEntry {
                options: request.options,
                id: subscribe.properties.subscription_identifier,
            };
            let existed = self
                .shared
                .router
                .subscribe(&self.session.key, &request.filter, entry);
            self.session
                .lock()
                .subscriptions
                .insert(request.filter.clone(), entry);
            reasons.push(ReasonCode::granted(request.options.qos));
            // Retained messages are never sent for a shared subscription.
            let send_retained = inner.is_none()
                && match request.options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for message in self.shared.router.retained_for(&request.filter, now) {
                    retained.push(Delivery {
                        qos: message.qos.min(request.options.qos),
                        message,
                        retain: true,
                        subscription_ids: entry.id.into_iter().collect(),
                    });
                }
            }
        }
        self.shared
            .metrics
            .subscriptions
            .set(self.shared.router.subscription_count() as i64);
        self.send(
            io,
            &Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                reasons,
                properties: AckProperties::default(),
            }),
        );
        // Queued after SUBACK, so the client sees the grant first.
        for delivery in retained {
            if self.session.enqueue(delivery, queue_qos0).is_err() {
                self.session.count_drop();
                self.shared
                    .metrics
                    .messages_dropped
                    .with_label_values(&["queue_full"])
                    .inc();
            }
        }
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe, io: &mut Io) {
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                let in_session = self.session.lock().subscriptions.remove(filter).is_some();
                let in_router = self.shared.router.unsubscribe(&self.session.key, filter);
                if in_session || in_router {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        self.shared
            .metrics
            .subscriptions
            .set(self.shared.router.subscription_count() as i64);
        self.send(
            io,
            &Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                reasons,
                properties: AckProperties::default(),
            }),
        );
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
        }
        End::ClientDisconnect(disconnect.reason)
    }

    /// Asks the ACL, if one is configured.
    pub(super) fn allowed(&self, action: Action, topic: &str) -> bool {
        let auth = self.shared.auth.load();
        auth.acl.as_ref().is_none_or(|acl| {
            acl.check(
                self.username.as_deref(),
                &self.session.client_id,
                action,
                topic,
            )
        })
    }
}
