//! SUBACK (MQTT 3.1.1 section 3.9, MQTT 5.0 section 3.9).
//!
//! ```text
//! packet id (u16) | [5.0: properties] | reason code (u8) per topic filter
//! ```
//!
//! 3.1.1 return codes are 0, 1, 2 (granted QoS) and 0x80 (failure), so
//! every 5.0 failure code is sent to a 3.1.1 client as 0x80.

use super::read::Reader;
use super::write::{self, Sink};
use super::{DecodeError, EncodeError, property, read_reason};
use crate::mqtt::packet::{Packet, Protocol, SubAck};
use crate::mqtt::reason::ReasonCode::{self, *};

/// The 3.1.1 failure return code.
const FAILURE_V3: u8 = 0x80;

/// Reason codes of a 5.0 SUBACK (MQTT 5.0 section 3.9.3).
const REASONS_V5: &[ReasonCode] = &[
    Success,
    GrantedQoS1,
    GrantedQoS2,
    UnspecifiedError,
    ImplementationSpecificError,
    NotAuthorized,
    TopicFilterInvalid,
    PacketIdentifierInUse,
    QuotaExceeded,
    SharedSubscriptionsNotSupported,
    SubscriptionIdentifiersNotSupported,
    WildcardSubscriptionsNotSupported,
];

/// Decodes a SUBACK body.
pub(super) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Packet, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if protocol.is_v5() {
        property::decode(r)?
    } else {
        Default::default()
    };
    if r.is_empty() {
        return Err(DecodeError::Protocol("SUBACK without a reason code"));
    }
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let reason = if protocol.is_v5() {
            read_reason(r, REASONS_V5, "reason code not allowed in SUBACK")?
        } else {
            match r.u8()? {
                0 => Success,
                1 => GrantedQoS1,
                2 => GrantedQoS2,
                FAILURE_V3 => UnspecifiedError,
                _ => return Err(DecodeError::Malformed("unknown SUBACK return code")),
            }
        };
        reasons.push(reason);
    }
    Ok(Packet::SubAck(SubAck {
        packet_id,
        reasons,
        properties,
    }))
}

/// Writes a SUBACK body.
pub(super) fn write<S: Sink>(a: &SubAck, protocol: Protocol, s: &mut S) -> Result<(), EncodeError> {
    if a.reasons.is_empty() {
        return Err(EncodeError::Invalid("SUBACK without a reason code"));
    }
    write::packet_id(s, a.packet_id)?;
    if protocol.is_v5() {
        property::encode(&a.properties, s)?;
    }
    for reason in &a.reasons {
        let byte = if protocol.is_v5() {
            reason.as_u8()
        } else {
            match reason {
                Success | GrantedQoS1 | GrantedQoS2 => reason.as_u8(),
                failure if failure.is_error() => FAILURE_V3,
                _ => {
                    return Err(EncodeError::Invalid(
                        "reason code has no 3.1.1 SUBACK return code",
                    ));
                }
            }
        };
        s.put_u8(byte);
    }
    Ok(())
}
