//! The records the broker keeps in the storage engine, and their encoding.
//!
//! Every record starts with a tag byte. Strings are a `u16` length and
//! UTF-8 bytes, integers are big-endian. A message is kept as an MQTT 5.0
//! PUBLISH packet (topic, payload, QoS, retain and every property), encoded
//! and decoded by the protocol codec, so nothing about a message is lost
//! and no second message format exists.
//!
//! A message for many persistent sessions lists them in several records so
//! that no record outgrows a segment: the `Publish` record names the first
//! recipients, and each `Recipients` record that follows it in the same
//! append names more, pointing back at the `Publish` by how many records
//! before it that is. One append lands in one segment, so a message and
//! all its recipient lists are trimmed together.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tidemq_proto::mqtt::{self, Protocol, Publish, QoS, SubscriptionOptions};

mod read;
mod write;

use crate::message::Message;
use read::Reader;
pub use read::{Offsets, RecordError};
pub use write::{
    RecipientRef, RecipientSplit, acks_record, forwarded_record, publish_record, recipient_ranges,
    recipients_record,
};

const PUBLISH: u8 = 1;
const ACK: u8 = 2;
const RELEASED: u8 = 3;
const INBOUND_RELEASED: u8 = 4;
const SESSION: u8 = 5;
const SESSION_GONE: u8 = 6;
const RETAIN: u8 = 7;
const RECIPIENTS: u8 = 8;
/// Not a record: the revision envelope around one ([`with_revision`]).
const REVISION: u8 = 9;
const SUBSCRIPTIONS: u8 = 10;
/// A `Publish` record moved forward: its old offset, then a `Publish` record.
const MOVED: u8 = 11;
/// Completions of one session: several offsets in one record.
const ACKS: u8 = 12;
/// Follows the records of a message another node forwarded.
const FORWARDED: u8 = 13;

/// Wraps an encoded record of the session or retained partition in its
/// revision: `REVISION`, the revision (`u64`), the record. The record of a
/// key with the highest revision is the one in force (see `compact`).
pub fn with_revision(revision: u64, record: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + record.len());
    out.push(REVISION);
    out.extend_from_slice(&revision.to_be_bytes());
    out.extend_from_slice(&record);
    out
}

/// The revision of a stored record and the record itself; records written
/// before revisions existed have revision 0.
pub fn split_revision(bytes: &Bytes) -> (u64, Bytes) {
    match bytes.get(..9) {
        Some([REVISION, revision @ ..]) => {
            let revision = u64::from_be_bytes(revision.try_into().unwrap_or_default());
            (revision, bytes.slice(9..))
        }
        _ => (0, bytes.clone()),
    }
}

/// About the bytes of recipients one record lists at most.
pub const RECIPIENT_BYTES_PER_RECORD: usize = 256 * 1024;

/// A persistent session that must receive a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Session key `{tenant}/{client_id}`.
    pub key: String,
    /// The session's epoch: a clean start begins a new one, and messages of
    /// an older epoch are not delivered.
    pub epoch: u64,
    /// The QoS it is delivered with.
    pub qos: QoS,
    /// The retain flag it is delivered with.
    pub retain: bool,
    /// Matching 5.0 subscription identifiers.
    pub subscription_ids: Vec<u32>,
}

/// The inbound QoS 2 flow a message came from: the publisher's session,
/// epoch and packet id, remembered until PUBREL so a resend after a crash
/// is not routed twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The publisher's session key.
    pub key: String,
    /// The publisher's session epoch.
    pub epoch: u64,
    /// The PUBLISH packet id.
    pub packet_id: u16,
}

/// A subscription as a persistent session keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    /// The filter (shared ones keep their `$share/...` form).
    pub filter: String,
    /// The options it was made with.
    pub options: SubscriptionOptions,
    /// Its 5.0 subscription identifier.
    pub id: Option<u32>,
}

/// What a persistent session is, apart from its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Session key `{tenant}/{client_id}`.
    pub key: String,
    /// See [`Recipient::epoch`].
    pub epoch: u64,
    /// Session expiry interval in seconds (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// Protocol of the last connection.
    pub protocol: Protocol,
    /// Its subscriptions.
    pub subscriptions: Vec<StoredSubscription>,
    /// The user name of the connection that last used it, for the ACL
    /// (absent in records written before it was kept).
    pub username: Option<String>,
}

/// One record of the broker's log.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A message for one or more persistent sessions (and the inbound QoS 2
    /// flow it came from, if any).
    Publish {
        /// The message, as a 5.0 PUBLISH without packet id semantics.
        publish: Publish,
        /// When it expires, in ms since the Unix epoch.
        expires_at_ms: Option<u64>,
        /// Where it came from, for a QoS 2 publisher.
        origin: Option<Origin>,
        /// Who must receive it.
        recipients: Vec<Recipient>,
    },
    /// A copy of a message for one session, written further on so the
    /// segment of the original can be given back: replay moves the
    /// session's pending delivery from `from` (same partition) to this
    /// record, and a completion of `from` completes this one.
    Moved {
        /// Offset of the record copied.
        from: u64,
        /// When the message was first stored: the session's messages stay
        /// in that order.
        timestamp_ms: i64,
        /// The copy: a `Publish` naming the one session.
        record: Box<Record>,
    },
    /// More recipients of the message `back` records before this one
    /// (same partition, same append).
    Recipients {
        /// How many offsets back the `Publish` record is.
        back: u32,
        /// Who must receive it.
        recipients: Vec<Recipient>,
    },
    /// The message at `offset` (same partition) was completed by a session.
    Ack {
        /// Session key.
        key: String,
        /// Session epoch.
        epoch: u64,
        /// The message record's offset.
        offset: u64,
    },
    /// The messages at `offsets` (same partition) were completed by a
    /// session: what one read pass of its connection completed.
    Acks {
        /// Session key.
        key: String,
        /// Session epoch.
        epoch: u64,
        /// The message records' offsets.
        offsets: Vec<u64>,
    },
    /// A session answered PUBREC for the message at `offset`: only PUBREL
    /// remains to be sent.
    Released {
        /// Session key.
        key: String,
        /// Session epoch.
        epoch: u64,
        /// The message record's offset.
        offset: u64,
    },
    /// A publisher released (PUBREL) an inbound QoS 2 packet id.
    InboundReleased {
        /// The publisher's session key.
        key: String,
        /// Its session epoch.
        epoch: u64,
        /// The packet id.
        packet_id: u16,
    },
    /// A persistent session was created or changed.
    Session(StoredSession),
    /// Subscriptions a persistent session made or removed since its last
    /// `Session` record (one SUBSCRIBE or UNSUBSCRIBE): applied on top of
    /// that record when it is of the same epoch.
    Subscriptions {
        /// Session key.
        key: String,
        /// The session's epoch.
        epoch: u64,
        /// Subscriptions made or replaced.
        added: Vec<StoredSubscription>,
        /// Filters unsubscribed.
        removed: Vec<String>,
    },
    /// A session ended; everything it had is gone.
    SessionGone {
        /// Session key.
        key: String,
    },
    /// The message whose records come just before this one was forwarded
    /// by node `origin` as its message number `sequence`: after a crash,
    /// the highest number of each origin in a partition tells which of
    /// that node's messages for the partition are stored already.
    Forwarded {
        /// The node that forwarded it.
        origin: u64,
        /// Its number on that node's link to this one.
        sequence: u64,
    },
    /// A retained message was set (or, with an empty payload, cleared).
    Retain {
        /// The message.
        publish: Publish,
        /// When it expires, in ms since the Unix epoch.
        expires_at_ms: Option<u64>,
    },
}

impl Record {
    /// The record's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let mut out = BytesMut::with_capacity(self.size_hint());
        let out = &mut out;
        match self {
            Record::Publish {
                publish,
                expires_at_ms,
                origin,
                recipients,
            } => {
                let recipients = recipients.iter().map(Recipient::as_ref);
                return publish_record(publish, *expires_at_ms, origin.as_ref(), recipients);
            }
            Record::Moved {
                from,
                timestamp_ms,
                record,
            } => {
                out.put_u8(MOVED);
                out.put_u64(*from);
                out.put_i64(*timestamp_ms);
                out.extend_from_slice(&record.encode()?);
            }
            Record::Recipients { back, recipients } => {
                return recipients_record(*back, recipients.iter().map(Recipient::as_ref));
            }
            Record::Acks {
                key,
                epoch,
                offsets,
            } => return acks_record(key, *epoch, offsets),
            Record::Ack { key, epoch, offset } | Record::Released { key, epoch, offset } => {
                out.put_u8(if matches!(self, Record::Ack { .. }) {
                    ACK
                } else {
                    RELEASED
                });
                put_str(out, key)?;
                out.put_u64(*epoch);
                out.put_u64(*offset);
            }
            Record::InboundReleased {
                key,
                epoch,
                packet_id,
            } => {
                out.put_u8(INBOUND_RELEASED);
                put_str(out, key)?;
                out.put_u64(*epoch);
                out.put_u16(*packet_id);
            }
            Record::Session(session) => {
                out.put_u8(SESSION);
                put_str(out, &session.key)?;
                out.put_u64(session.epoch);
                out.put_u32(session.expiry_secs);
                out.put_u8(session.protocol.level());
                put_subscriptions(out, &session.subscriptions)?;
                // Trailing and optional: older records end before it.
                if let Some(username) = &session.username {
                    put_str(out, username)?;
                }
            }
            Record::SessionGone { key } => {
                out.put_u8(SESSION_GONE);
                put_str(out, key)?;
            }
            Record::Subscriptions {
                key,
                epoch,
                added,
                removed,
            } => {
                out.put_u8(SUBSCRIPTIONS);
                put_str(out, key)?;
                out.put_u64(*epoch);
                put_subscriptions(out, added)?;
                out.put_u32(len_u32(removed.len())?);
                for filter in removed {
                    put_str(out, filter)?;
                }
            }
            Record::Forwarded { origin, sequence } => {
                return Ok(forwarded_record(*origin, *sequence));
            }
            Record::Retain {
                publish,
                expires_at_ms,
            } => {
                out.put_u8(RETAIN);
                out.put_u64(expires_at_ms.unwrap_or(0));
                put_publish(out, publish)?;
            }
        }
        Ok(write::into_vec(std::mem::take(out)))
    }

    /// About the bytes [`Record::encode`] produces, so that it allocates once.
    fn size_hint(&self) -> usize {
        match self {
            Record::Retain { publish: p, .. } => 48 + p.topic.len() + p.payload.len(),
            _ => 64,
        }
    }

    /// Decodes a record.
    pub fn decode(bytes: Bytes) -> Result<Record, RecordError> {
        let mut r = Reader::new(&bytes);
        let record = match r.u8()? {
            PUBLISH => {
                let expires_at_ms = nonzero(r.u64()?);
                let origin = r.owned_origin()?;
                let recipients = r.owned_recipients()?;
                Record::Publish {
                    publish: r.publish(&bytes)?,
                    expires_at_ms,
                    origin,
                    recipients,
                }
            }
            RECIPIENTS => Record::Recipients {
                back: r.u32()?,
                recipients: r.owned_recipients()?,
            },
            MOVED => {
                let from = r.u64()?;
                let timestamp_ms = r.i64()?;
                let at = bytes.len() - r.remaining();
                Record::Moved {
                    from,
                    timestamp_ms,
                    record: Box::new(Record::decode(bytes.slice(at..))?),
                }
            }
            tag @ (ACK | RELEASED) => {
                let (key, epoch, offset) = (r.string()?, r.u64()?, r.u64()?);
                if tag == ACK {
                    Record::Ack { key, epoch, offset }
                } else {
                    Record::Released { key, epoch, offset }
                }
            }
            ACKS => Record::Acks {
                key: r.string()?,
                epoch: r.u64()?,
                offsets: r.offsets()?.collect(),
            },
            INBOUND_RELEASED => Record::InboundReleased {
                key: r.string()?,
                epoch: r.u64()?,
                packet_id: r.u16()?,
            },
            SESSION => {
                let key = r.string()?;
                let epoch = r.u64()?;
                let expiry_secs = r.u32()?;
                let protocol = match r.u8()? {
                    3 => Protocol::V3_1,
                    4 => Protocol::V3_1_1,
                    5 => Protocol::V5,
                    level => return Err(RecordError::ProtocolLevel(level)),
                };
                let subscriptions = r.subscriptions()?;
                let username = if r.remaining() > 0 {
                    Some(r.string()?)
                } else {
                    None
                };
                Record::Session(StoredSession {
                    key,
                    epoch,
                    expiry_secs,
                    protocol,
                    subscriptions,
                    username,
                })
            }
            SESSION_GONE => Record::SessionGone { key: r.string()? },
            SUBSCRIPTIONS => Record::Subscriptions {
                key: r.string()?,
                epoch: r.u64()?,
                added: r.subscriptions()?,
                removed: (0..r.u32()?)
                    .map(|_| r.string())
                    .collect::<Result<_, _>>()?,
            },
            FORWARDED => Record::Forwarded {
                origin: r.u64()?,
                sequence: r.u64()?,
            },
            RETAIN => Record::Retain {
                expires_at_ms: nonzero(r.u64()?),
                publish: r.publish(&bytes)?,
            },
            tag => return Err(RecordError::UnknownTag(tag)),
        };
        Ok(record)
    }

    /// What recovery needs of a record, read in place without decoding the
    /// message or allocating: a PUBLISH record's origin (its recipients go
    /// to `recipient` as `(session key, epoch)`), or a completion.
    pub fn replay_view<'a>(
        bytes: &'a [u8],
        mut recipient: impl FnMut(&'a str, u64),
    ) -> Result<ReplayView<'a>, RecordError> {
        let mut r = Reader::new(bytes);
        Ok(match r.u8()? {
            PUBLISH => {
                let _expires = r.u64()?;
                let origin = r.origin()?;
                r.recipients(|key, epoch, _, _, _| recipient(key, epoch))?;
                ReplayView::Publish { origin }
            }
            MOVED => {
                let from = r.u64()?;
                let timestamp_ms = r.i64()?;
                match Record::replay_view(r.take(r.remaining())?, recipient)? {
                    ReplayView::Publish { .. } => ReplayView::Moved { from, timestamp_ms },
                    _ => return Err(RecordError::UnknownTag(MOVED)),
                }
            }
            RECIPIENTS => {
                let back = r.u32()?;
                r.recipients(|key, epoch, _, _, _| recipient(key, epoch))?;
                ReplayView::Recipients { back }
            }
            FORWARDED => ReplayView::Forwarded {
                origin: r.u64()?,
                sequence: r.u64()?,
            },
            ACK => ReplayView::Ack {
                key: r.str()?,
                epoch: r.u64()?,
                offset: r.u64()?,
            },
            ACKS => ReplayView::Acks {
                key: r.str()?,
                epoch: r.u64()?,
                offsets: r.offsets()?,
            },
            RELEASED => ReplayView::Released {
                key: r.str()?,
                epoch: r.u64()?,
                offset: r.u64()?,
            },
            INBOUND_RELEASED => ReplayView::InboundReleased {
                key: r.str()?,
                epoch: r.u64()?,
                packet_id: r.u16()?,
            },
            _ => ReplayView::Other,
        })
    }
}

/// What [`Record::replay_view`] reads of a message-partition record.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayView<'a> {
    /// A message, with its inbound QoS 2 flow if any.
    Publish {
        /// `(publisher key, epoch, packet id)`.
        origin: Option<(&'a str, u64, u16)>,
    },
    /// A message moved forward from `from` for the recipients given.
    Moved {
        /// The offset of the record it was copied from.
        from: u64,
        /// When the message was first stored.
        timestamp_ms: i64,
    },
    /// More recipients of the message `back` offsets before.
    Recipients {
        /// How many offsets back the message's `Publish` record is.
        back: u32,
    },
    /// The message before was forwarded by `origin` as its number
    /// `sequence`.
    Forwarded {
        /// The node that forwarded it.
        origin: u64,
        /// Its number.
        sequence: u64,
    },
    /// A session completed the message at `offset`.
    Ack {
        /// Session key.
        key: &'a str,
        /// Session epoch.
        epoch: u64,
        /// The message's offset.
        offset: u64,
    },
    /// A session completed the messages at `offsets`.
    Acks {
        /// Session key.
        key: &'a str,
        /// Session epoch.
        epoch: u64,
        /// The messages' offsets.
        offsets: Offsets<'a>,
    },
    /// A session answered PUBREC for the message at `offset`.
    Released {
        /// Session key.
        key: &'a str,
        /// Session epoch.
        epoch: u64,
        /// The message's offset.
        offset: u64,
    },
    /// A publisher released an inbound QoS 2 packet id.
    InboundReleased {
        /// Publisher's session key.
        key: &'a str,
        /// Its epoch.
        epoch: u64,
        /// The packet id.
        packet_id: u16,
    },
    /// Any other record.
    Other,
}

impl Recipient {
    /// Its bytes in a record.
    pub fn encoded_len(&self) -> usize {
        self.as_ref().encoded_len()
    }

    /// Borrowed, as the encoders take it.
    pub fn as_ref(&self) -> RecipientRef<'_> {
        RecipientRef {
            key: &self.key,
            epoch: self.epoch,
            qos: self.qos,
            retain: self.retain,
            subscription_ids: &self.subscription_ids,
        }
    }
}

fn put_subscriptions(
    out: &mut BytesMut,
    subscriptions: &[StoredSubscription],
) -> Result<(), RecordError> {
    out.put_u32(len_u32(subscriptions.len())?);
    for s in subscriptions {
        put_str(out, &s.filter)?;
        out.put_u8(s.options.to_byte());
        out.put_u32(s.id.unwrap_or(0));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A message's expiry as ms since the Unix epoch.
pub fn expiry_to_unix(message: &Message, now: Instant) -> Option<u64> {
    message.expires_at.map(|at| {
        let left = at.saturating_duration_since(now);
        unix_ms().saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
    })
}

/// A stored expiry back as an instant of this process.
pub fn expiry_from_unix(expires_at_ms: Option<u64>, now: Instant) -> Option<Instant> {
    expires_at_ms.map(|at| now + Duration::from_millis(at.saturating_sub(unix_ms())))
}

/// The PUBLISH a message is stored as.
pub fn message_publish(message: &Message) -> Publish {
    Publish {
        dup: false,
        qos: message.qos,
        retain: message.retain,
        topic: message.topic.clone(),
        packet_id: (message.qos != QoS::AtMostOnce).then_some(1),
        properties: {
            let mut p = message.properties.clone();
            // Stored as an absolute time beside the packet.
            p.message_expiry_interval = None;
            p
        },
        payload: message.payload.clone(),
    }
}

fn put_publish(out: &mut BytesMut, publish: &Publish) -> Result<(), RecordError> {
    Ok(mqtt::encode_publish(publish, Protocol::V5, out)?)
}

fn put_str(out: &mut BytesMut, s: &str) -> Result<(), RecordError> {
    let len = u16::try_from(s.len()).map_err(|_| RecordError::StringTooLong(s.len()))?;
    out.put_u16(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn len_u32(len: usize) -> Result<u32, RecordError> {
    u32::try_from(len).map_err(|_| RecordError::TooManyItems(len))
}

fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

#[cfg(test)]
mod tests;
