//! The session and retained partitions: which record of each key is the
//! one in force, and compaction, at start and while the node runs.
//!
//! Every record written to these partitions carries a *revision* from one
//! counter of the store (see [`record::with_revision`]); for each key (a
//! session key, a retained topic) the record with the highest revision is
//! in force, and between equal revisions (records older than revisions) the
//! later one. Compaction copies the records in force, revision and all, to
//! the end of the partition and trims what lies before: a copy never wins
//! over a change written while it was being made, because that change has
//! a higher revision. So compaction needs no pause of the writers.
//!
//! A SUBSCRIBE or UNSUBSCRIBE is written as a `Subscriptions` change, not as
//! the whole session: the session in force is its latest `Session` record
//! with every change of a higher revision (and the same epoch) applied, in
//! revision order, and has the revision of the last change applied. A
//! compaction writes it as one `Session` record of that revision.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::{info, warn};

use super::record::{self, Record, StoredSubscription};
use super::{DurableError, DurableStore, RETAINED, SESSIONS};

/// The record in force for one key.
pub(super) struct Latest {
    pub revision: u64,
    /// The stored bytes, revision included: what compaction copies.
    pub bytes: Bytes,
    pub record: Record,
}

/// One `Subscriptions` record: a change to a session's subscriptions.
struct Change {
    epoch: u64,
    added: Vec<StoredSubscription>,
    removed: Vec<String>,
}

impl Latest {
    /// Applies the changes newer than this `Session` record (in revision
    /// order, those of its epoch) and re-encodes it as one record of the
    /// last revision applied. Nothing for another kind of record.
    fn apply(&mut self, mut changes: Vec<(u64, Change)>) -> Result<(), DurableError> {
        let Record::Session(session) = &mut self.record else {
            return Ok(());
        };
        // Stable: changes of one revision keep their offset order.
        changes.sort_by_key(|(revision, _)| *revision);
        let mut revision = self.revision;
        for (at, change) in changes {
            if at <= self.revision || change.epoch != session.epoch {
                continue;
            }
            session
                .subscriptions
                .retain(|s| !change.removed.contains(&s.filter));
            for added in change.added {
                session.subscriptions.retain(|s| s.filter != added.filter);
                session.subscriptions.push(added);
            }
            revision = at;
        }
        if revision != self.revision {
            self.revision = revision;
            self.bytes = record::with_revision(revision, self.record.encode()?).into();
        }
        Ok(())
    }

    /// Whether the key still holds something (not a session that ended, not
    /// a cleared or expired retained message).
    fn is_live(&self, now_ms: u64) -> bool {
        match &self.record {
            Record::Session(_) => true,
            Record::Retain {
                publish,
                expires_at_ms,
            } => !publish.payload.is_empty() && expires_at_ms.is_none_or(|at| at > now_ms),
            _ => false,
        }
    }
}

/// What a scan of a session or retained partition found.
pub(super) struct Scanned {
    /// The record in force per key.
    pub latest: HashMap<String, Latest>,
    /// Records read.
    pub records: u64,
    /// Highest revision seen.
    pub max_revision: u64,
    /// The partition's end when the scan began: everything before it was read.
    pub end: u64,
}

/// Fewest records a partition holds before compaction is worth it.
const MIN_RECORDS: u64 = 1024;

impl DurableStore {
    /// Reads a session or retained partition and keeps the record in force
    /// of every key. A record that does not decode is skipped (logged).
    pub(super) async fn scan_latest(&self, partition: u64) -> Result<Scanned, DurableError> {
        let end = self.inner.engine.partition_info(partition)?.next_offset;
        let mut latest: HashMap<String, Latest> = HashMap::new();
        let mut changes: HashMap<String, Vec<(u64, Change)>> = HashMap::new();
        let mut max_revision = 0;
        let records = self
            .scan_until(partition, end, |offset, _, bytes| {
                let (revision, body) = record::split_revision(&bytes);
                let record = match Record::decode(body) {
                    Ok(record) => record,
                    Err(e) => {
                        warn!(partition, offset, error = %e, "skipping a record");
                        return;
                    }
                };
                max_revision = max_revision.max(revision);
                let key = match record {
                    Record::Session(ref s) => s.key.clone(),
                    Record::SessionGone { ref key } => key.clone(),
                    Record::Retain { ref publish, .. } => publish.topic.clone(),
                    Record::Subscriptions {
                        key,
                        epoch,
                        added,
                        removed,
                    } => {
                        let change = Change {
                            epoch,
                            added,
                            removed,
                        };
                        changes.entry(key).or_default().push((revision, change));
                        return;
                    }
                    _ => return,
                };
                // Later records win ties: scans go in offset order.
                if latest.get(&key).is_none_or(|l| revision >= l.revision) {
                    latest.insert(
                        key,
                        Latest {
                            revision,
                            bytes,
                            record,
                        },
                    );
                }
            })
            .await?;
        for (key, changes) in changes {
            if let Some(base) = latest.get_mut(&key) {
                base.apply(changes)?;
            }
        }
        Ok(Scanned {
            latest,
            records,
            max_revision,
            end,
        })
    }

    /// Compacts `partition` from a scan of it when it holds many more
    /// records than live keys and has sealed segments to give back: copies
    /// the live records in force, then trims before the scan's end. A
    /// compaction that cannot write (a full disk) is skipped and logged:
    /// every record it meant to replace is still there.
    pub(super) async fn compact(
        &self,
        partition: u64,
        scanned: &Scanned,
    ) -> Result<(), DurableError> {
        let now_ms = record::unix_ms();
        let live: Vec<&[u8]> = scanned
            .latest
            .values()
            .filter(|l| l.is_live(now_ms))
            .map(|l| l.bytes.as_ref())
            .collect();
        let info = self.inner.engine.partition_info(partition)?;
        if scanned.records < MIN_RECORDS
            || scanned.records < 2 * live.len() as u64
            || info.segments < 2
        {
            return Ok(());
        }
        let copied = async {
            for chunk in live.chunks(1024) {
                self.inner.engine.append(partition, chunk).await?;
            }
            self.inner.engine.trim_before(partition, scanned.end).await
        };
        match copied.await {
            Ok(removed) => {
                let size = self.inner.engine.partition_info(partition)?.size_bytes;
                self.inner.compacted_size[compacted_slot(partition)].store(size, Ordering::Relaxed);
                info!(
                    partition,
                    records = scanned.records,
                    live = live.len(),
                    removed,
                    "compacted"
                );
                Ok(())
            }
            Err(e) => {
                warn!(partition, error = %e, "cannot compact: the records stay as they are");
                Ok(())
            }
        }
    }

    /// Compacts the session and retained partitions if they have grown to
    /// twice their size after the last compaction (and past 4 MiB): run
    /// while the node serves, from the trim loop.
    pub async fn compact_if_grown(&self) -> Result<(), DurableError> {
        for partition in [SESSIONS, RETAINED] {
            let size = self.inner.engine.partition_info(partition)?.size_bytes;
            let before =
                self.inner.compacted_size[compacted_slot(partition)].load(Ordering::Relaxed);
            if size < (4 << 20).max(2 * before) {
                continue;
            }
            let scanned = self.scan_latest(partition).await?;
            self.compact(partition, &scanned).await?;
            // Whether or not that was worth it, wait for the next doubling.
            let size = self.inner.engine.partition_info(partition)?.size_bytes;
            self.inner.compacted_size[compacted_slot(partition)].store(size, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Index of `partition` (the session or the retained one) in
/// `compacted_size`.
fn compacted_slot(partition: u64) -> usize {
    usize::from(partition == RETAINED)
}

#[cfg(test)]
mod tests {
    use prometheus::Registry;
    use tidemq_proto::mqtt::Protocol;
    use tidemq_storage_engine::SyncPolicy;

    use super::super::{DurableConfig, DurableStore, StoredSession};
    use super::SESSIONS;

    fn config(dir: &std::path::Path) -> DurableConfig {
        DurableConfig {
            dir: dir.to_path_buf(),
            partitions: 1,
            io_threads: 1,
            pin_cores: false,
            sync: SyncPolicy::Never,
            segment_bytes: 16 * 1024,
            preallocate_bytes: 0,
            max_backlog_bytes: 1 << 20,
            min_free_bytes: 0,
            max_message_age: None,
        }
    }

    fn session(key: &str, expiry_secs: u32) -> StoredSession {
        StoredSession {
            key: key.into(),
            epoch: 1,
            expiry_secs,
            protocol: Protocol::V5,
            subscriptions: Vec::new(),
            username: None,
        }
    }

    async fn open(dir: &std::path::Path) -> (DurableStore, super::super::Recovered) {
        DurableStore::open(&config(dir), &Registry::new())
            .await
            .expect("opens")
    }

    #[tokio::test]
    async fn compaction_gives_space_back_and_never_undoes_a_later_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path()).await;
        // 10 sessions, each rewritten 300 times: ~3,000 records over many
        // segments, 10 of them in force.
        for round in 0..300 {
            for i in 0..10 {
                store
                    .put_session(&session(&format!("t/{i}"), round))
                    .await
                    .expect("written");
            }
        }
        store.session_gone("t/9").await.expect("written");
        let before = store.inner.engine.partition_info(SESSIONS).expect("info");
        // A scan, then a change, then the compaction of that scan: its copy
        // of t/0 is older than the change and must lose to it.
        let scanned = store.scan_latest(SESSIONS).await.expect("scans");
        store
            .put_session(&session("t/0", 4242))
            .await
            .expect("written");
        store.compact(SESSIONS, &scanned).await.expect("compacts");
        let after = store.inner.engine.partition_info(SESSIONS).expect("info");
        assert!(
            after.size_bytes * 4 < before.size_bytes,
            "{before:?} → {after:?}"
        );
        store.close().await.expect("closes");

        let (store, recovered) = open(dir.path()).await;
        let mut expiry: Vec<(String, u32)> = recovered
            .sessions
            .iter()
            .map(|s| (s.session.key.clone(), s.session.expiry_secs))
            .collect();
        expiry.sort();
        let mut want: Vec<(String, u32)> = (0..9).map(|i| (format!("t/{i}"), 299)).collect();
        want[0].1 = 4242;
        assert_eq!(expiry, want, "t/9 ended; t/0 keeps its later change");
        store.close().await.expect("closes");
    }

    #[tokio::test]
    async fn subscription_changes_apply_on_their_session_and_survive_compaction() {
        use tidemq_proto::mqtt::SubscriptionOptions;

        use super::super::StoredSubscription;
        let sub = |filter: &str| StoredSubscription {
            filter: filter.into(),
            options: SubscriptionOptions::default(),
            id: None,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path()).await;
        store
            .put_session(&session("t/s", 60))
            .await
            .expect("written");
        store
            .put_subscriptions("t/s", 1, vec![sub("a"), sub("b")], Vec::new())
            .await
            .expect("written");
        // Enough churn for a compaction to be worth it.
        for round in 0..1_500 {
            store
                .put_session(&session("t/other", round))
                .await
                .expect("written");
        }
        store
            .put_subscriptions("t/s", 1, Vec::new(), vec!["a".into()])
            .await
            .expect("written");
        // Another epoch's change does not apply.
        store
            .put_subscriptions("t/s", 7, vec![sub("wrong")], Vec::new())
            .await
            .expect("written");
        let scanned = store.scan_latest(SESSIONS).await.expect("scans");
        // A change after the scan survives the compaction of that scan.
        store
            .put_subscriptions("t/s", 1, vec![sub("c")], Vec::new())
            .await
            .expect("written");
        store.compact(SESSIONS, &scanned).await.expect("compacts");
        store.close().await.expect("closes");

        let (store, recovered) = open(dir.path()).await;
        let s = recovered
            .sessions
            .iter()
            .find(|s| s.session.key == "t/s")
            .expect("kept");
        let mut filters: Vec<&str> = s
            .session
            .subscriptions
            .iter()
            .map(|s| s.filter.as_str())
            .collect();
        filters.sort();
        assert_eq!(filters, ["b", "c"]);
        store.close().await.expect("closes");
    }
}
