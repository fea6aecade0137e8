//! AUTH (MQTT 5.0 section 3.15; the packet type is reserved before 5.0).
//!
//! ```text
//! [reason code (u8) | [properties]]
//! ```
//!
//! Without a body it means Success (MQTT 5.0 section 3.15.2.1).

use super::property::PropertySet;
use super::read::Reader;
use super::write::Sink;
use super::{DecodeError, EncodeError, property, read_reason};
use crate::mqtt::packet::{Auth, Packet};
use crate::mqtt::reason::ReasonCode::{self, *};

/// Reason codes of AUTH (MQTT 5.0 section 3.15.2.1).
const REASONS: &[ReasonCode] = &[Success, ContinueAuthentication, ReAuthenticate];

/// Decodes an AUTH body; only called on 5.0 connections.
pub(super) fn decode(r: &mut Reader) -> Result<Packet, DecodeError> {
    if r.is_empty() {
        return Ok(Packet::Auth(Auth::default()));
    }
    let reason = read_reason(r, REASONS, "reason code not allowed in AUTH")?;
    let properties = if r.is_empty() {
        Default::default()
    } else {
        property::decode(r)?
    };
    r.finish("bytes after the AUTH properties")?;
    Ok(Packet::Auth(Auth { reason, properties }))
}

/// Writes an AUTH body in the shortest form.
pub(super) fn write<S: Sink>(a: &Auth, s: &mut S) -> Result<(), EncodeError> {
    let has_properties = !a.properties.is_empty();
    if a.reason != Success || has_properties {
        s.put_u8(a.reason.as_u8());
    }
    if has_properties {
        property::encode(&a.properties, s)?;
    }
    Ok(())
}
