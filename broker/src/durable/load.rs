//! Reading stored messages back: the deliveries an offline session's
//! queue points to, retained messages at start, and where messages older
//! than an age begin.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemq_proto::mqtt::Publish;
use tidemq_storage_engine::StorageError;
use tracing::warn;

use super::{DiskRef, DurableError, DurableStore, Recipient, Record, record};
use crate::message::{Delivery, Message};

impl DurableStore {
    /// Reads back the messages `refs` point to, as deliveries to the session
    /// `key`. A message that is gone or no longer names the session is
    /// left out (and logged); the caller drops its reference.
    pub async fn load(
        &self,
        key: &str,
        refs: &[DiskRef],
    ) -> Result<Vec<(DiskRef, Option<Delivery>)>, DurableError> {
        let mut out = Vec::with_capacity(refs.len());
        let now = Instant::now();
        for &at in refs {
            let delivery = match self.message_at(at).await? {
                Some(m) => delivery_for(m.publish, m.expires_at_ms, m.recipients, key, at, now),
                None => None,
            };
            if delivery.is_none() {
                warn!(
                    session = key,
                    partition = at.partition,
                    offset = at.offset,
                    "a queued message is missing from the store"
                );
            }
            out.push((at, delivery));
        }
        Ok(out)
    }

    /// For each message partition, the first offset of a message younger
    /// than `age`: every queued message below it is older.
    pub async fn offsets_younger_than(&self, age: Duration) -> Result<Vec<u64>, DurableError> {
        let engine = &self.inner.engine;
        let since = i64::try_from(record::unix_ms().saturating_sub(age.as_millis() as u64))
            .unwrap_or(i64::MAX);
        let mut cutoffs = Vec::with_capacity(self.inner.partitions as usize);
        for partition in 0..u64::from(self.inner.partitions) {
            let cutoff = match engine.offset_for_time(partition, since).await? {
                Some(offset) => offset,
                None => engine.partition_info(partition)?.next_offset,
            };
            cutoffs.push(cutoff);
        }
        Ok(cutoffs)
    }

    /// The message a stored delivery at `at` points to, with the recipients
    /// the record there names: for a message with many recipients the
    /// message itself is some records before it; a moved message carries
    /// its own.
    pub(super) async fn message_at(
        &self,
        at: DiskRef,
    ) -> Result<Option<StoredMessage>, DurableError> {
        let publish_of = |timestamp_ms: i64, record: Record| match record {
            Record::Publish {
                publish,
                expires_at_ms,
                recipients,
                ..
            } => Some(StoredMessage {
                timestamp_ms,
                publish,
                expires_at_ms,
                recipients,
            }),
            _ => None,
        };
        Ok(match self.read_record(at.partition, at.offset).await? {
            Some((
                _,
                Record::Moved {
                    timestamp_ms,
                    record,
                    ..
                },
            )) => publish_of(timestamp_ms, *record),
            Some((timestamp_ms, Record::Recipients { back, recipients })) => self
                .read_record(at.partition, at.offset.saturating_sub(u64::from(back)))
                .await?
                .and_then(|(_, record)| publish_of(timestamp_ms, record))
                .map(|message| StoredMessage {
                    recipients,
                    ..message
                }),
            Some((timestamp_ms, record)) => publish_of(timestamp_ms, record),
            None => None,
        })
    }

    /// The record at `offset` of a message partition; `None` when it is
    /// gone (trimmed) or does not decode (logged).
    async fn read_record(
        &self,
        partition: u32,
        offset: u64,
    ) -> Result<Option<(i64, Record)>, DurableError> {
        let records = match self
            .inner
            .engine
            .read(u64::from(partition), offset, 1)
            .await
        {
            Ok(records) => records,
            Err(StorageError::OffsetOutOfRange { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(record) = records.into_iter().find(|r| r.offset == offset) else {
            return Ok(None);
        };
        let timestamp_ms = record.timestamp_ms;
        match Record::decode(record.payload) {
            Ok(record) => Ok(Some((timestamp_ms, record))),
            Err(e) => {
                warn!(partition, offset, error = %e, "stored message does not decode");
                Ok(None)
            }
        }
    }
}

/// A stored message, as a delivery of it points to it.
pub(super) struct StoredMessage {
    /// When it was first stored (a move keeps it).
    pub timestamp_ms: i64,
    pub publish: Publish,
    pub expires_at_ms: Option<u64>,
    /// The recipients the record pointed to names.
    pub recipients: Vec<Recipient>,
}

/// The delivery of a stored message to the session `key`, if `recipients`
/// names it.
fn delivery_for(
    publish: Publish,
    expires_at_ms: Option<u64>,
    recipients: Vec<Recipient>,
    key: &str,
    at: DiskRef,
    now: Instant,
) -> Option<Delivery> {
    let recipient = recipients.into_iter().find(|r| r.key == key)?;
    let message = Message {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties: publish.properties,
        publisher: None,
        expires_at: record::expiry_from_unix(expires_at_ms, now),
        id: None,
    };
    Some(Delivery {
        message: Arc::new(message),
        qos: recipient.qos,
        retain: recipient.retain,
        subscription_ids: recipient.subscription_ids,
        stored: Some(at),
        dup: false,
    })
}

/// A retained message read back from the store.
pub fn retained_message(publish: Publish, expires_at_ms: Option<u64>) -> Message {
    Message {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: true,
        properties: publish.properties,
        publisher: None,
        expires_at: record::expiry_from_unix(expires_at_ms, Instant::now()),
        id: None,
    }
}
