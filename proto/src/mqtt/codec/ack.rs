//! PUBACK, PUBREC, PUBREL and PUBCOMP (MQTT 5.0 sections 3.4 to 3.7).
//!
//! ```text
//! packet id (u16) | [5.0: reason code (u8) | [properties]]
//! ```
//!
//! In 5.0 the reason code may be left out when it is Success and there are
//! no properties, and the properties when there are none (MQTT 5.0 section
//! 3.4.2.1). 3.1/3.1.1 carry the packet id alone.

use super::property::PropertySet;
use super::read::Reader;
use super::write::{self, Sink};
use super::{DecodeError, EncodeError, property, read_reason};
use crate::mqtt::packet::{Protocol, PubResponse};
use crate::mqtt::reason::ReasonCode::{self, *};

/// Which of the four packets is being decoded, for its reason codes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Ack,
    Rec,
    Rel,
    Comp,
}

/// Reason codes of PUBACK and PUBREC (MQTT 5.0 sections 3.4.2.1, 3.5.2.1).
const PUBACK_PUBREC: &[ReasonCode] = &[
    Success,
    NoMatchingSubscribers,
    UnspecifiedError,
    ImplementationSpecificError,
    NotAuthorized,
    TopicNameInvalid,
    PacketIdentifierInUse,
    QuotaExceeded,
    PayloadFormatInvalid,
];

/// Reason codes of PUBREL and PUBCOMP (MQTT 5.0 sections 3.6.2.1, 3.7.2.1).
const PUBREL_PUBCOMP: &[ReasonCode] = &[Success, PacketIdentifierNotFound];

/// Decodes the body of one of the four responses.
pub(super) fn decode(
    kind: Kind,
    r: &mut Reader,
    protocol: Protocol,
) -> Result<PubResponse, DecodeError> {
    let packet_id = r.packet_id()?;
    if !protocol.is_v5() {
        r.finish("bytes after the packet identifier")?;
        return Ok(PubResponse::success(packet_id));
    }
    let reason = if r.is_empty() {
        Success
    } else {
        let (allowed, what) = match kind {
            Kind::Ack => (PUBACK_PUBREC, "reason code not allowed in PUBACK"),
            Kind::Rec => (PUBACK_PUBREC, "reason code not allowed in PUBREC"),
            Kind::Rel => (PUBREL_PUBCOMP, "reason code not allowed in PUBREL"),
            Kind::Comp => (PUBREL_PUBCOMP, "reason code not allowed in PUBCOMP"),
        };
        read_reason(r, allowed, what)?
    };
    let properties = if r.is_empty() {
        Default::default()
    } else {
        property::decode(r)?
    };
    r.finish("bytes after the properties")?;
    Ok(PubResponse {
        packet_id,
        reason,
        properties,
    })
}

/// Writes the body of one of the four responses, in the shortest form.
pub(super) fn write<S: Sink>(
    a: &PubResponse,
    protocol: Protocol,
    s: &mut S,
) -> Result<(), EncodeError> {
    write::packet_id(s, a.packet_id)?;
    if !protocol.is_v5() {
        return Ok(());
    }
    let has_properties = !a.properties.is_empty();
    if a.reason != Success || has_properties {
        s.put_u8(a.reason.as_u8());
    }
    if has_properties {
        property::encode(&a.properties, s)?;
    }
    Ok(())
}
