//! Giving back the space a few old messages pin: when every reference into
//! a message partition's oldest segment is an unsent QoS 1 message of an
//! offline session, those messages are copied forward (a `Moved` record
//! per session, naming the place it came from) and the sessions pointed at
//! the copies; the next trim removes the segment. A crash between the copy
//! and the switch loses nothing: replay moves a pending delivery to its
//! copy, and a completion of the original completes the copy.
//!
//! QoS 2 messages are not moved: the packet id of a stored message follows
//! from its place, and a QoS 2 message must keep the id its receiver may
//! have seen.

use tidemq_proto::mqtt::QoS;

use super::{DiskRef, DurableError, DurableStore, Record};

/// One message to copy forward: the session it is for and where it is.
pub struct Move {
    /// The session's key.
    pub key: String,
    /// The session's epoch.
    pub epoch: u64,
    /// Where the message is now.
    pub at: DiskRef,
}

impl DurableStore {
    /// The first offset after a message partition's oldest segment, when it
    /// has at least two more (so giving it back is worth a copy).
    pub fn oldest_segment_end(&self, partition: u32) -> Result<Option<u64>, DurableError> {
        let bases = self.inner.engine.segment_bases(u64::from(partition))?;
        Ok((bases.len() >= 3).then(|| bases[1]))
    }

    /// Copies the messages of `moves` (all in `partition`) forward, in one
    /// append; returns where each copy is, in order. `None`, with nothing
    /// written, when one of them may not move (not QoS 1, or not found).
    pub async fn copy_forward(
        &self,
        partition: u32,
        moves: &[Move],
    ) -> Result<Option<Vec<DiskRef>>, DurableError> {
        let mut records = Vec::with_capacity(moves.len());
        for m in moves {
            let Some(copy) = self.copy_for(m).await? else {
                return Ok(None);
            };
            records.push(self.encode_message(&copy)?);
        }
        if records.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let count = records.len() as u64;
        let first = self.send_records(partition, records)?.await?;
        self.inner.moved.inc_by(count);
        Ok(Some(
            (first..first + count)
                .map(|offset| DiskRef { partition, offset })
                .collect(),
        ))
    }

    /// The `Moved` record of one message for one session.
    async fn copy_for(&self, m: &Move) -> Result<Option<Record>, DurableError> {
        let Some(message) = self.message_at(m.at).await? else {
            return Ok(None);
        };
        let Some(recipient) = message
            .recipients
            .into_iter()
            .find(|r| r.key == m.key && r.epoch == m.epoch && r.qos == QoS::AtLeastOnce)
        else {
            return Ok(None);
        };
        Ok(Some(Record::Moved {
            from: m.at.offset,
            timestamp_ms: message.timestamp_ms,
            record: Box::new(Record::Publish {
                publish: message.publish,
                expires_at_ms: message.expires_at_ms,
                origin: None,
                recipients: vec![recipient],
            }),
        }))
    }
}
