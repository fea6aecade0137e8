//! PUBLISH (MQTT 3.1.1 section 3.3, MQTT 5.0 section 3.3).
//!
//! ```text
//! fixed header flags: DUP (bit 3) | QoS (bits 2-1) | RETAIN (bit 0)
//! topic name | [QoS > 0: packet id] | [5.0: properties] | payload (the rest)
//! ```

use super::read::Reader;
use super::write::{self, Sink};
use super::{DecodeError, EncodeError, property};
use crate::mqtt::packet::{Packet, Protocol, Publish, QoS};
use crate::mqtt::properties::PublishProperties;
use crate::mqtt::topic::is_valid_topic_name;

const DUP: u8 = 0x08;
const RETAIN: u8 = 0x01;
const QOS_SHIFT: u8 = 1;

/// DUP, QoS and RETAIN from the fixed header flags.
pub(super) fn parse_flags(flags: u8) -> Result<(bool, QoS, bool), DecodeError> {
    let qos = QoS::from_u8((flags >> QOS_SHIFT) & 0x03)
        .ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
    let dup = flags & DUP != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed(
            "DUP set on a QoS 0 PUBLISH (MQTT-3.3.1-2)",
        ));
    }
    Ok((dup, qos, flags & RETAIN != 0))
}

/// The fixed header flags of `p`.
pub(super) fn flags(p: &Publish) -> u8 {
    let mut flags = (p.qos as u8) << QOS_SHIFT;
    if p.dup {
        flags |= DUP;
    }
    if p.retain {
        flags |= RETAIN;
    }
    flags
}

/// Decodes a PUBLISH body; the payload shares the packet's buffer.
pub(super) fn decode(flags: u8, r: &mut Reader, protocol: Protocol) -> Result<Packet, DecodeError> {
    let (dup, qos, retain) = parse_flags(flags)?;
    let topic = r.string()?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(r.packet_id()?),
    };
    let properties: PublishProperties = if protocol.is_v5() {
        property::decode(r)?
    } else {
        Default::default()
    };
    // In 5.0 an empty topic stands for the one a topic alias was bound to;
    // resolving the alias is the receiver's job.
    let aliased = topic.is_empty() && properties.topic_alias.is_some();
    if !aliased && !is_valid_topic_name(&topic) {
        return Err(DecodeError::InvalidTopicName);
    }
    Ok(Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    }))
}

/// Writes a PUBLISH body.
pub(super) fn write<S: Sink>(
    p: &Publish,
    protocol: Protocol,
    s: &mut S,
) -> Result<(), EncodeError> {
    if p.dup && p.qos == QoS::AtMostOnce {
        return Err(EncodeError::Invalid("DUP set on a QoS 0 PUBLISH"));
    }
    write::string(s, &p.topic)?;
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, None) => {}
        (QoS::AtMostOnce, Some(_)) => {
            return Err(EncodeError::Invalid("packet identifier on a QoS 0 PUBLISH"));
        }
        (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => write::packet_id(s, id)?,
        (QoS::AtLeastOnce | QoS::ExactlyOnce, None) => {
            return Err(EncodeError::Invalid(
                "QoS 1 or 2 PUBLISH without a packet identifier",
            ));
        }
    }
    if protocol.is_v5() {
        property::encode(&p.properties, s)?;
    }
    s.put_slice(&p.payload);
    Ok(())
}
