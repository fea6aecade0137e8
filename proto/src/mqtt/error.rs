//! Codec errors.

use super::reason::ReasonCode;

/// Why bytes could not be decoded into a packet. Each variant knows the
/// reason code a server answers it with ([`DecodeError::reason_code`]); the
/// connection is closed after any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The packet violates the wire format (bad length, bad flags, truncated
    /// field, invalid UTF-8, unknown property, ...).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet is well-formed but not allowed here (e.g. a duplicated
    /// property, QoS 0 with a packet id, a second CONNECT).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The remaining length announces a packet above the maximum size.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Announced size, fixed header included.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// CONNECT names a protocol name or level this codec does not speak.
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol {
        /// The protocol name found.
        name: String,
        /// The level byte found.
        level: u8,
    },
    /// A topic name is not valid (wildcards, empty, NUL, ...).
    #[error("invalid topic name")]
    InvalidTopicName,
    /// A topic filter is not valid.
    #[error("invalid topic filter")]
    InvalidTopicFilter,
}

impl DecodeError {
    /// The reason code to send (in CONNACK or DISCONNECT) for this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MalformedPacket,
            DecodeError::Protocol(_) => ReasonCode::ProtocolError,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocol { .. } => ReasonCode::UnsupportedProtocolVersion,
            DecodeError::InvalidTopicName => ReasonCode::TopicNameInvalid,
            DecodeError::InvalidTopicFilter => ReasonCode::TopicFilterInvalid,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The packet would exceed the 268,435,455-byte remaining length limit.
    #[error("packet too large to encode: remaining length {0}")]
    TooLarge(usize),
    /// A string or binary field is longer than 65,535 bytes.
    #[error("field longer than 65535 bytes")]
    FieldTooLong,
    /// The packet does not exist in this protocol version (AUTH before 5.0).
    #[error("{0} does not exist in this protocol version")]
    NotInProtocol(&'static str),
    /// A QoS 1/2 PUBLISH without a packet id, or similar.
    #[error("invalid packet: {0}")]
    Invalid(&'static str),
}
