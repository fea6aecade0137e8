//! The on-disk record frame.
//!
//! ```text
//!  0        4        8                16               24
//!  +--------+--------+----------------+----------------+-------------+
//!  | len    | crc32c | offset         | timestamp (ms) | payload ... |
//!  | u32 LE | u32 LE | u64 LE         | i64 LE         | len - 24    |
//!  +--------+--------+----------------+----------------+-------------+
//! ```
//!
//! `len` is the whole frame's size, header included. The CRC32C covers the
//! `len` field and everything after the CRC, so a torn length, a flipped bit
//! anywhere in the frame or a zero-filled tail are all detected.

use bytes::Bytes;

/// Size of the fixed frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 24;

/// One record read back from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's offset in its partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch, assigned at append time; never
    /// decreases within a partition.
    pub timestamp_ms: i64,
    /// The bytes that were appended.
    pub payload: Bytes,
}

/// Appends one framed record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, offset: u64, timestamp_ms: i64, payload: &[u8]) {
    let start = out.len();
    let len = (FRAME_HEADER_LEN + payload.len()) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = checksum(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame[..4]);
    crc32c::crc32c_append(crc, &frame[8..])
}

/// The result of looking at the bytes where a frame should start.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A valid frame of `len` bytes.
    Frame {
        offset: u64,
        timestamp_ms: i64,
        len: usize,
    },
    /// The buffer ends inside a frame whose header claims `len` bytes.
    Incomplete { len: usize },
    /// Not a valid frame.
    Invalid(&'static str),
}

/// Decodes the frame at the start of `buf`, checking its length bounds and CRC.
pub(crate) fn decode(buf: &[u8], max_frame_len: usize) -> Decoded {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return match buf.get(..4) {
            Some(len) => match frame_len(len, max_frame_len) {
                Ok(len) => Decoded::Incomplete { len },
                Err(reason) => Decoded::Invalid(reason),
            },
            None => Decoded::Incomplete {
                len: FRAME_HEADER_LEN,
            },
        };
    };
    let len = match frame_len(&header[..4], max_frame_len) {
        Ok(len) => len,
        Err(reason) => return Decoded::Invalid(reason),
    };
    let Some(frame) = buf.get(..len) else {
        return Decoded::Incomplete { len };
    };
    let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if stored != checksum(frame) {
        return Decoded::Invalid("checksum mismatch");
    }
    Decoded::Frame {
        offset: read_u64(&header[8..16]),
        timestamp_ms: read_u64(&header[16..24]) as i64,
        len,
    }
}

fn frame_len(field: &[u8], max_frame_len: usize) -> Result<usize, &'static str> {
    let len = u32::from_le_bytes([field[0], field[1], field[2], field[3]]) as usize;
    if len < FRAME_HEADER_LEN {
        Err("frame length below header size")
    } else if len > max_frame_len {
        Err("frame length above the maximum record size")
    } else {
        Ok(len)
    }
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0; 8];
    raw.copy_from_slice(bytes);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    #[test]
    fn round_trip_and_layout() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 1_700_000_000_000, b"hello");
        assert_eq!(buf.len(), FRAME_HEADER_LEN + 5);
        assert_eq!(&buf[..4], &29u32.to_le_bytes());
        assert_eq!(&buf[8..16], &7u64.to_le_bytes());
        assert_eq!(&buf[24..], b"hello");
        assert_eq!(
            decode(&buf, MAX),
            Decoded::Frame {
                offset: 7,
                timestamp_ms: 1_700_000_000_000,
                len: 29
            }
        );
    }

    #[test]
    fn zero_filled_and_short_input() {
        assert_eq!(
            decode(&[0; 64], MAX),
            Decoded::Invalid("frame length below header size")
        );
        assert_eq!(decode(&[], MAX), Decoded::Incomplete { len: 24 });
        let mut buf = Vec::new();
        encode(&mut buf, 1, 2, &[9; 100]);
        assert_eq!(decode(&buf[..50], MAX), Decoded::Incomplete { len: 124 });
        assert_eq!(decode(&buf[..10], MAX), Decoded::Incomplete { len: 124 });
    }

    #[test]
    fn oversized_length_is_invalid() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 2, &[9; 100]);
        assert!(matches!(decode(&buf, 64), Decoded::Invalid(_)));
    }

    proptest! {
        #[test]
        fn any_flipped_bit_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..256),
                                       offset: u64, ts: i64, bit in 0usize..2048) {
            let mut buf = Vec::new();
            encode(&mut buf, offset, ts, &payload);
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            let accepted = matches!(decode(&buf, MAX), Decoded::Frame { .. });
            prop_assert!(!accepted);
        }

        #[test]
        fn encode_decode_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..512),
                                    offset: u64, ts: i64) {
            let mut buf = Vec::new();
            encode(&mut buf, offset, ts, &payload);
            prop_assert_eq!(decode(&buf, MAX), Decoded::Frame { offset, timestamp_ms: ts, len: buf.len() });
        }
    }
}
