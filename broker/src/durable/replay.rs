//! Recovery: replaying the store's partitions into what was promised
//! ([`Recovered`]); the session and retained partitions are compacted on
//! the way (see `compact`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tidemq_proto::mqtt::Publish;
use tracing::warn;

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
        each: impl FnMut(u64, i64, Bytes),
    ) -> Result<u64, DurableError> {
        self.scan_until(partition, u64::MAX, each).await
    }

    /// The records of a partition below offset `end`, oldest first.
    pub(super) async fn scan_until(
        &self,
        partition: u64,
        end: u64,
        mut each: impl FnMut(u64, i64, Bytes),
    ) -> Result<u64, DurableError> {
        let engine = &self.inner.engine;
        let mut from = engine.partition_info(partition)?.log_start;
        let mut count = 0;
        while from < end {
            let records = engine.read(partition, from, REPLAY_CHUNK).await?;
            let Some(last) = records.last() else {
                break;
            };
            from = last.offset + 1;
            for record in records.into_iter().take_while(|r| r.offset < end) {
                count += 1;
                each(record.offset, record.timestamp_ms, record.payload);
            }
        }
        Ok(count)
    }

    pub(super) async fn replay(&self) -> Result<Recovered, DurableError> {
        let mut recovered = Recovered::default();

        // Sessions and retained messages: the record in force of each key.
        let scanned_sessions = self.scan_latest(SESSIONS).await?;
        let scanned_retained = self.scan_latest(RETAINED).await?;
        recovered.records += scanned_sessions.records + scanned_retained.records;
        let next = scanned_sessions
            .max_revision
            .max(scanned_retained.max_revision)
            .saturating_add(1)
            .max(record::unix_ms().saturating_mul(1000));
        self.inner.revision.store(next, Ordering::Relaxed);
        self.compact(SESSIONS, &scanned_sessions).await?;
        self.compact(RETAINED, &scanned_retained).await?;
        let sessions: HashMap<String, StoredSession> = scanned_sessions
            .latest
            .into_iter()
            .filter_map(|(key, latest)| match latest.record {
                Record::Session(session) => Some((key, session)),
                _ => None,
            })
            .collect();
        let now_ms = record::unix_ms();
        let retained: BTreeMap<String, (Publish, Option<u64>)> = scanned_retained
            .latest
            .into_iter()
            .filter_map(|(topic, latest)| match latest.record {
                Record::Retain {
                    publish,
                    expires_at_ms,
                } if !publish.payload.is_empty() && expires_at_ms.is_none_or(|at| at > now_ms) => {
                    Some((topic, (publish, expires_at_ms)))
                }
                _ => None,
            })
            .collect();

        // Messages: what each live session still has to receive.
        let epoch_of = |key: &str| sessions.get(key).map(|s| s.epoch);
        // Older messages are no longer queued (session.max_message_age_secs).
        let oldest_ms = self.inner.max_message_age.map_or(i64::MIN, |age| {
            i64::try_from(now_ms.saturating_sub(age.as_millis() as u64)).unwrap_or(i64::MAX)
        });
        let mut queues: HashMap<String, BTreeMap<DiskRef, Pending>> = HashMap::new();
        let mut inbound: HashMap<String, HashSet<u16>> = HashMap::new();
        // A message moved forward for a session: (key, old place) → new.
        let mut moved: HashMap<(String, DiskRef), DiskRef> = HashMap::new();
        let mut forwarded: HashMap<(u64, u32), u64> = HashMap::new();
        for partition in 0..self.inner.partitions {
            // A message moved forward from below this was trimmed behind it.
            let log_start = self
                .inner
                .engine
                .partition_info(u64::from(partition))?
                .log_start;
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
                        Ok(ReplayView::Moved {
                            from,
                            timestamp_ms: first_ms,
                        }) => {
                            // A delivery still pending moves; one whose
                            // original was trimmed is pending here; a copy of
                            // one completed before it brings nothing back.
                            let trimmed = from < log_start;
                            let from = DiskRef {
                                partition,
                                offset: from,
                            };
                            for key in recipients {
                                let from = follow(&moved, key, from);
                                let queue = queues.entry(key.to_string()).or_default();
                                let pending = queue.remove(&from).or(trimmed.then_some(Pending {
                                    timestamp_ms: first_ms,
                                    first_offset: from.offset,
                                    released: false,
                                }));
                                if let Some(pending) = pending {
                                    queue.insert(at, pending);
                                    moved.insert((key.to_string(), from), at);
                                }
                            }
                        }
                        Ok(ReplayView::Ack { key, offset, .. }) => {
                            let at = follow(&moved, key, DiskRef { partition, offset });
                            if let Some(queue) = queues.get_mut(key) {
                                queue.remove(&at);
                            }
                        }
                        Ok(ReplayView::Acks { key, offsets, .. }) => {
                            if let Some(queue) = queues.get_mut(key) {
                                for offset in offsets {
                                    let at = follow(&moved, key, DiskRef { partition, offset });
                                    queue.remove(&at);
                                }
                            }
                        }
                        Ok(ReplayView::Released { key, offset, .. }) => {
                            let at = follow(&moved, key, DiskRef { partition, offset });
                            if let Some(p) = queues.get_mut(key).and_then(|q| q.get_mut(&at)) {
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
                        Ok(ReplayView::Forwarded { origin, sequence }) => {
                            let last = forwarded.entry((origin, partition)).or_insert(0);
                            *last = (*last).max(sequence);
                        }
                        Ok(ReplayView::Other) => {}
                        Err(e) => warn!(partition, offset, error = %e, "skipping a message record"),
                    }
                })
                .await?;
        }

        recovered.forwarded = forwarded;
        recovered.retained = retained.into_values().collect();
        recovered.sessions = sessions
            .into_values()
            .map(|session| {
                let mut queue: Vec<(DiskRef, Pending)> = queues
                    .remove(&session.key)
                    .map(|q| q.into_iter().collect())
                    .unwrap_or_default();
                // Across partitions, in the order they were stored.
                queue.sort_by_key(|(at, p)| (p.timestamp_ms, at.partition, p.first_offset));
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
}

/// A message a session still has to receive, as replay finds it.
#[derive(Clone, Copy)]
struct Pending {
    /// When it was first stored, and where: a moved message keeps both,
    /// so its session receives it in its first order.
    timestamp_ms: i64,
    first_offset: u64,
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
        first_offset: at.offset,
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

/// Where a session's message at `at` was moved to, following every move.
fn follow(moved: &HashMap<(String, DiskRef), DiskRef>, key: &str, mut at: DiskRef) -> DiskRef {
    while let Some(next) = moved.get(&(key.to_string(), at)) {
        at = *next;
    }
    at
}
