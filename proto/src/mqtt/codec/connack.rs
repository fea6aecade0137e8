//! CONNACK (MQTT 3.1.1 section 3.2, MQTT 5.0 section 3.2).
//!
//! ```text
//! acknowledge flags (u8, bit 0 = session present) | return/reason code (u8)
//! | [5.0: properties]
//! ```

use super::read::Reader;
use super::write::Sink;
use super::{DecodeError, EncodeError, property, read_reason};
use crate::mqtt::packet::{ConnAck, Packet, Protocol};
use crate::mqtt::reason::ReasonCode::{self, *};

const SESSION_PRESENT: u8 = 0x01;

/// The reason codes a 5.0 CONNACK may carry (MQTT 5.0 section 3.2.2.2).
const REASONS_V5: &[ReasonCode] = &[
    Success,
    UnspecifiedError,
    MalformedPacket,
    ProtocolError,
    ImplementationSpecificError,
    UnsupportedProtocolVersion,
    ClientIdentifierNotValid,
    BadUserNameOrPassword,
    NotAuthorized,
    ServerUnavailable,
    ServerBusy,
    Banned,
    BadAuthenticationMethod,
    TopicNameInvalid,
    PacketTooLarge,
    QuotaExceeded,
    PayloadFormatInvalid,
    RetainNotSupported,
    QoSNotSupported,
    UseAnotherServer,
    ServerMoved,
    ConnectionRateExceeded,
];

/// Decodes a CONNACK body.
pub(super) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Packet, DecodeError> {
    let flags = r.u8()?;
    if flags & !SESSION_PRESENT != 0 {
        return Err(DecodeError::Malformed("reserved CONNACK flag set"));
    }
    let (reason, properties) = if protocol.is_v5() {
        let reason = read_reason(r, REASONS_V5, "reason code not allowed in CONNACK")?;
        // The property length is mandatory, but a missing block costs
        // nothing to accept from a lenient server.
        let properties = if r.is_empty() {
            Default::default()
        } else {
            property::decode(r)?
        };
        (reason, properties)
    } else {
        let reason = ReasonCode::from_connack_v3(r.u8()?)
            .ok_or(DecodeError::Malformed("unknown CONNACK return code"))?;
        (reason, Default::default())
    };
    r.finish("bytes after the CONNACK properties")?;
    Ok(Packet::ConnAck(ConnAck {
        session_present: flags & SESSION_PRESENT != 0,
        reason,
        properties,
    }))
}

/// Writes a CONNACK body; 3.1/3.1.1 get the nearest return code.
pub(super) fn write<S: Sink>(
    c: &ConnAck,
    protocol: Protocol,
    s: &mut S,
) -> Result<(), EncodeError> {
    s.put_u8(if c.session_present {
        SESSION_PRESENT
    } else {
        0
    });
    if protocol.is_v5() {
        s.put_u8(c.reason.as_u8());
        property::encode(&c.properties, s)
    } else {
        s.put_u8(c.reason.connack_v3());
        Ok(())
    }
}
