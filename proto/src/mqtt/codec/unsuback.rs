//! UNSUBACK (MQTT 3.1.1 section 3.11, MQTT 5.0 section 3.11).
//!
//! ```text
//! packet id (u16) | [5.0: properties | reason code (u8) per topic filter]
//! ```

use super::read::Reader;
use super::write::{self, Sink};
use super::{DecodeError, EncodeError, property, read_reason};
use crate::mqtt::packet::{Packet, Protocol, UnsubAck};
use crate::mqtt::reason::ReasonCode::{self, *};

/// Reason codes of a 5.0 UNSUBACK (MQTT 5.0 section 3.11.3).
const REASONS_V5: &[ReasonCode] = &[
    Success,
    NoSubscriptionExisted,
    UnspecifiedError,
    ImplementationSpecificError,
    NotAuthorized,
    TopicFilterInvalid,
    PacketIdentifierInUse,
];

/// Decodes an UNSUBACK body.
pub(super) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Packet, DecodeError> {
    let packet_id = r.packet_id()?;
    if !protocol.is_v5() {
        r.finish("bytes after the packet identifier")?;
        return Ok(Packet::UnsubAck(UnsubAck {
            packet_id,
            reasons: Vec::new(),
            properties: Default::default(),
        }));
    }
    let properties = property::decode(r)?;
    if r.is_empty() {
        return Err(DecodeError::Protocol("UNSUBACK without a reason code"));
    }
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reasons.push(read_reason(
            r,
            REASONS_V5,
            "reason code not allowed in UNSUBACK",
        )?);
    }
    Ok(Packet::UnsubAck(UnsubAck {
        packet_id,
        reasons,
        properties,
    }))
}

/// Writes an UNSUBACK body; 3.1/3.1.1 carry the packet id alone.
pub(super) fn write<S: Sink>(
    a: &UnsubAck,
    protocol: Protocol,
    s: &mut S,
) -> Result<(), EncodeError> {
    write::packet_id(s, a.packet_id)?;
    if !protocol.is_v5() {
        return Ok(());
    }
    if a.reasons.is_empty() {
        return Err(EncodeError::Invalid("5.0 UNSUBACK without a reason code"));
    }
    property::encode(&a.properties, s)?;
    for reason in &a.reasons {
        s.put_u8(reason.as_u8());
    }
    Ok(())
}
