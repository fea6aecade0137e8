//! MQTT 5.0 topic aliases, both ways.

use std::collections::HashMap;

use tidemq_proto::mqtt::{Publish, ReasonCode};

/// A connection's topic aliases: the ones the client set for its
/// PUBLISH packets, and the ones the broker assigned to its deliveries.
/// The maps are made on first use: a 3.1.1 client, or a 5.0 one that uses
/// no alias, keeps only the two maxima.
pub(super) struct TopicAliases {
    maps: Option<Box<Maps>>,
    /// Largest alias the client may set (0: none).
    in_max: u16,
    /// Largest alias the client accepts (0: none).
    out_max: u16,
}

#[derive(Default)]
struct Maps {
    inbound: HashMap<u16, String>,
    outbound: HashMap<String, u16>,
}

impl TopicAliases {
    /// Aliases up to `in_max` from the client and `out_max` to it.
    pub(super) fn new(in_max: u16, out_max: u16) -> Self {
        Self {
            maps: None,
            in_max,
            out_max,
        }
    }

    fn maps(&mut self) -> &mut Maps {
        self.maps.get_or_insert_with(Box::default)
    }

    /// Replaces an inbound PUBLISH's alias by its topic, or records a new
    /// one. An alias out of range is 0x94; one never set, with no topic,
    /// a protocol error.
    pub(super) fn resolve(&mut self, publish: &mut Publish) -> Result<(), ReasonCode> {
        let Some(alias) = publish.properties.topic_alias.take() else {
            return Ok(());
        };
        if alias == 0 || alias > self.in_max {
            return Err(ReasonCode::TopicAliasInvalid);
        }
        if publish.topic.is_empty() {
            let known = self.maps.as_ref().and_then(|m| m.inbound.get(&alias));
            publish.topic = known.ok_or(ReasonCode::ProtocolError)?.clone();
        } else {
            let topic = publish.topic.clone();
            self.maps().inbound.insert(alias, topic);
        }
        Ok(())
    }

    /// Uses an alias the client knows for an outbound PUBLISH, or picks a
    /// new one while the client's maximum allows. A new alias is returned,
    /// to be [recorded](TopicAliases::record) only if the packet is sent
    /// (the client learns it from that packet).
    pub(super) fn apply(&self, publish: &mut Publish) -> Option<(String, u16)> {
        if self.out_max == 0 {
            return None;
        }
        let outbound = self.maps.as_ref().map(|m| &m.outbound);
        if let Some(&alias) = outbound.and_then(|out| out.get(&publish.topic)) {
            publish.properties.topic_alias = Some(alias);
            publish.topic.clear();
            return None;
        }
        let next = u16::try_from(outbound.map_or(0, HashMap::len) + 1).ok()?;
        if next > self.out_max {
            return None;
        }
        publish.properties.topic_alias = Some(next);
        Some((publish.topic.clone(), next))
    }

    /// Records an alias the client has now been sent.
    pub(super) fn record(&mut self, topic: String, alias: u16) {
        self.maps().outbound.insert(topic, alias);
    }
}

#[cfg(test)]
mod tests {
    use tidemq_proto::mqtt::{Publish, PublishProperties, QoS, ReasonCode};

    use super::TopicAliases;

    fn publish(topic: &str, alias: Option<u16>) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            properties: PublishProperties {
                topic_alias: alias,
                ..PublishProperties::default()
            },
            payload: bytes::Bytes::new(),
        }
    }

    #[test]
    fn inbound_aliases_are_set_then_resolved_within_the_maximum() {
        let mut aliases = TopicAliases::new(2, 0);
        let mut plain = publish("a/b", None);
        assert_eq!(aliases.resolve(&mut plain), Ok(()));
        assert!(aliases.maps.is_none(), "no alias used, no maps made");
        assert_eq!(aliases.resolve(&mut publish("a/b", Some(1))), Ok(()));
        let mut short = publish("", Some(1));
        assert_eq!(aliases.resolve(&mut short), Ok(()));
        assert_eq!(short.topic, "a/b");
        assert_eq!(
            aliases.resolve(&mut publish("", Some(2))),
            Err(ReasonCode::ProtocolError)
        );
        assert_eq!(
            aliases.resolve(&mut publish("x", Some(3))),
            Err(ReasonCode::TopicAliasInvalid)
        );
        assert_eq!(
            aliases.resolve(&mut publish("x", Some(0))),
            Err(ReasonCode::TopicAliasInvalid)
        );
    }

    #[test]
    fn outbound_aliases_are_assigned_up_to_the_clients_maximum() {
        let mut aliases = TopicAliases::new(0, 1);
        let mut first = publish("t/1", None);
        let (topic, alias) = aliases.apply(&mut first).expect("a new alias");
        assert_eq!(
            (topic.as_str(), alias, first.topic.as_str()),
            ("t/1", 1, "t/1")
        );
        aliases.record(topic, alias);
        let mut again = publish("t/1", None);
        assert_eq!(aliases.apply(&mut again), None);
        assert_eq!(
            (again.topic.as_str(), again.properties.topic_alias),
            ("", Some(1))
        );
        let mut other = publish("t/2", None);
        assert_eq!(aliases.apply(&mut other), None, "the maximum is reached");
        assert_eq!(other.properties.topic_alias, None);
        assert_eq!(
            TopicAliases::new(0, 0).apply(&mut publish("t/1", None)),
            None
        );
    }
}
