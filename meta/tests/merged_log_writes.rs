//! Log appends of several groups share one write batch and one sync.

mod common;

use std::time::Duration;

use openraft::RaftLogReader;
use openraft::storage::RaftLogStorage;

use common::{append_synced, blank, fresh, histogram};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_of_two_groups_share_syncs() {
    let (_dir, registry, stores) = fresh(2).await;
    let (g0, g1) = (&stores[0].0, &stores[1].0);

    // Submit 2 x 50 appends back to back without waiting: while the writer
    // syncs the first round, the rest queue up and go out together.
    const PER_GROUP: u64 = 50;
    let mut waits = Vec::new();
    for index in 1..=PER_GROUP {
        for log in [g0, g1] {
            let (tx, rx) = tokio::sync::oneshot::channel();
            log.append_with(vec![blank(1, index)], move |r| {
                let _ = tx.send(r);
            })
            .unwrap();
            waits.push(rx);
        }
    }
    for rx in waits {
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    let appends = 2 * PER_GROUP;
    let (batches, requests) = histogram(&registry, "raft_log_append_batch_requests");
    assert_eq!(
        requests as u64, appends,
        "every append went through the writer"
    );
    assert!(
        batches < appends,
        "{batches} synced writes for {appends} appends"
    );
    let (_, entries) = histogram(&registry, "raft_log_append_batch_entries");
    assert_eq!(entries as u64, appends);
    let (group_batches, groups) = histogram(&registry, "raft_log_append_batch_groups");
    assert!(
        groups > group_batches as f64,
        "some write carried both groups: {groups} group-slots in {group_batches} writes"
    );
    let (synced, _) = histogram(&registry, "raft_log_append_batch_duration_ms");
    assert_eq!(synced, batches);

    // Each group reads back exactly its own entries.
    for log in [g0, g1] {
        let mut reader = log.clone();
        let entries = reader.try_get_log_entries(1..=PER_GROUP).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (1..=PER_GROUP).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_entries_are_readable_before_the_sync_completes() {
    let (_dir, _registry, mut stores) = fresh(1).await;
    let log = &mut stores[0].0;
    append_synced(log, vec![blank(1, 1)]).await.unwrap();

    let (tx, rx) = tokio::sync::oneshot::channel();
    log.append_with(vec![blank(1, 2), blank(1, 3)], move |r| {
        let _ = tx.send(r);
    })
    .unwrap();
    // Readable right away, whether or not the sync has finished.
    let entries = log.try_get_log_entries(1..4).await.unwrap();
    assert_eq!(entries.len(), 3);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|id| id.index), Some(3));
    rx.await.unwrap().unwrap();
    let entries = log.try_get_log_entries(2..).await.unwrap();
    assert_eq!(entries.len(), 2);
}
