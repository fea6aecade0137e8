//! The MQTT 3.1, 3.1.1 and 5.0 codec.
//!
//! Pure: no I/O, no async. [`decode`] takes bytes from the front of a
//! `BytesMut` and returns a whole [`Packet`], `None` when more bytes are
//! needed, or a [`DecodeError`] that names the MQTT reason code to answer with.
//! [`encode`] appends a packet's bytes to a `BytesMut`.
//!
//! One data model serves all three protocol levels: fields that exist only in
//! 5.0 (properties, reason codes) are ignored when encoding for 3.1/3.1.1 and
//! left at their defaults when decoding it. Every packet but CONNECT needs the
//! connection's [`Protocol`] to be decoded or encoded; CONNECT carries it.
//!
//! ```text
//! fixed header: | type (4 bits) | flags (4 bits) | remaining length (1-4 bytes, varint) |
//! then the variable header and payload of the packet type
//! ```

mod codec;
mod error;
mod packet;
mod properties;
mod reason;
mod topic;

pub use codec::{decode, decode_limited, encode, encode_publish, encoded_len, next_is_publish};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use properties::*;
pub use reason::ReasonCode;
pub use topic::{
    SharedFilter, TopicError, is_valid_topic_filter, is_valid_topic_name, matches_filter,
    parse_shared_filter,
};
