//! The one reader of stored records, and what can be wrong with one.

use bytes::{Bytes, BytesMut};
use tidemq_proto::mqtt::{self, Packet, Protocol, Publish, QoS, SubscriptionOptions};

use super::{Origin, Recipient, StoredSubscription};

/// Largest message decoded (the broker's packet limit is lower).
const MAX_PACKET: usize = 256 * 1024 * 1024;

/// Why a record cannot be written or read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record ends inside a field.
    #[error("record ends early")]
    Truncated,
    /// A string field is not UTF-8.
    #[error("a string is not UTF-8")]
    NotUtf8,
    /// The first byte names no record kind.
    #[error("unknown record tag {0}")]
    UnknownTag(u8),
    /// A session's protocol level is not 3, 4 or 5.
    #[error("unknown protocol level {0}")]
    ProtocolLevel(u8),
    /// A QoS byte is not 0, 1 or 2.
    #[error("bad QoS {0}")]
    Qos(u8),
    /// A subscription's options byte is not valid.
    #[error("bad subscription options: {0}")]
    Options(String),
    /// The stored message is not a whole, valid PUBLISH.
    #[error("the message does not decode: {0}")]
    Message(String),
    /// A string is longer than a record's 16-bit length.
    #[error("a string of {0} bytes is too long for a record")]
    StringTooLong(usize),
    /// A list is longer than a record's 32-bit count.
    #[error("{0} items are too many for a record")]
    TooManyItems(usize),
    /// The message could not be encoded.
    #[error("cannot encode the message: {0}")]
    Encode(#[from] mqtt::EncodeError),
}

/// Reads fields in place from a record's bytes: integers big-endian,
/// strings a `u16` length and UTF-8.
pub(super) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    /// Bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.0.len()
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        self.take(N)?.try_into().map_err(|_| RecordError::Truncated)
    }

    pub(super) fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(super) fn i64(&mut self) -> Result<i64, RecordError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub(super) fn str(&mut self) -> Result<&'a str, RecordError> {
        let len = usize::from(self.u16()?);
        std::str::from_utf8(self.take(len)?).map_err(|_| RecordError::NotUtf8)
    }

    pub(super) fn string(&mut self) -> Result<String, RecordError> {
        self.str().map(str::to_owned)
    }

    /// A PUBLISH record's origin: `(publisher key, epoch, packet id)`.
    pub(super) fn origin(&mut self) -> Result<Option<(&'a str, u64, u16)>, RecordError> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some((self.str()?, self.u64()?, self.u16()?)),
        })
    }

    pub(super) fn owned_origin(&mut self) -> Result<Option<Origin>, RecordError> {
        Ok(self.origin()?.map(|(key, epoch, packet_id)| Origin {
            key: key.to_owned(),
            epoch,
            packet_id,
        }))
    }

    /// A recipient list, each recipient handed to `each` as read.
    pub(super) fn recipients(
        &mut self,
        mut each: impl FnMut(&'a str, u64, QoS, bool, &'a [u8]),
    ) -> Result<(), RecordError> {
        for _ in 0..self.u32()? {
            let key = self.str()?;
            let epoch = self.u64()?;
            let qos = self.u8()?;
            let qos = QoS::from_u8(qos).ok_or(RecordError::Qos(qos))?;
            let retain = self.u8()? != 0;
            let ids = self.u32()? as usize;
            let ids = self.take(ids.checked_mul(4).ok_or(RecordError::Truncated)?)?;
            each(key, epoch, qos, retain, ids);
        }
        Ok(())
    }

    /// A list of offsets: a count, then a `u64` each.
    pub(super) fn offsets(&mut self) -> Result<Offsets<'a>, RecordError> {
        let count = self.u32()? as usize;
        let bytes = self.take(count.checked_mul(8).ok_or(RecordError::Truncated)?)?;
        Ok(Offsets(bytes))
    }

    pub(super) fn owned_recipients(&mut self) -> Result<Vec<Recipient>, RecordError> {
        let mut out = Vec::new();
        self.recipients(|key, epoch, qos, retain, ids| {
            out.push(Recipient {
                key: key.to_owned(),
                epoch,
                qos,
                retain,
                subscription_ids: ids
                    .chunks_exact(4)
                    .map(|id| u32::from_be_bytes([id[0], id[1], id[2], id[3]]))
                    .collect(),
            });
        })?;
        Ok(out)
    }

    /// A list of subscriptions: filter, options byte, identifier (0: none).
    pub(super) fn subscriptions(&mut self) -> Result<Vec<StoredSubscription>, RecordError> {
        let count = self.u32()?;
        let mut out = Vec::with_capacity(count.min(1024) as usize);
        for _ in 0..count {
            let filter = self.string()?;
            let options = SubscriptionOptions::from_byte(self.u8()?)
                .map_err(|e| RecordError::Options(e.to_string()))?;
            let id = self.u32()?;
            out.push(StoredSubscription {
                filter,
                options,
                id: (id != 0).then_some(id),
            });
        }
        Ok(out)
    }

    /// The rest of `record` (whose bytes this reader reads) as a PUBLISH;
    /// its payload shares `record`'s buffer.
    pub(super) fn publish(&self, record: &Bytes) -> Result<Publish, RecordError> {
        let at = record.len() - self.remaining();
        let mut buf = BytesMut::from(&record[at..]);
        match mqtt::decode(&mut buf, Protocol::V5, MAX_PACKET) {
            Ok(Some(Packet::Publish(publish))) => Ok(publish),
            Ok(_) => Err(RecordError::Message("not a whole PUBLISH".into())),
            Err(e) => Err(RecordError::Message(e.to_string())),
        }
    }
}

/// The offsets of an `Acks` record, read in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offsets<'a>(&'a [u8]);

impl Iterator for Offsets<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_be_bytes(*head))
    }
}
