//! Application messages as the broker routes them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidemq_proto::mqtt::{Publish, PublishProperties, QoS};

use crate::durable::DiskRef;

/// A message accepted from a publisher (or a will), shared by every
/// subscriber it is routed to.
#[derive(Debug)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// The publisher's retain flag.
    pub retain: bool,
    /// Properties forwarded to subscribers (topic alias and subscription
    /// identifiers removed; those are per connection).
    pub properties: PublishProperties,
    /// The session key of the publisher, for no-local subscriptions.
    pub publisher: Option<Arc<str>>,
    /// Which publish this is, in a cluster (the same on every node it
    /// reaches); `None` outside one.
    pub id: Option<MessageId>,
    /// When the message expires (5.0 message expiry interval).
    pub expires_at: Option<Instant>,
}

/// Names one publish across a cluster: the node it was published on and
/// that node's number for it (increasing across the node's restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    /// The node the message was published on.
    pub node: u64,
    /// That node's number for it.
    pub seq: u64,
}

impl MessageId {
    /// The id a peer sent as its node and number (`seq` 0: none).
    pub fn from_wire(node: u64, seq: u64) -> Option<MessageId> {
        (seq != 0).then_some(MessageId { node, seq })
    }
}

impl Message {
    /// Builds a message from an inbound PUBLISH whose topic is resolved.
    pub fn from_publish(publish: Publish, publisher: Option<Arc<str>>) -> Message {
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = properties
            .message_expiry_interval
            .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
        Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            publisher,
            id: None,
            expires_at,
        }
    }

    /// Whether the message's expiry interval has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The expiry interval left, in whole seconds (rounded up), if it has one.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// Approximate memory held by the message, for queue limits: topic,
    /// payload and every property a subscriber gets a copy of.
    pub fn size(&self) -> usize {
        let p = &self.properties;
        let text = |s: &Option<Arc<str>>| s.as_ref().map_or(0, |s| s.len());
        let user: usize = p
            .user_properties
            .iter()
            .map(|(key, value)| key.len() + value.len() + 2 * std::mem::size_of::<String>())
            .sum();
        self.topic.len()
            + self.payload.len()
            + text(&p.response_topic)
            + text(&p.content_type)
            + p.correlation_data.as_ref().map_or(0, |d| d.len())
            + user
    }
}

/// One message on its way to one subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    /// The retain flag to send.
    pub retain: bool,
    /// Identifiers of the subscriptions that matched (5.0).
    pub subscription_ids: Vec<u32>,
    /// Where the message is stored for this (persistent) session; `None`
    /// for a delivery that lives only in memory.
    pub stored: Option<DiskRef>,
    /// Send with DUP set: it may have been sent before a restart.
    pub dup: bool,
}

impl Delivery {
    /// The PUBLISH for this delivery, before topic aliasing.
    pub fn to_publish(&self, packet_id: Option<u16>, dup: bool, now: Instant) -> Publish {
        let mut properties = self.message.properties.clone();
        properties.subscription_identifiers = self.subscription_ids.clone();
        properties.message_expiry_interval = self.message.remaining_expiry(now);
        Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.message.topic.clone(),
            packet_id,
            properties,
            payload: self.message.payload.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use tidemq_proto::mqtt::{Publish, PublishProperties, QoS};

    use super::{Delivery, Message};

    #[test]
    fn every_recipient_shares_the_properties_of_one_message() {
        let user: Vec<(String, String)> = (0..1000)
            .map(|i| (format!("k{i}"), "v".repeat(100)))
            .collect();
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: Some(1),
            properties: PublishProperties {
                response_topic: Some("r".repeat(10_000).into()),
                user_properties: user.into(),
                ..PublishProperties::default()
            },
            payload: Bytes::from_static(b"x"),
        };
        let message = Arc::new(Message::from_publish(publish, None));
        assert!(message.size() > 100_000, "every property byte counts");
        let delivery = Delivery {
            message: Arc::clone(&message),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![3],
            stored: None,
            dup: false,
        };
        let now = Instant::now();
        let (a, b) = (
            delivery.to_publish(Some(1), false, now),
            delivery.to_publish(Some(2), false, now),
        );
        assert!(Arc::ptr_eq(
            &a.properties.user_properties,
            &message.properties.user_properties
        ));
        assert!(Arc::ptr_eq(
            &a.properties.user_properties,
            &b.properties.user_properties
        ));
        let (ra, rm) = (
            a.properties.response_topic,
            message.properties.response_topic.clone(),
        );
        assert!(Arc::ptr_eq(&ra.expect("kept"), &rm.expect("kept")));
        assert_eq!(
            b.properties.subscription_identifiers,
            vec![3],
            "per recipient"
        );
    }
}
