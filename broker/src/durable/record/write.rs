//! The encoders of the per-message records, written straight from borrowed
//! parts: a message's record from its deliveries, a connection's
//! completions from their offsets. [`Record::encode`](super::Record::encode)
//! uses the same functions, so each format has one encoder.

use std::ops::Range;

use bytes::{BufMut, BytesMut};
use tidemq_proto::mqtt::{Publish, QoS};

use super::{
    ACKS, FORWARDED, Origin, PUBLISH, RECIPIENT_BYTES_PER_RECORD, RECIPIENTS, RecordError, len_u32,
    put_publish, put_str,
};

/// A recipient as a record lists it, borrowed from whoever holds it.
#[derive(Debug, Clone, Copy)]
pub struct RecipientRef<'a> {
    /// Session key `{tenant}/{client_id}`.
    pub key: &'a str,
    /// The session's epoch.
    pub epoch: u64,
    /// The QoS it is delivered with.
    pub qos: QoS,
    /// The retain flag it is delivered with.
    pub retain: bool,
    /// Matching 5.0 subscription identifiers.
    pub subscription_ids: &'a [u32],
}

impl RecipientRef<'_> {
    /// Its bytes in a record.
    pub fn encoded_len(&self) -> usize {
        16 + self.key.len() + 4 * self.subscription_ids.len()
    }
}

/// The `Publish` record of a message and its first recipients.
pub fn publish_record<'a>(
    publish: &Publish,
    expires_at_ms: Option<u64>,
    origin: Option<&Origin>,
    recipients: impl ExactSizeIterator<Item = RecipientRef<'a>> + Clone,
) -> Result<Vec<u8>, RecordError> {
    let listed: usize = recipients.clone().map(|r| r.encoded_len()).sum();
    let size = 64 + publish.topic.len() + publish.payload.len() + listed;
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(PUBLISH);
    out.put_u64(expires_at_ms.unwrap_or(0));
    match origin {
        Some(origin) => {
            out.put_u8(1);
            put_str(&mut out, &origin.key)?;
            out.put_u64(origin.epoch);
            out.put_u16(origin.packet_id);
        }
        None => out.put_u8(0),
    }
    put_recipients(&mut out, recipients)?;
    put_publish(&mut out, publish)?;
    Ok(into_vec(out))
}

/// A `Forwarded` record: the message just before came from node `origin`
/// as its number `sequence`.
pub fn forwarded_record(origin: u64, sequence: u64) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(17);
    out.put_u8(FORWARDED);
    out.put_u64(origin);
    out.put_u64(sequence);
    into_vec(out)
}

/// A `Recipients` record: more recipients of the message `back` records
/// before it.
pub fn recipients_record<'a>(
    back: u32,
    recipients: impl ExactSizeIterator<Item = RecipientRef<'a>> + Clone,
) -> Result<Vec<u8>, RecordError> {
    let listed: usize = recipients.clone().map(|r| r.encoded_len()).sum();
    let mut out = BytesMut::with_capacity(16 + listed);
    out.put_u8(RECIPIENTS);
    out.put_u32(back);
    put_recipients(&mut out, recipients)?;
    Ok(into_vec(out))
}

/// An `Acks` record: one session completed the messages at `offsets` (same
/// partition).
pub fn acks_record(key: &str, epoch: u64, offsets: &[u64]) -> Result<Vec<u8>, RecordError> {
    let mut out = BytesMut::with_capacity(16 + key.len() + 8 * offsets.len());
    out.put_u8(ACKS);
    put_str(&mut out, key)?;
    out.put_u64(epoch);
    out.put_u32(len_u32(offsets.len())?);
    for offset in offsets {
        out.put_u64(*offset);
    }
    Ok(into_vec(out))
}

/// Places a message's recipients, in order, in the records that list
/// them: about [`RECIPIENT_BYTES_PER_RECORD`] each, at least one each. The
/// one rule for both writing the records and finding each recipient's.
#[derive(Debug, Default)]
pub struct RecipientSplit {
    record: usize,
    bytes: usize,
}

impl RecipientSplit {
    /// The record (0: the `Publish`, then its `Recipients` records) that
    /// lists the next recipient, whose encoded size is `len`.
    pub fn place(&mut self, len: usize) -> usize {
        if self.bytes > 0 && self.bytes + len > RECIPIENT_BYTES_PER_RECORD {
            self.record += 1;
            self.bytes = 0;
        }
        self.bytes += len;
        self.record
    }
}

/// The ranges of recipients (given by their encoded sizes, in order) that
/// each record lists, as [`RecipientSplit`] places them; one empty range
/// for no recipients at all.
pub fn recipient_ranges(
    lens: impl IntoIterator<Item = usize>,
) -> impl Iterator<Item = Range<usize>> {
    let mut split = RecipientSplit::default();
    let mut placed = lens
        .into_iter()
        .map(move |len| split.place(len))
        .enumerate()
        .peekable();
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let range = match placed.next() {
            None => 0..0,
            Some((start, record)) => {
                let mut end = start + 1;
                while let Some((i, _)) = placed.next_if(|&(_, r)| r == record) {
                    end = i + 1;
                }
                start..end
            }
        };
        done = placed.peek().is_none();
        Some(range)
    })
}

pub(super) fn put_recipients<'a>(
    out: &mut BytesMut,
    recipients: impl ExactSizeIterator<Item = RecipientRef<'a>>,
) -> Result<(), RecordError> {
    out.put_u32(len_u32(recipients.len())?);
    for r in recipients {
        put_str(out, r.key)?;
        out.put_u64(r.epoch);
        out.put_u8(r.qos as u8);
        out.put_u8(u8::from(r.retain));
        out.put_u32(len_u32(r.subscription_ids.len())?);
        for id in r.subscription_ids {
            out.put_u32(*id);
        }
    }
    Ok(())
}

/// A `BytesMut` that never split gives its buffer to the `Vec`.
pub(super) fn into_vec(out: BytesMut) -> Vec<u8> {
    Vec::from(out)
}
