//! Helpers shared by the codec test files.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use bytes::BytesMut;
use tidemq_proto::mqtt::{DecodeError, Packet, Protocol, decode, encode, encoded_len};

/// Large enough for every test packet.
pub const MAX: usize = 1 << 20;

/// Decodes `bytes` as one whole packet; fails the test if bytes are left over.
pub fn decode_one(bytes: &[u8], protocol: Protocol) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, protocol, MAX)?;
    if packet.is_some() {
        assert!(buf.is_empty(), "{} bytes left after the packet", buf.len());
    }
    Ok(packet)
}

/// The error decoding `bytes` gives.
pub fn decode_err(bytes: &[u8], protocol: Protocol) -> DecodeError {
    match decode_one(bytes, protocol) {
        Err(e) => e,
        Ok(p) => panic!("expected an error, decoded {p:?}"),
    }
}

/// Encodes `packet`, checking that `encoded_len` agrees.
pub fn encode_vec(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, protocol, &mut buf).expect("encode");
    assert_eq!(
        encoded_len(packet, protocol).expect("encoded_len"),
        buf.len()
    );
    buf.to_vec()
}

/// `bytes` decode to `packet` and `packet` encodes to `bytes`.
pub fn assert_codec(protocol: Protocol, bytes: &[u8], packet: Packet) {
    assert_eq!(
        decode_one(bytes, protocol).expect("decode"),
        Some(packet.clone()),
        "decoding {bytes:02x?}"
    );
    assert_eq!(encode_vec(&packet, protocol), bytes, "encoding {packet:?}");
}

/// Joins byte fragments into one packet.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}
