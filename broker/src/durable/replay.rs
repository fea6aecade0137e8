//! Recovery: replaying the store's partitions into what was promised
//! ([`Recovered`]), and compacting the session and retained partitions.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use tidemq_proto::mqtt::Publish;
use tracing::{info, warn};

use super::record::{self, ReplayView};
use super::{
    DiskRef, DurableError, DurableStore, RETAINED, Record, Recovered, RecoveredSession, SESSIONS,
    StoredSession,
};

/// Bytes asked for per read while replaying.
const REPLAY_CHUNK: usize = 4 * 1024 * 1024;

impl DurableStore {
    /// Every record of a partition, oldest first, in chunks.
    async fn scan(
        &self,
        partition: u64,
        mut each: impl FnMut(u64, i64, Bytes),
    ) -> Result<u64, DurableError> {
        let engine = &self.inner.engine;
        let mut from = engine.partition_info(partition)?.log_start;
        let mut count = 0;
        loop {
            let records = engine.read(partition, from, REPLAY_CHUNK).await?;
            let Some(last) = records.last() else {
                return Ok(count);
            };
            from = last.offset + 1;
            for record in records {
                count += 1;
                each(record.offset, record.timestamp_ms, record.payload);
            }
        }
    }

    pub(super) async fn replay(&self) -> Result<Recovered, DurableError> {
        let mut recovered = Recovered::default();

        // Sessions: the latest record of each key wins.
        let mut sessions: HashMap<String, StoredSession> = HashMap::new();
        let mut session_records = 0u64;
        recovered.records += self
            .scan(SESSIONS, |offset, _, payload| {
                session_records += 1;
                match Record::decode(payload) {
                    Ok(Record::Session(s)) => {
                        sessions.insert(s.key.clone(), s);
                    }
                    Ok(Record::SessionGone { key }) => {
                        sessions.remove(&key);
                    }
                    Ok(_) => {}
                    Err(e) => warn!(offset, error = %e, "skipping a session record"),
                }
            })
            .await?;

        // Retained messages: the latest per topic; an empty payload clears.
        let mut retained: BTreeMap<String, (Publish, Option<u64>)> = BTreeMap::new();
        let mut retained_records = 0u64;
        recovered.records += self
            .scan(RETAINED, |offset, _, payload| {
                retained_records += 1;
                match Record::decode(payload) {
                    Ok(Record::Retain {
                        publish,
                        expires_at_ms,
                    }) => {
                        if publish.payload.is_empty() {
                            retained.remove(&publish.topic);
                        } else {
                            retained.insert(publish.topic.clone(), (publish, expires_at_ms));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(offset, error = %e, "skipping a retained record"),
                }
            })
            .await?;
        let now_ms = record::unix_ms();
        retained.retain(|_, (_, expires)| expires.is_none_or(|at| at > now_ms));

        // Messages: what each live session still has to receive.
        let epoch_of = |key: &str| sessions.get(key).map(|s| s.epoch);
        // Older messages are no longer queued (session.max_message_age_secs).
        let oldest_ms = self.inner.max_message_age.map_or(i64::MIN, |age| {
            i64::try_from(now_ms.saturating_sub(age.as_millis() as u64)).unwrap_or(i64::MAX)
        });
        let mut queues: HashMap<String, BTreeMap<DiskRef, Pending>> = HashMap::new();
        let mut inbound: HashMap<String, HashSet<u16>> = HashMap::new();
        for partition in 0..self.inner.partitions {
            recovered.records += self
                .scan(u64::from(partition), |offset, timestamp_ms, payload| {
                    let at = DiskRef { partition, offset };
                    let mut recipients = Vec::new();
                    let view = Record::replay_view(&payload, |key, epoch| {
                        if epoch_of(key) == Some(epoch) {
                            recipients.push(key);
                        }
                    });
                    match view {
                        Ok(ReplayView::Publish { origin }) => {
                            if let Some((key, epoch, packet_id)) = origin
                                && epoch_of(key) == Some(epoch)
                            {
                                match inbound.get_mut(key) {
                                    Some(ids) => {
                                        ids.insert(packet_id);
                                    }
                                    None => {
                                        inbound.insert(key.to_string(), HashSet::from([packet_id]));
                                    }
                                }
                            }
                            if timestamp_ms >= oldest_ms {
                                queue_for(&mut queues, recipients, at, timestamp_ms);
                            }
                        }
                        Ok(ReplayView::Recipients { .. }) => {
                            if timestamp_ms >= oldest_ms {
                                queue_for(&mut queues, recipients, at, timestamp_ms);
                            }
                        }
                        Ok(ReplayView::Ack { key, offset, .. }) => {
                            if let Some(queue) = queues.get_mut(key) {
                                queue.remove(&DiskRef { partition, offset });
                            }
                        }
                        Ok(ReplayView::Released { key, offset, .. }) => {
                            if let Some(p) = queues
                                .get_mut(key)
                                .and_then(|q| q.get_mut(&DiskRef { partition, offset }))
                            {
                                p.released = true;
                            }
                        }
                        Ok(ReplayView::InboundReleased {
                            key,
                            epoch,
                            packet_id,
                        }) => {
                            if epoch_of(key) == Some(epoch)
                                && let Some(ids) = inbound.get_mut(key)
                            {
                                ids.remove(&packet_id);
                            }
                        }
                        Ok(ReplayView::Other) => {}
                        Err(e) => warn!(partition, offset, error = %e, "skipping a message record"),
                    }
                })
                .await?;
        }

        let compacted = self
            .compact(SESSIONS, session_records, sessions.len(), || {
                sessions.values().cloned().map(Record::Session).collect()
            })
            .await;
        skip_failed_compaction(SESSIONS, compacted)?;
        let compacted = self
            .compact(RETAINED, retained_records, retained.len(), || {
                retained
                    .values()
                    .map(|(publish, expires_at_ms)| Record::Retain {
                        publish: publish.clone(),
                        expires_at_ms: *expires_at_ms,
                    })
                    .collect()
            })
            .await;
        skip_failed_compaction(RETAINED, compacted)?;

        recovered.retained = retained.into_values().collect();
        recovered.sessions = sessions
            .into_values()
            .map(|session| {
                let mut queue: Vec<(DiskRef, Pending)> = queues
                    .remove(&session.key)
                    .map(|q| q.into_iter().collect())
                    .unwrap_or_default();
                // Across partitions, in the order they were stored.
                queue.sort_by_key(|(at, p)| (p.timestamp_ms, at.partition, at.offset));
                RecoveredSession {
                    inbound_qos2: inbound
                        .remove(&session.key)
                        .map(|ids| ids.into_iter().collect())
                        .unwrap_or_default(),
                    queue: queue.into_iter().map(|(at, p)| (at, p.released)).collect(),
                    session,
                }
            })
            .collect();
        Ok(recovered)
    }

    /// Rewrites a partition holding many more records than live entries:
    /// appends the live ones again, then trims everything before them.
    async fn compact(
        &self,
        partition: u64,
        records: u64,
        live: usize,
        rewrite: impl FnOnce() -> Vec<Record>,
    ) -> Result<(), DurableError> {
        // Only sealed segments can be given back: while everything is in
        // the segment being written, a rewrite would only add to it.
        let info = self.inner.engine.partition_info(partition)?;
        if records < 1024 || records < 2 * live as u64 || info.segments < 2 {
            return Ok(());
        }
        let start = info.next_offset;
        let encoded = rewrite()
            .iter()
            .map(Record::encode)
            .collect::<Result<Vec<_>, _>>()?;
        for chunk in encoded.chunks(1024) {
            self.inner.engine.append(partition, chunk).await?;
        }
        let removed = self.inner.engine.trim_before(partition, start).await?;
        info!(partition, records, live, removed, "compacted");
        Ok(())
    }
}

/// A compaction that could not write its copy (a full disk) is skipped: the
/// records it meant to replace are all still there, so nothing is lost, and
/// the node starts anyway. A record that does not encode is a bug and fails.
fn skip_failed_compaction(
    partition: u64,
    compacted: Result<(), DurableError>,
) -> Result<(), DurableError> {
    match compacted {
        Err(DurableError::Storage(e)) => {
            warn!(partition, error = %e, "cannot compact: the store keeps the records as they are");
            Ok(())
        }
        other => other,
    }
}

/// A message a session still has to receive, as replay finds it.
#[derive(Clone, Copy)]
struct Pending {
    timestamp_ms: i64,
    released: bool,
}

/// Queues the message at `at` for each of `keys`.
fn queue_for(
    queues: &mut HashMap<String, BTreeMap<DiskRef, Pending>>,
    keys: Vec<&str>,
    at: DiskRef,
    timestamp_ms: i64,
) {
    let pending = Pending {
        timestamp_ms,
        released: false,
    };
    for key in keys {
        match queues.get_mut(key) {
            Some(queue) => {
                queue.insert(at, pending);
            }
            None => {
                queues.insert(key.to_string(), BTreeMap::from([(at, pending)]));
            }
        }
    }
}
