//! SUBSCRIBE (MQTT 3.1.1 section 3.8, MQTT 5.0 section 3.8).
//!
//! ```text
//! packet id (u16) | [5.0: properties] | (topic filter, options (u8))+
//! options: reserved (bits 7-6) | retain handling (5-4) | retain as published (3)
//!          | no local (2) | maximum QoS (1-0); 3.1.1 has only the QoS bits
//! ```

use super::read::Reader;
use super::write::{self, Sink};
use super::{DecodeError, EncodeError, property};
use crate::mqtt::packet::{Packet, Protocol, Subscribe, SubscribeFilter, SubscriptionOptions};
use crate::mqtt::topic::{is_valid_topic_filter, parse_shared_filter};

/// Bits that must be zero in 3.1.1 (MQTT-3.8.3-4) and in 5.0 (MQTT-3.8.3-5).
const RESERVED_V3: u8 = 0xFC;
const RESERVED_V5: u8 = 0xC0;

/// Decodes a SUBSCRIBE body.
pub(super) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Packet, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if protocol.is_v5() {
        property::decode(r)?
    } else {
        Default::default()
    };
    if r.is_empty() {
        return Err(DecodeError::Protocol(
            "SUBSCRIBE without a topic filter (MQTT-3.8.3-3)",
        ));
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = parse_options(r.u8()?, protocol)?;
        check_filter(&filter, &options, protocol)?;
        filters.push(SubscribeFilter { filter, options });
    }
    Ok(Packet::Subscribe(Subscribe {
        packet_id,
        filters,
        properties,
    }))
}

fn parse_options(byte: u8, protocol: Protocol) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if protocol.is_v5() {
        RESERVED_V5
    } else {
        RESERVED_V3
    };
    if byte & reserved != 0 {
        return Err(DecodeError::Malformed(
            "reserved subscription option bits set",
        ));
    }
    SubscriptionOptions::from_byte(byte).map_err(DecodeError::Malformed)
}

fn check_filter(
    filter: &str,
    options: &SubscriptionOptions,
    protocol: Protocol,
) -> Result<(), DecodeError> {
    if !is_valid_topic_filter(filter) {
        return Err(DecodeError::InvalidTopicFilter);
    }
    // A valid filter that starts with `$share/` parses as a shared one.
    let shared = matches!(parse_shared_filter(filter), Ok(Some(_)));
    if shared && options.no_local && protocol.is_v5() {
        return Err(DecodeError::Protocol(
            "no local on a shared subscription (MQTT-3.8.3-4)",
        ));
    }
    Ok(())
}

/// The options byte; 3.1/3.1.1 get the QoS alone.
fn options_byte(options: &SubscriptionOptions, protocol: Protocol) -> u8 {
    if protocol.is_v5() {
        options.to_byte()
    } else {
        options.qos as u8
    }
}

/// Writes a SUBSCRIBE body.
pub(super) fn write<S: Sink>(
    sub: &Subscribe,
    protocol: Protocol,
    s: &mut S,
) -> Result<(), EncodeError> {
    if sub.filters.is_empty() {
        return Err(EncodeError::Invalid("SUBSCRIBE without a topic filter"));
    }
    write::packet_id(s, sub.packet_id)?;
    if protocol.is_v5() {
        property::encode(&sub.properties, s)?;
    }
    for f in &sub.filters {
        write::string(s, &f.filter)?;
        s.put_u8(options_byte(&f.options, protocol));
    }
    Ok(())
}
