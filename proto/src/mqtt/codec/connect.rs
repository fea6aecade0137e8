//! CONNECT (MQTT 3.1.1 section 3.1, MQTT 5.0 section 3.1).
//!
//! ```text
//! protocol name (string) | level (u8) | connect flags (u8) | keep alive (u16)
//! [5.0: properties] | client id | [will: [5.0: will properties] topic, payload]
//! | [user name] | [password]
//! ```

use super::read::Reader;
use super::write::{self, Sink};
use super::{DecodeError, EncodeError, property};
use crate::mqtt::packet::{Connect, LastWill, Packet, Protocol, QoS};
use crate::mqtt::topic::is_valid_topic_name;

// Connect flag bits.
const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

/// The protocol name and level that identify each protocol.
fn identity(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::V3_1 => "MQIsdp",
        Protocol::V3_1_1 | Protocol::V5 => "MQTT",
    }
}

/// Decodes a CONNECT body. The protocol comes from the packet itself, not
/// from the connection, which does not know it yet.
pub(super) fn decode(r: &mut Reader) -> Result<Packet, DecodeError> {
    let name = r.string()?;
    let level = r.u8()?;
    let protocol = match (name.as_str(), level) {
        ("MQIsdp", 3) => Protocol::V3_1,
        ("MQTT", 4) => Protocol::V3_1_1,
        ("MQTT", 5) => Protocol::V5,
        _ => return Err(DecodeError::UnsupportedProtocol { name, level }),
    };
    let flags = r.u8()?;
    if flags & RESERVED != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    let has_will = flags & WILL != 0;
    let will_qos_bits = (flags >> WILL_QOS_SHIFT) & 0x03;
    let will_retain = flags & WILL_RETAIN != 0;
    let will_qos =
        QoS::from_u8(will_qos_bits).ok_or(DecodeError::Malformed("will QoS 3 in CONNECT"))?;
    if !has_will && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "will QoS or retain set without a will (MQTT-3.1.2-11)",
        ));
    }
    let has_username = flags & USERNAME != 0;
    let has_password = flags & PASSWORD != 0;
    // 5.0 lets a password stand alone (e.g. a token); 3.1.1 does not.
    if has_password && !has_username && !protocol.is_v5() {
        return Err(DecodeError::Malformed(
            "password without user name (MQTT-3.1.2-22)",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() {
        property::decode(r)?
    } else {
        Default::default()
    };
    let client_id = r.string()?;
    let will = if has_will {
        let properties = if protocol.is_v5() {
            property::decode(r)?
        } else {
            Default::default()
        };
        let topic = r.string()?;
        if !is_valid_topic_name(&topic) {
            return Err(DecodeError::InvalidTopicName);
        }
        Some(LastWill {
            topic,
            payload: r.binary()?,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish("bytes after the CONNECT payload")?;
    Ok(Packet::Connect(Connect {
        protocol,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    }))
}

/// Writes a CONNECT body in the packet's own protocol.
pub(super) fn write<S: Sink>(c: &Connect, s: &mut S) -> Result<(), EncodeError> {
    let v5 = c.protocol.is_v5();
    if c.password.is_some() && c.username.is_none() && !v5 {
        return Err(EncodeError::Invalid(
            "password without user name before MQTT 5.0",
        ));
    }
    write::string(s, identity(c.protocol))?;
    s.put_u8(c.protocol.level());
    let mut flags = 0;
    if c.clean_start {
        flags |= CLEAN_START;
    }
    if let Some(will) = &c.will {
        flags |= WILL | (will.qos as u8) << WILL_QOS_SHIFT;
        if will.retain {
            flags |= WILL_RETAIN;
        }
    }
    if c.username.is_some() {
        flags |= USERNAME;
    }
    if c.password.is_some() {
        flags |= PASSWORD;
    }
    s.put_u8(flags);
    s.put_u16(c.keep_alive);
    if v5 {
        property::encode(&c.properties, s)?;
    }
    write::string(s, &c.client_id)?;
    if let Some(will) = &c.will {
        if v5 {
            property::encode(&will.properties, s)?;
        }
        write::string(s, &will.topic)?;
        write::binary(s, &will.payload)?;
    }
    if let Some(username) = &c.username {
        write::string(s, username)?;
    }
    if let Some(password) = &c.password {
        write::binary(s, password)?;
    }
    Ok(())
}
