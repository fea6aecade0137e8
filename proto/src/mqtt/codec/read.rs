//! Bounds-checked reading of MQTT primitive fields from a packet body.
//!
//! Every read checks its length first, so no input reaches a panic; running
//! out of bytes inside a packet whose length was announced is malformed.

use bytes::{Buf, Bytes};

use crate::mqtt::error::DecodeError;

/// The largest value a variable byte integer can carry (four bytes).
pub(crate) const MAX_VARINT: usize = 268_435_455;

/// A cursor over one packet's body. Slices it hands out share the body's
/// buffer, so payloads are zero-copy.
pub(crate) struct Reader {
    buf: Bytes,
    /// User properties kept per property block; more are read (and
    /// checked) but dropped.
    max_user_properties: usize,
}

impl Reader {
    /// Reads `buf` from its start.
    #[cfg(test)]
    pub(crate) fn new(buf: Bytes) -> Self {
        Self::with_limit(buf, usize::MAX)
    }

    /// Reads `buf`, keeping at most `max_user_properties` user properties
    /// per property block.
    pub(crate) fn with_limit(buf: Bytes, max_user_properties: usize) -> Self {
        Self {
            buf,
            max_user_properties,
        }
    }

    /// The next `len` bytes as a reader of their own, with the same limits.
    pub(crate) fn sub(&mut self, len: usize) -> Result<Reader, DecodeError> {
        let limit = self.max_user_properties;
        Ok(Self::with_limit(self.take(len)?, limit))
    }

    /// See [`Reader::with_limit`].
    pub(crate) fn max_user_properties(&self) -> usize {
        self.max_user_properties
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Passes over every byte not read yet.
    pub(crate) fn skip_rest(&mut self) {
        self.buf.clear();
    }

    /// The next byte, without reading it.
    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// Whether every byte has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails unless every byte has been read: a field the packet type does not
    /// define follows its last one.
    pub(crate) fn finish(&self, packet: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(packet))
        }
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(truncated());
        }
        Ok(self.buf.get_u8())
    }

    /// A big-endian two-byte integer.
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(truncated());
        }
        Ok(self.buf.get_u16())
    }

    /// A big-endian four-byte integer.
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(truncated());
        }
        Ok(self.buf.get_u32())
    }

    /// A variable byte integer (1 to 4 bytes, 7 bits each, low bits first).
    pub(crate) fn varint(&mut self) -> Result<usize, DecodeError> {
        match parse_varint(&self.buf)? {
            Varint::Complete { value, len } => {
                self.buf.advance(len);
                Ok(value)
            }
            Varint::Incomplete => Err(truncated()),
        }
    }

    /// The next `len` bytes, shared with the body.
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(truncated());
        }
        Ok(self.buf.split_to(len))
    }

    /// Everything not read yet (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Binary data: a two-byte length, then that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 encoded string: a two-byte length, then that many bytes, which
    /// must be well-formed UTF-8 without U+0000 (MQTT-1.5.4-1, -2).
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        text(&raw).map(str::to_owned)
    }

    /// Checks a UTF-8 encoded string like [`Reader::string`] and passes
    /// over it, without taking a share of the buffer or copying it.
    pub(crate) fn skip_string(&mut self) -> Result<(), DecodeError> {
        let len = usize::from(self.u16()?);
        text(self.buf.get(..len).ok_or_else(truncated)?)?;
        self.buf.advance(len);
        Ok(())
    }

    /// A non-zero packet identifier (MQTT-2.2.1-3).
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::Protocol("packet identifier 0")),
            id => Ok(id),
        }
    }
}

/// `raw` as text, if it is well-formed UTF-8 without U+0000.
fn text(raw: &[u8]) -> Result<&str, DecodeError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| DecodeError::Malformed("string is not valid UTF-8"))?;
    if text.contains('\0') {
        return Err(DecodeError::Malformed("string contains U+0000"));
    }
    Ok(text)
}

fn truncated() -> DecodeError {
    DecodeError::Malformed("field runs past the end of the packet")
}

/// The outcome of reading a variable byte integer from a prefix of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Varint {
    /// The integer and how many bytes it took.
    Complete {
        /// Its value.
        value: usize,
        /// Its length on the wire.
        len: usize,
    },
    /// The buffer ends before the last byte of the integer.
    Incomplete,
}

/// Reads a variable byte integer from the start of `buf`. A fourth byte
/// with its continuation bit set is malformed whatever follows, so the
/// caller can reject it without waiting for more bytes. Non-minimal
/// encodings (`0x80 0x00`) are accepted, as the spec does not forbid them.
pub(crate) fn parse_varint(buf: &[u8]) -> Result<Varint, DecodeError> {
    let mut value = 0usize;
    for (i, byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Varint::Complete { value, len: i + 1 });
        }
    }
    if buf.len() >= 4 {
        return Err(DecodeError::Malformed(
            "variable byte integer longer than four bytes",
        ));
    }
    Ok(Varint::Incomplete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries() {
        let cases: [(&[u8], usize); 8] = [
            (&[0x00], 0),
            (&[0x7F], 127),
            (&[0x80, 0x01], 128),
            (&[0xFF, 0x7F], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xFF, 0xFF, 0x7F], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xFF, 0xFF, 0xFF, 0x7F], MAX_VARINT),
        ];
        for (bytes, value) in cases {
            assert_eq!(
                parse_varint(bytes).unwrap(),
                Varint::Complete {
                    value,
                    len: bytes.len()
                }
            );
        }
    }

    #[test]
    fn varint_incomplete_and_too_long() {
        assert_eq!(parse_varint(&[]).unwrap(), Varint::Incomplete);
        assert_eq!(parse_varint(&[0x80, 0x80]).unwrap(), Varint::Incomplete);
        assert!(parse_varint(&[0x80, 0x80, 0x80, 0x80]).is_err());
        assert!(parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
    }

    #[test]
    fn strings_reject_bad_utf8_and_nul() {
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xC3, 0x28]));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 3, b'a', 0, b'b']));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 5, b'a']));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn skipping_a_string_checks_it_too() {
        let mut r = Reader::new(Bytes::from_static(&[0, 2, b'o', b'k', 0, 0, 7]));
        r.skip_string().unwrap();
        r.skip_string().unwrap();
        assert_eq!(r.u8().unwrap(), 7);
        for bad in [
            &[0, 2, 0xC3, 0x28][..],
            &[0, 3, b'a', 0, b'b'],
            &[0, 5, b'a'],
        ] {
            let mut r = Reader::new(Bytes::copy_from_slice(bad));
            assert!(matches!(r.skip_string(), Err(DecodeError::Malformed(_))));
        }
    }
}
