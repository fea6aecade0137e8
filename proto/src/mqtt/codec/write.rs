//! Writing MQTT primitive fields to a [`Sink`].
//!
//! A packet's length prefixes (remaining length, property length) come before
//! the bytes they measure. Rather than encode twice into buffers or patch
//! lengths afterwards, every writer is generic over a [`Sink`]: run once into
//! a [`Counter`] to learn the length, then into the real buffer. The same
//! code path thus produces both the bytes and [`encoded_len`](super::encoded_len),
//! so the two cannot disagree.

use bytes::{BufMut, BytesMut};

use super::read::MAX_VARINT;
use crate::mqtt::error::EncodeError;

/// Where encoded bytes go: a real buffer, or a counter.
pub(crate) trait Sink {
    /// Appends one byte.
    fn put_u8(&mut self, value: u8);
    /// Appends a big-endian two-byte integer.
    fn put_u16(&mut self, value: u16);
    /// Appends a big-endian four-byte integer.
    fn put_u32(&mut self, value: u32);
    /// Appends raw bytes.
    fn put_slice(&mut self, bytes: &[u8]);
}

impl Sink for BytesMut {
    fn put_u8(&mut self, value: u8) {
        BufMut::put_u8(self, value);
    }

    fn put_u16(&mut self, value: u16) {
        BufMut::put_u16(self, value);
    }

    fn put_u32(&mut self, value: u32) {
        BufMut::put_u32(self, value);
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        BufMut::put_slice(self, bytes);
    }
}

/// A sink that only counts bytes.
#[derive(Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }

    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }

    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// The number of bytes `f` writes.
pub(crate) fn measure(
    f: impl FnOnce(&mut Counter) -> Result<(), EncodeError>,
) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    f(&mut counter)?;
    Ok(counter.0)
}

/// Writes a variable byte integer; values above 268,435,455 do not fit.
pub(crate) fn varint<S: Sink>(sink: &mut S, value: usize) -> Result<(), EncodeError> {
    if value > MAX_VARINT {
        return Err(EncodeError::TooLarge(value));
    }
    let mut rest = value;
    loop {
        // The mask keeps the cast lossless.
        let mut byte = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest > 0 {
            byte |= 0x80;
        }
        sink.put_u8(byte);
        if rest == 0 {
            return Ok(());
        }
    }
}

/// The length of `value` as a variable byte integer.
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes binary data: a two-byte length, then the bytes.
pub(crate) fn binary<S: Sink>(sink: &mut S, bytes: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong)?;
    sink.put_u16(len);
    sink.put_slice(bytes);
    Ok(())
}

/// Writes a UTF-8 string: a two-byte length, then the bytes.
pub(crate) fn string<S: Sink>(sink: &mut S, text: &str) -> Result<(), EncodeError> {
    binary(sink, text.as_bytes())
}

/// Writes a packet identifier, which must not be 0 (MQTT-2.2.1-3).
pub(crate) fn packet_id<S: Sink>(sink: &mut S, id: u16) -> Result<(), EncodeError> {
    if id == 0 {
        return Err(EncodeError::Invalid("packet identifier 0"));
    }
    sink.put_u16(id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_match_writes() {
        for value in [
            0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_VARINT,
        ] {
            let mut buf = BytesMut::new();
            varint(&mut buf, value).unwrap();
            assert_eq!(buf.len(), varint_len(value), "value {value}");
        }
        assert_eq!(
            varint(&mut BytesMut::new(), MAX_VARINT + 1),
            Err(EncodeError::TooLarge(MAX_VARINT + 1))
        );
    }

    #[test]
    fn long_fields_are_refused() {
        let long = vec![0u8; 65_536];
        assert_eq!(
            binary(&mut Counter::default(), &long),
            Err(EncodeError::FieldTooLong)
        );
        let max = vec![b'a'; 65_535];
        let mut counter = Counter::default();
        binary(&mut counter, &max).unwrap();
        assert_eq!(counter.0, 65_537);
    }
}
