//! Encoding and decoding of whole packets.
//!
//! This file owns the fixed header and dispatches the rest, one module per
//! packet kind, on the packet type. Primitive fields live in `read` and
//! `write`, the 5.0 property block in `property` and `properties`.

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod properties;
mod property;
mod publish;
mod read;
mod suback;
mod subscribe;
mod unsuback;
mod unsubscribe;
mod write;

use bytes::BytesMut;

use self::read::{MAX_VARINT, Reader, Varint, parse_varint};
use self::write::{Sink, measure, varint_len};
use super::error::{DecodeError, EncodeError};
use super::packet::{Packet, Protocol, Publish};
use super::reason::ReasonCode;

/// Packet type numbers: the high nibble of the first byte.
mod kind {
    pub(super) const CONNECT: u8 = 1;
    pub(super) const CONNACK: u8 = 2;
    pub(super) const PUBLISH: u8 = 3;
    pub(super) const PUBACK: u8 = 4;
    pub(super) const PUBREC: u8 = 5;
    pub(super) const PUBREL: u8 = 6;
    pub(super) const PUBCOMP: u8 = 7;
    pub(super) const SUBSCRIBE: u8 = 8;
    pub(super) const SUBACK: u8 = 9;
    pub(super) const UNSUBSCRIBE: u8 = 10;
    pub(super) const UNSUBACK: u8 = 11;
    pub(super) const PINGREQ: u8 = 12;
    pub(super) const PINGRESP: u8 = 13;
    pub(super) const DISCONNECT: u8 = 14;
    pub(super) const AUTH: u8 = 15;
}

/// The fixed flags of PUBREL, SUBSCRIBE and UNSUBSCRIBE (MQTT-3.6.1-1,
/// MQTT-3.8.1-1, MQTT-3.10.1-1).
const FLAGS_0010: u8 = 0b0010;

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` (consuming nothing) when `buf` does not hold a whole
/// packet yet. On success the packet's bytes are removed from `buf`.
/// `protocol` is the connection's protocol level; CONNECT ignores it.
/// A packet whose total size exceeds `max_packet_size` fails with
/// [`DecodeError::PacketTooLarge`] as soon as its fixed header is readable,
/// and a reserved packet type or flag as soon as its first byte is. Any
/// error ends the connection, so what `buf` holds after one is unspecified.
/// Payloads and binary fields share `buf`'s allocation (no copy).
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    decode_limited(buf, protocol, max_packet_size, usize::MAX)
}

/// Whether the next packet in `buf` (whole or not) is a PUBLISH, going by
/// its first byte alone.
pub fn next_is_publish(buf: &[u8]) -> bool {
    buf.first()
        .is_some_and(|&first| first >> 4 == kind::PUBLISH)
}

/// [`decode`], keeping at most `max_user_properties` user properties of
/// each property block. A receiver that accepts at most `n` passes `n + 1`
/// and refuses a packet that comes back with more than `n`, without the
/// cost of holding a flood of them (a 1 MB PUBLISH can carry 200,000). In a
/// PUBLISH, whatever follows the last user property kept is passed over
/// unread, since the message is refused (a bad property there goes
/// unnoticed); in other packets the rest are checked like any property (a
/// bad one is still malformed) but not kept.
pub fn decode_limited(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: usize,
    max_user_properties: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    // Checked before the length so garbage is refused at its first byte.
    check_flags(packet_type, flags, protocol)?;
    let (remaining, len_len) = match parse_varint(buf.get(1..).unwrap_or_default())? {
        Varint::Complete { value, len } => (value, len),
        Varint::Incomplete => return Ok(None),
    };
    let header_len = 1 + len_len;
    // At most 5 + 268,435,455: no overflow.
    let size = header_len + remaining;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    let mut r = Reader::with_limit(frame.split_off(header_len), max_user_properties);
    let packet = match packet_type {
        kind::CONNECT => connect::decode(&mut r)?,
        kind::CONNACK => connack::decode(&mut r, protocol)?,
        kind::PUBLISH => publish::decode(flags, &mut r, protocol)?,
        kind::PUBACK => Packet::PubAck(ack::decode(ack::Kind::Ack, &mut r, protocol)?),
        kind::PUBREC => Packet::PubRec(ack::decode(ack::Kind::Rec, &mut r, protocol)?),
        kind::PUBREL => Packet::PubRel(ack::decode(ack::Kind::Rel, &mut r, protocol)?),
        kind::PUBCOMP => Packet::PubComp(ack::decode(ack::Kind::Comp, &mut r, protocol)?),
        kind::SUBSCRIBE => subscribe::decode(&mut r, protocol)?,
        kind::SUBACK => suback::decode(&mut r, protocol)?,
        kind::UNSUBSCRIBE => unsubscribe::decode(&mut r, protocol)?,
        kind::UNSUBACK => unsuback::decode(&mut r, protocol)?,
        kind::PINGREQ => {
            r.finish("PINGREQ with a body")?;
            Packet::PingReq
        }
        kind::PINGRESP => {
            r.finish("PINGRESP with a body")?;
            Packet::PingResp
        }
        kind::DISCONNECT => disconnect::decode(&mut r, protocol)?,
        kind::AUTH => auth::decode(&mut r)?,
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    Ok(Some(packet))
}

/// Rejects reserved packet types and flag bits the spec fixes
/// (MQTT-2.2.2-2).
fn check_flags(packet_type: u8, flags: u8, protocol: Protocol) -> Result<(), DecodeError> {
    let valid = match packet_type {
        0 => return Err(DecodeError::Malformed("reserved packet type 0")),
        // Type 15 is reserved before 5.0.
        kind::AUTH if !protocol.is_v5() => {
            return Err(DecodeError::Malformed("reserved packet type 15"));
        }
        kind::PUBLISH => return publish::parse_flags(flags).map(|_| ()),
        // MQTT 3.1 gave these packets a QoS 1 header whose DUP bit a client
        // may set on a resend; 3.1.1 made the DUP bit reserved.
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => {
            flags == FLAGS_0010 || (protocol == Protocol::V3_1 && flags == FLAGS_0010 | 0b1000)
        }
        _ => flags == 0,
    };
    if valid {
        Ok(())
    } else {
        Err(DecodeError::Malformed("reserved fixed header flags"))
    }
}

/// Appends the bytes of `packet`, as spoken by `protocol`, to `buf`.
///
/// On error nothing is appended.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let first = first_byte(packet, protocol)?;
    let remaining = body_len(packet, protocol)?;
    buf.reserve(1 + varint_len(remaining) + remaining);
    Sink::put_u8(buf, first);
    write::varint(buf, remaining)?;
    // The counting pass above has already met every error the body can
    // raise, so this pass cannot stop half way.
    write_body(packet, protocol, buf)
}

/// Appends the bytes of a PUBLISH packet, as [`encode`] does for
/// `Packet::Publish`, from a borrowed [`Publish`] (no clone into a
/// [`Packet`]). On error nothing is appended.
pub fn encode_publish(
    publish: &Publish,
    protocol: Protocol,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = measure(|c| publish::write(publish, protocol, c))?;
    if remaining > MAX_VARINT {
        return Err(EncodeError::TooLarge(remaining));
    }
    buf.reserve(1 + varint_len(remaining) + remaining);
    Sink::put_u8(buf, kind::PUBLISH << 4 | publish::flags(publish));
    write::varint(buf, remaining)?;
    publish::write(publish, protocol, buf)
}

/// The total size `encode` would produce, fixed header included.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> Result<usize, EncodeError> {
    first_byte(packet, protocol)?;
    let remaining = body_len(packet, protocol)?;
    Ok(1 + varint_len(remaining) + remaining)
}

/// The remaining length of `packet`, refused if it does not fit the header.
fn body_len(packet: &Packet, protocol: Protocol) -> Result<usize, EncodeError> {
    let remaining = measure(|c| write_body(packet, protocol, c))?;
    if remaining > MAX_VARINT {
        return Err(EncodeError::TooLarge(remaining));
    }
    Ok(remaining)
}

impl Packet {
    /// The packet's type number (MQTT section 2.1.2): the high nibble of
    /// its first byte, 1 (CONNECT) to 15 (AUTH).
    pub fn type_number(&self) -> u8 {
        match self {
            Packet::Connect(_) => kind::CONNECT,
            Packet::ConnAck(_) => kind::CONNACK,
            Packet::Publish(_) => kind::PUBLISH,
            Packet::PubAck(_) => kind::PUBACK,
            Packet::PubRec(_) => kind::PUBREC,
            Packet::PubRel(_) => kind::PUBREL,
            Packet::PubComp(_) => kind::PUBCOMP,
            Packet::Subscribe(_) => kind::SUBSCRIBE,
            Packet::SubAck(_) => kind::SUBACK,
            Packet::Unsubscribe(_) => kind::UNSUBSCRIBE,
            Packet::UnsubAck(_) => kind::UNSUBACK,
            Packet::PingReq => kind::PINGREQ,
            Packet::PingResp => kind::PINGRESP,
            Packet::Disconnect(_) => kind::DISCONNECT,
            Packet::Auth(_) => kind::AUTH,
        }
    }
}

/// The packet type and flags byte.
fn first_byte(packet: &Packet, protocol: Protocol) -> Result<u8, EncodeError> {
    let flags = match packet {
        Packet::Publish(p) => publish::flags(p),
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => FLAGS_0010,
        Packet::Auth(_) if !protocol.is_v5() => return Err(EncodeError::NotInProtocol("AUTH")),
        _ => 0,
    };
    Ok(packet.type_number() << 4 | flags)
}

/// Writes everything after the fixed header.
fn write_body<S: Sink>(packet: &Packet, protocol: Protocol, s: &mut S) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => connect::write(c, s),
        Packet::ConnAck(c) => connack::write(c, protocol, s),
        Packet::Publish(p) => publish::write(p, protocol, s),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            ack::write(a, protocol, s)
        }
        Packet::Subscribe(sub) => subscribe::write(sub, protocol, s),
        Packet::SubAck(a) => suback::write(a, protocol, s),
        Packet::Unsubscribe(u) => unsubscribe::write(u, protocol, s),
        Packet::UnsubAck(a) => unsuback::write(a, protocol, s),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(d) => disconnect::write(d, protocol, s),
        Packet::Auth(a) => auth::write(a, s),
    }
}

/// Reads a reason code byte that must be one of `allowed` for this packet.
fn read_reason(
    r: &mut Reader,
    allowed: &[ReasonCode],
    what: &'static str,
) -> Result<ReasonCode, DecodeError> {
    let code = r.u8()?;
    ReasonCode::from_u8(code)
        .filter(|reason| allowed.contains(reason))
        .ok_or(DecodeError::Malformed(what))
}
