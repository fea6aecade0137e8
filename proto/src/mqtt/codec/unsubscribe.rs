//! UNSUBSCRIBE (MQTT 3.1.1 section 3.10, MQTT 5.0 section 3.10).
//!
//! ```text
//! packet id (u16) | [5.0: properties] | topic filter+
//! ```

use super::read::Reader;
use super::write::{self, Sink};
use super::{DecodeError, EncodeError, property};
use crate::mqtt::packet::{Packet, Protocol, Unsubscribe};
use crate::mqtt::topic::is_valid_topic_filter;

/// Decodes an UNSUBSCRIBE body.
pub(super) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Packet, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if protocol.is_v5() {
        property::decode(r)?
    } else {
        Default::default()
    };
    if r.is_empty() {
        return Err(DecodeError::Protocol(
            "UNSUBSCRIBE without a topic filter (MQTT-3.10.3-2)",
        ));
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        // An invalid filter can match no subscription; refusing it says so
        // instead of answering "no subscription existed".
        if !is_valid_topic_filter(&filter) {
            return Err(DecodeError::InvalidTopicFilter);
        }
        filters.push(filter);
    }
    Ok(Packet::Unsubscribe(Unsubscribe {
        packet_id,
        filters,
        properties,
    }))
}

/// Writes an UNSUBSCRIBE body.
pub(super) fn write<S: Sink>(
    u: &Unsubscribe,
    protocol: Protocol,
    s: &mut S,
) -> Result<(), EncodeError> {
    if u.filters.is_empty() {
        return Err(EncodeError::Invalid("UNSUBSCRIBE without a topic filter"));
    }
    write::packet_id(s, u.packet_id)?;
    if protocol.is_v5() {
        property::encode(&u.properties, s)?;
    }
    for filter in &u.filters {
        write::string(s, filter)?;
    }
    Ok(())
}
