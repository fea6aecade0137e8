//! The MQTT 5.0 property block: a length, then `identifier, value` pairs.
//!
//! This module knows the framing and the rules shared by every packet
//! (length must cover the properties exactly, no duplicates, unknown or
//! misplaced identifiers are malformed); `properties.rs` says which
//! properties each packet carries.

use bytes::Bytes;

use super::read::{MAX_VARINT, Reader};
use super::write::{self, Sink, measure};
use crate::mqtt::error::{DecodeError, EncodeError};
use crate::mqtt::properties::UserProperty;

/// Property identifiers (MQTT 5.0 section 2.2.2.2).
pub(crate) mod id {
    pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub(crate) const CONTENT_TYPE: u8 = 0x03;
    pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
    pub(crate) const CORRELATION_DATA: u8 = 0x09;
    pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
    pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
    pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
    pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
    pub(crate) const REASON_STRING: u8 = 0x1F;
    pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
    pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub(crate) const TOPIC_ALIAS: u8 = 0x23;
    pub(crate) const MAXIMUM_QOS: u8 = 0x24;
    pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
    pub(crate) const USER_PROPERTY: u8 = 0x26;
    pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// The property set of one packet type.
pub(crate) trait PropertySet: Default + PartialEq {
    /// Identifiers that may appear more than once in this set.
    const REPEATABLE: &'static [u8] = &[id::USER_PROPERTY];

    /// Reads the value of property `id` into `self`; `Ok(false)` when this
    /// packet type does not carry `id`.
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<bool, DecodeError>;

    /// Writes every present property (without the block length).
    fn write<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError>;

    /// Whether no property is present, so short packet forms may be used.
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Reads a property block: its length, then properties until exactly that
/// many bytes are used.
pub(crate) fn decode<P: PropertySet>(r: &mut Reader) -> Result<P, DecodeError> {
    let len = r.varint()?;
    if len > r.remaining() {
        return Err(DecodeError::Malformed("property length exceeds the packet"));
    }
    let mut block = r.sub(len)?;
    let mut props = P::default();
    // Every defined identifier is below 64, so one bit each records "seen".
    let mut seen = 0u64;
    while !block.is_empty() {
        let raw = block.varint()?;
        let id = u8::try_from(raw)
            .ok()
            .filter(|id| *id < 64)
            .ok_or(DecodeError::Malformed("unknown property identifier"))?;
        let bit = 1u64 << id;
        if seen & bit != 0 && !P::REPEATABLE.contains(&id) {
            return Err(DecodeError::Protocol("property included more than once"));
        }
        if !props.read_one(id, &mut block)? {
            return Err(DecodeError::Malformed(
                "unknown property or property not allowed in this packet",
            ));
        }
        seen |= bit;
    }
    Ok(props)
}

/// Writes a property block: its length, then the properties.
pub(crate) fn encode<P: PropertySet, S: Sink>(props: &P, sink: &mut S) -> Result<(), EncodeError> {
    let len = measure(|c| props.write(c))?;
    write::varint(sink, len)?;
    props.write(sink)
}

// Value readers with the range checks the spec makes protocol errors.

/// A Byte property that is a boolean: 0 or 1.
pub(crate) fn read_bool(r: &mut Reader) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Protocol("property value must be 0 or 1")),
    }
}

/// A Byte property whose only values are 0 and 1 but is kept as a number
/// (payload format indicator, maximum QoS).
pub(crate) fn read_zero_or_one(r: &mut Reader) -> Result<u8, DecodeError> {
    read_bool(r).map(u8::from)
}

/// A Two Byte Integer property for which 0 is a protocol error (receive
/// maximum, topic alias).
pub(crate) fn read_nonzero_u16(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::Protocol("property value must not be 0")),
        v => Ok(v),
    }
}

/// A Four Byte Integer property for which 0 is a protocol error (maximum
/// packet size).
pub(crate) fn read_nonzero_u32(r: &mut Reader) -> Result<u32, DecodeError> {
    match r.u32()? {
        0 => Err(DecodeError::Protocol("property value must not be 0")),
        v => Ok(v),
    }
}

/// A subscription identifier: a variable byte integer from 1 up.
pub(crate) fn read_subscription_id(r: &mut Reader) -> Result<u32, DecodeError> {
    match r.varint()? {
        0 => Err(DecodeError::Protocol("subscription identifier 0")),
        v => u32::try_from(v).map_err(|_| DecodeError::Malformed("subscription identifier")),
    }
}

/// A user property: a string pair.
pub(crate) fn read_user(r: &mut Reader) -> Result<UserProperty, DecodeError> {
    Ok((r.string()?, r.string()?))
}

/// Reads a user property into `list`, unless the list holds the reader's
/// maximum already: then it is checked and dropped.
pub(crate) fn push_user(list: &mut Vec<UserProperty>, r: &mut Reader) -> Result<(), DecodeError> {
    if list.len() < r.max_user_properties() {
        list.push(read_user(r)?);
    } else {
        // A flood of them costs a check each, no copy.
        r.skip_string()?;
        r.skip_string()?;
    }
    Ok(())
}

/// [`push_user`] for a run of user properties: this one and those that
/// follow it directly (their identifier is one byte), until the list holds
/// the reader's maximum; a caller that must first make its list writable
/// (an `Arc`, an atomic operation) does so once per run rather than once
/// per property.
pub(crate) fn push_user_run(
    list: &mut Vec<UserProperty>,
    r: &mut Reader,
) -> Result<(), DecodeError> {
    push_user(list, r)?;
    while list.len() < r.max_user_properties() && r.peek() == Some(id::USER_PROPERTY) {
        r.u8()?;
        push_user(list, r)?;
    }
    Ok(())
}

// Writers for optional values: absent properties write nothing.

pub(crate) fn put_u8<S: Sink>(sink: &mut S, id: u8, value: Option<u8>) {
    if let Some(v) = value {
        sink.put_u8(id);
        sink.put_u8(v);
    }
}

pub(crate) fn put_bool<S: Sink>(sink: &mut S, id: u8, value: Option<bool>) {
    put_u8(sink, id, value.map(u8::from));
}

pub(crate) fn put_u16<S: Sink>(sink: &mut S, id: u8, value: Option<u16>) {
    if let Some(v) = value {
        sink.put_u8(id);
        sink.put_u16(v);
    }
}

pub(crate) fn put_u32<S: Sink>(sink: &mut S, id: u8, value: Option<u32>) {
    if let Some(v) = value {
        sink.put_u8(id);
        sink.put_u32(v);
    }
}

pub(crate) fn put_subscription_id<S: Sink>(sink: &mut S, value: u32) -> Result<(), EncodeError> {
    let v = usize::try_from(value).unwrap_or(usize::MAX);
    if v == 0 || v > MAX_VARINT {
        return Err(EncodeError::Invalid(
            "subscription identifier outside 1..=268435455",
        ));
    }
    sink.put_u8(id::SUBSCRIPTION_IDENTIFIER);
    write::varint(sink, v)
}

pub(crate) fn put_string<S: Sink>(
    sink: &mut S,
    id: u8,
    value: Option<&str>,
) -> Result<(), EncodeError> {
    match value {
        Some(v) => {
            sink.put_u8(id);
            write::string(sink, v)
        }
        None => Ok(()),
    }
}

pub(crate) fn put_binary<S: Sink>(
    sink: &mut S,
    id: u8,
    value: Option<&Bytes>,
) -> Result<(), EncodeError> {
    match value {
        Some(v) => {
            sink.put_u8(id);
            write::binary(sink, v)
        }
        None => Ok(()),
    }
}

pub(crate) fn put_user<S: Sink>(sink: &mut S, pairs: &[UserProperty]) -> Result<(), EncodeError> {
    for (name, value) in pairs {
        sink.put_u8(id::USER_PROPERTY);
        write::string(sink, name)?;
        write::string(sink, value)?;
    }
    Ok(())
}
