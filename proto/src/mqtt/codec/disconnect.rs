//! DISCONNECT (MQTT 3.1.1 section 3.14, MQTT 5.0 section 3.14).
//!
//! ```text
//! 3.1/3.1.1: no body
//! 5.0:       [reason code (u8) | [properties]]
//! ```
//!
//! A 5.0 DISCONNECT without a body means Normal disconnection; the
//! properties may be left out when there are none (MQTT 5.0 section 3.14.2.1).

use super::property::PropertySet;
use super::read::Reader;
use super::write::Sink;
use super::{DecodeError, EncodeError, property, read_reason};
use crate::mqtt::packet::{Disconnect, Packet, Protocol};
use crate::mqtt::reason::ReasonCode::{self, *};

/// Reason codes of a 5.0 DISCONNECT (MQTT 5.0 section 3.14.2.1).
const REASONS_V5: &[ReasonCode] = &[
    Success,
    DisconnectWithWillMessage,
    UnspecifiedError,
    MalformedPacket,
    ProtocolError,
    ImplementationSpecificError,
    NotAuthorized,
    ServerBusy,
    ServerShuttingDown,
    KeepAliveTimeout,
    SessionTakenOver,
    TopicFilterInvalid,
    TopicNameInvalid,
    ReceiveMaximumExceeded,
    TopicAliasInvalid,
    PacketTooLarge,
    MessageRateTooHigh,
    QuotaExceeded,
    AdministrativeAction,
    PayloadFormatInvalid,
    RetainNotSupported,
    QoSNotSupported,
    UseAnotherServer,
    ServerMoved,
    SharedSubscriptionsNotSupported,
    ConnectionRateExceeded,
    MaximumConnectTime,
    SubscriptionIdentifiersNotSupported,
    WildcardSubscriptionsNotSupported,
];

/// Decodes a DISCONNECT body.
pub(super) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Packet, DecodeError> {
    if !protocol.is_v5() || r.is_empty() {
        r.finish("DISCONNECT with a body before MQTT 5.0")?;
        return Ok(Packet::Disconnect(Disconnect::default()));
    }
    let reason = read_reason(r, REASONS_V5, "reason code not allowed in DISCONNECT")?;
    let properties = if r.is_empty() {
        Default::default()
    } else {
        property::decode(r)?
    };
    r.finish("bytes after the DISCONNECT properties")?;
    Ok(Packet::Disconnect(Disconnect { reason, properties }))
}

/// Writes a DISCONNECT body in the shortest form.
pub(super) fn write<S: Sink>(
    d: &Disconnect,
    protocol: Protocol,
    s: &mut S,
) -> Result<(), EncodeError> {
    if !protocol.is_v5() {
        return Ok(());
    }
    let has_properties = !d.properties.is_empty();
    if d.reason != ReasonCode::NORMAL_DISCONNECTION || has_properties {
        s.put_u8(d.reason.as_u8());
    }
    if has_properties {
        property::encode(&d.properties, s)?;
    }
    Ok(())
}
