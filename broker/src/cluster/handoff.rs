//! Hand-off logs: what a peer must receive while this node cannot reach
//! it, kept on this node's disk until the peer acknowledges it.
//!
//! One partition per peer (numbered by its node id) in a storage engine of
//! its own (`{data_dir}/handoff`), synced like the message store. A record
//! is one `ForwardedMessage` (protobuf), carrying the sequence number its
//! link gave it. A link appends to its peer's log the QoS 1/2 messages it
//! could not deliver: those queued while the peer is down, and those in
//! batches a broken stream did not acknowledge. Once the link is up again
//! it sends the log, from the first record the peer has not acknowledged,
//! before anything new, so a publisher's messages keep their order; the
//! peer skips what it had routed already (by sequence number).
//! Acknowledged records are given back a segment at a time, and the whole
//! log once it is drained.
//!
//! Where each peer stands (its first record not acknowledged) is written
//! to one more partition, [`CURSORS`], each time it moves: a record of
//! every peer's point, the last one in force. After a restart the replay
//! starts there, so what a peer acknowledged is not sent again (had its
//! point not reached the disk, the peer skips the copies by number).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec};
use prost::Message as _;
use tidemq_meta::NodeId;
use tidemq_proto::grpc::v1 as pb;
use tidemq_storage_engine::{FRAME_HEADER_LEN, StorageEngine, StorageError, SyncPolicy};
use tracing::{info, warn};

/// The partition of the peers' acknowledged points (no node has this id).
const CURSORS: u64 = u64::MAX;

/// Why a QoS 1/2 message for a peer could be neither sent nor kept: its
/// publisher is refused (5.0: PUBACK/PUBREC 0x97).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardFailure {
    /// The link's queue is full (`cluster.link_queue_messages`).
    #[error("the queue for node {peer} is full (cluster.link_queue_messages)")]
    QueueFull {
        /// The peer.
        peer: NodeId,
    },
    /// The peer's hand-off log holds `cluster.handoff_max_bytes` already.
    #[error("the hand-off log for node {peer} is full (cluster.handoff_max_bytes)")]
    HandoffFull {
        /// The peer.
        peer: NodeId,
    },
    /// The hand-off log could not be written (a full disk, an I/O error).
    #[error("cannot keep a message for node {peer} in its hand-off log: {source}")]
    Handoff {
        /// The peer.
        peer: NodeId,
        /// What the storage engine said.
        source: Arc<StorageError>,
    },
}

/// How the hand-off logs are kept.
#[derive(Debug, Clone)]
pub(crate) struct HandoffSettings {
    /// Their storage engine's directory.
    pub(crate) dir: PathBuf,
    /// Synced like the message store (`storage.sync`).
    pub(crate) sync: SyncPolicy,
    /// `storage.segment_bytes`.
    pub(crate) segment_bytes: u64,
    /// `storage.min_free_bytes`.
    pub(crate) min_free_bytes: u64,
    /// `cluster.handoff_max_bytes`: bytes of one peer's log, at most.
    pub(crate) max_bytes: u64,
}

/// The hand-off logs' metrics, per peer.
#[derive(Clone)]
pub(crate) struct HandoffMetrics {
    pub(crate) backlog: IntGaugeVec,
    pub(crate) bytes: IntGaugeVec,
    pub(crate) appended: IntCounterVec,
    pub(crate) replayed: IntCounterVec,
    pub(crate) refused: IntCounterVec,
    pub(crate) malformed: IntCounter,
}

/// What a peer's log holds that the peer has not acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Backlog {
    /// The first record the peer has not acknowledged.
    pub(crate) from: u64,
    /// The offset the next record gets.
    pub(crate) end: u64,
}

impl Backlog {
    pub(crate) fn is_empty(&self) -> bool {
        self.from >= self.end
    }

    /// The messages it holds.
    pub(crate) fn messages(&self) -> u64 {
        self.end.saturating_sub(self.from)
    }
}

/// Records read back from a peer's log: the messages, and the offset after
/// the last record read.
pub(crate) struct Replay {
    pub(crate) messages: Vec<pb::ForwardedMessage>,
    pub(crate) next: u64,
}

/// The hand-off logs of this node, one per peer.
pub(crate) struct HandoffLog {
    engine: StorageEngine,
    max_bytes: u64,
    /// Per peer: the first record it has not acknowledged.
    acked: Mutex<HashMap<NodeId, u64>>,
    /// One write of [`CURSORS`] at a time, so the last is the newest.
    cursor_write: tokio::sync::Mutex<()>,
    metrics: HandoffMetrics,
}

impl HandoffLog {
    /// Opens (or creates) the logs; a torn tail is cut off and reported by
    /// the storage engine.
    pub(crate) async fn open(
        settings: &HandoffSettings,
        metrics: HandoffMetrics,
    ) -> Result<HandoffLog, StorageError> {
        let max_record = usize::try_from(settings.segment_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(FRAME_HEADER_LEN)
            .max(1);
        let engine = StorageEngine::builder(&settings.dir)
            .io_threads(1)
            .sync_policy(settings.sync)
            .segment_bytes(settings.segment_bytes)
            .max_record_bytes(max_record)
            .min_free_bytes(settings.min_free_bytes)
            // Its own: the message store's engine exports the same names.
            .registry(prometheus::Registry::new())
            .open()
            .await?;
        let report = engine.recovery_report();
        if report.truncated_segments > 0 || !report.quarantined.is_empty() {
            warn!(?report, "hand-off logs: a damaged tail was repaired");
        }
        let log = HandoffLog {
            engine,
            max_bytes: settings.max_bytes,
            acked: Mutex::new(HashMap::new()),
            cursor_write: tokio::sync::Mutex::new(()),
            metrics,
        };
        let cursors = log.read_cursors().await?;
        for peer in log.peers() {
            let info = log.engine.partition_info(peer)?;
            let from = cursors.get(&peer).copied().unwrap_or(0).max(info.log_start);
            log.acked_map().insert(peer, from);
            log.count(peer);
            if info.next_offset > from {
                info!(
                    peer,
                    messages = info.next_offset - from,
                    "hand-off log holds messages for a peer"
                );
            }
        }
        Ok(log)
    }

    /// The peers with a log.
    fn peers(&self) -> Vec<NodeId> {
        let mut peers = self.engine.partitions();
        peers.retain(|peer| *peer != CURSORS);
        peers
    }

    /// The acknowledged points last written (none: every log from its
    /// start).
    async fn read_cursors(&self) -> Result<HashMap<NodeId, u64>, StorageError> {
        let info = match self.engine.partition_info(CURSORS) {
            Ok(info) => info,
            Err(StorageError::UnknownPartition(_)) => {
                self.engine.create_partition(CURSORS).await?;
                return Ok(HashMap::new());
            }
            Err(e) => return Err(e),
        };
        if info.next_offset == info.log_start {
            return Ok(HashMap::new());
        }
        let records = self.engine.read(CURSORS, info.next_offset - 1, 1).await?;
        let Some(record) = records.last() else {
            return Ok(HashMap::new());
        };
        let cursors = record
            .payload
            .chunks_exact(16)
            .map(|pair| {
                let (peer, at) = pair.split_at(8);
                let number = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
                (number(peer), number(at))
            })
            .collect();
        Ok(cursors)
    }

    /// Writes every peer's acknowledged point as one record of [`CURSORS`]
    /// and gives back the segments of older ones.
    async fn write_cursors(&self) -> Result<(), StorageError> {
        let _one = self.cursor_write.lock().await;
        let record: Vec<u8> = self
            .acked_map()
            .iter()
            .flat_map(|(peer, at)| [peer.to_le_bytes(), at.to_le_bytes()])
            .flatten()
            .collect();
        let written = self.engine.append(CURSORS, &[record]).await?;
        if written.last_offset % 1024 == 0 {
            self.engine
                .trim_before(CURSORS, written.last_offset)
                .await?;
        }
        Ok(())
    }

    fn acked_map(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, u64>> {
        self.acked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The peers whose logs hold messages they have not acknowledged.
    pub(crate) fn backlogged(&self) -> Vec<NodeId> {
        self.peers()
            .into_iter()
            .filter(|peer| !self.backlog(*peer).is_empty())
            .collect()
    }

    /// What `peer`'s log holds that it has not acknowledged.
    pub(crate) fn backlog(&self, peer: NodeId) -> Backlog {
        let Ok(info) = self.engine.partition_info(peer) else {
            return Backlog::default();
        };
        let from = self
            .acked_map()
            .get(&peer)
            .copied()
            .unwrap_or(info.log_start);
        Backlog {
            from: from.max(info.log_start),
            end: info.next_offset,
        }
    }

    /// The highest sequence number in any log (0 when they are empty): a
    /// link's numbers go on above it after a restart.
    pub(crate) async fn last_sequence(&self) -> u64 {
        let mut last = 0;
        for peer in self.peers() {
            let Ok(info) = self.engine.partition_info(peer) else {
                continue;
            };
            if info.next_offset == info.log_start {
                continue;
            }
            if let Ok(replay) = self.read(peer, info.next_offset - 1, 1, 1).await {
                last = replay.messages.iter().fold(last, |l, m| l.max(m.sequence));
            }
        }
        last
    }

    /// Appends `messages` to `peer`'s log, durably under `storage.sync`
    /// "always", unless the log would outgrow `cluster.handoff_max_bytes`.
    pub(crate) async fn append(
        &self,
        peer: NodeId,
        messages: &[pb::ForwardedMessage],
    ) -> Result<(), ForwardFailure> {
        let label = peer.to_string();
        let records: Vec<Vec<u8>> = messages.iter().map(|m| m.encode_to_vec()).collect();
        let bytes: u64 = records
            .iter()
            .map(|r| (r.len() + FRAME_HEADER_LEN) as u64)
            .sum();
        let refuse = |failure: ForwardFailure| {
            self.metrics
                .refused
                .with_label_values(&[label.as_str()])
                .inc_by(records.len() as u64);
            failure
        };
        let failed = |source: StorageError| {
            refuse(ForwardFailure::Handoff {
                peer,
                source: Arc::new(source),
            })
        };
        let held = self
            .engine
            .partition_info(peer)
            .map_or(0, |info| info.size_bytes);
        if held + bytes > self.max_bytes {
            return Err(refuse(ForwardFailure::HandoffFull { peer }));
        }
        let appended = match self.engine.append(peer, &records).await {
            Err(StorageError::UnknownPartition(_)) => {
                match self.engine.create_partition(peer).await {
                    Ok(()) | Err(StorageError::PartitionExists(_)) => {}
                    Err(e) => return Err(failed(e)),
                }
                self.engine.append(peer, &records).await
            }
            other => other,
        };
        appended.map_err(failed)?;
        self.metrics
            .appended
            .with_label_values(&[label.as_str()])
            .inc_by(records.len() as u64);
        self.count(peer);
        Ok(())
    }

    /// Reads `peer`'s log from `from`: up to `max_messages` records and
    /// about `max_bytes`. A record that does not decode is skipped
    /// (counted).
    pub(crate) async fn read(
        &self,
        peer: NodeId,
        from: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Replay, StorageError> {
        let records = match self.engine.read(peer, from, max_bytes).await {
            Err(StorageError::UnknownPartition(_)) => Vec::new(),
            other => other?,
        };
        let mut replay = Replay {
            messages: Vec::new(),
            next: from,
        };
        for record in records.into_iter().take(max_messages.max(1)) {
            replay.next = record.offset + 1;
            match pb::ForwardedMessage::decode(record.payload) {
                Ok(message) => replay.messages.push(message),
                Err(e) => {
                    self.metrics.malformed.inc();
                    warn!(peer, offset = record.offset, error = %e, "skipping a hand-off record that does not decode");
                }
            }
        }
        Ok(replay)
    }

    /// `peer` acknowledged every record below `upto`: space below it is
    /// given back once a whole segment (or the whole log) is acknowledged.
    pub(crate) async fn acknowledged(&self, peer: NodeId, upto: u64, replayed: u64) {
        let before = {
            let mut acked = self.acked_map();
            let at = acked.entry(peer).or_insert(0);
            let before = *at;
            *at = before.max(upto);
            before
        };
        self.metrics
            .replayed
            .with_label_values(&[peer.to_string().as_str()])
            .inc_by(replayed);
        if upto <= before {
            return;
        }
        if let Err(e) = self.write_cursors().await {
            warn!(peer, error = %e, "cannot write the hand-off log's acknowledged point");
        }
        let end = self.backlog(peer).end;
        let segment_done = self
            .engine
            .segment_bases(peer)
            .is_ok_and(|bases| bases.get(1).is_some_and(|second| upto >= *second));
        if (upto >= end || segment_done)
            && let Err(e) = self.engine.trim_before(peer, upto).await
        {
            warn!(peer, error = %e, "cannot give back the hand-off log's acknowledged space");
        }
        self.count(peer);
    }

    /// Sets `peer`'s gauges from its log.
    fn count(&self, peer: NodeId) {
        let label = peer.to_string();
        let one = [label.as_str()];
        let backlog = self.backlog(peer);
        self.metrics
            .backlog
            .with_label_values(&one)
            .set(i64::try_from(backlog.messages()).unwrap_or(i64::MAX));
        let bytes = self
            .engine
            .partition_info(peer)
            .map_or(0, |info| info.size_bytes);
        self.metrics
            .bytes
            .with_label_values(&one)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Makes every log durable and stops their I/O thread.
    pub(crate) async fn close(&self) {
        if let Err(e) = self.engine.close().await {
            warn!(error = %e, "closing the hand-off logs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> HandoffMetrics {
        let gauge = |name: &str| {
            IntGaugeVec::new(prometheus::Opts::new(name, "test"), &["peer"]).expect("gauge")
        };
        let counter = |name: &str| {
            IntCounterVec::new(prometheus::Opts::new(name, "test"), &["peer"]).expect("counter")
        };
        HandoffMetrics {
            backlog: gauge("backlog"),
            bytes: gauge("bytes"),
            appended: counter("appended"),
            replayed: counter("replayed"),
            refused: counter("refused"),
            malformed: IntCounter::new("malformed", "test").expect("counter"),
        }
    }

    fn settings(dir: &std::path::Path, max_bytes: u64) -> HandoffSettings {
        HandoffSettings {
            dir: dir.to_path_buf(),
            sync: SyncPolicy::Always,
            segment_bytes: 4096,
            min_free_bytes: 0,
            max_bytes,
        }
    }

    fn message(sequence: u64) -> pb::ForwardedMessage {
        pb::ForwardedMessage {
            publish: vec![0x32, 0x00],
            publisher: "default/p".into(),
            plain: true,
            shares: Vec::new(),
            sequence,
            message_id: 0,
            barrier: false,
        }
    }

    fn sequences(replay: &Replay) -> Vec<u64> {
        replay.messages.iter().map(|m| m.sequence).collect()
    }

    #[tokio::test]
    async fn a_backlog_survives_a_reopen_and_drains_once_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = HandoffLog::open(&settings(dir.path(), u64::MAX), metrics())
            .await
            .expect("open");
        assert!(log.backlogged().is_empty());
        let batch: Vec<_> = (10..20).map(message).collect();
        log.append(7, &batch).await.expect("append");
        assert_eq!(log.backlog(7), Backlog { from: 0, end: 10 });
        log.close().await;

        let log = HandoffLog::open(&settings(dir.path(), u64::MAX), metrics())
            .await
            .expect("reopen");
        assert_eq!(log.backlogged(), vec![7]);
        assert_eq!(log.last_sequence().await, 19);
        let first = log.read(7, 0, 4, usize::MAX).await.expect("read");
        assert_eq!(sequences(&first), vec![10, 11, 12, 13]);
        assert_eq!(first.next, 4);
        log.acknowledged(7, first.next, 4).await;
        assert_eq!(log.backlog(7), Backlog { from: 4, end: 10 });
        log.close().await;

        // What was acknowledged is not sent again after a restart.
        let log = HandoffLog::open(&settings(dir.path(), u64::MAX), metrics())
            .await
            .expect("reopen");
        assert_eq!(log.backlog(7), Backlog { from: 4, end: 10 });
        let rest = log
            .read(7, first.next, 100, usize::MAX)
            .await
            .expect("read");
        assert_eq!(sequences(&rest), (14..20).collect::<Vec<_>>());
        log.acknowledged(7, rest.next, 6).await;
        assert!(log.backlog(7).is_empty());
        assert!(log.backlogged().is_empty());
        log.close().await;

        // Drained: nothing comes back after another reopen.
        let log = HandoffLog::open(&settings(dir.path(), u64::MAX), metrics())
            .await
            .expect("reopen");
        assert!(log.backlogged().is_empty());
        log.close().await;
    }

    #[tokio::test]
    async fn a_log_at_its_limit_refuses_and_takes_more_once_drained() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = message(1).encode_to_vec().len() as u64;
        let log = HandoffLog::open(
            &settings(dir.path(), 3 * (record + FRAME_HEADER_LEN as u64)),
            metrics(),
        )
        .await
        .expect("open");
        log.append(2, &[message(1), message(2)])
            .await
            .expect("room");
        let full = log.append(2, &[message(3), message(4)]).await;
        assert!(
            matches!(full, Err(ForwardFailure::HandoffFull { peer: 2 })),
            "{full:?}"
        );
        assert_eq!(log.metrics.refused.with_label_values(&["2"]).get(), 2);
        log.acknowledged(2, 2, 2).await;
        log.append(2, &[message(3), message(4)])
            .await
            .expect("room again");
        let replay = log.read(2, 2, 10, usize::MAX).await.expect("read");
        assert_eq!(sequences(&replay), vec![3, 4]);
        log.close().await;
    }
}
