//! Building a snapshot and installing it elsewhere reproduces the state.

mod common;

use openraft::RaftSnapshotBuilder;
use openraft::SnapshotMeta;
use openraft::storage::RaftStateMachine;
use tidemq_meta::{MetaNode, MetaRequest, MetaSnapshotData, MetaState, MetaStateMachine, Session};

use common::{fresh, log_id, membership, normal, reopen};

fn populate() -> Vec<openraft::Entry<tidemq_meta::TypeConfig>> {
    let sessions = (0..100)
        .map(|i| Session {
            client_key: format!("t{}/client-{i:03}", i % 3),
            node_id: 1,
            created_at_ms: i,
            expiry_secs: 60,
            connected: i % 2 == 0,
            payload: vec![i as u8; 16],
        })
        .collect();
    let mut batch = Vec::new();
    for filter in ["a/b", "a/+/c", "#"] {
        batch.push(MetaRequest::AddSubscription {
            client_key: "t1/client-001".into(),
            filter: filter.into(),
            qos: 1,
            options: vec![0x01],
        });
    }
    batch.push(MetaRequest::RegisterNode {
        node_id: 2,
        addr: "127.0.0.1:9100".into(),
        at_ms: 5,
        labels: vec![("zone".into(), "a".into())],
    });
    batch.push(MetaRequest::SetClusterConfig {
        key: "retain".into(),
        value: "on".into(),
    });
    vec![
        membership(1, 1, &[1, 2, 3]),
        normal(1, 2, MetaRequest::CreateSessions(sessions)),
        normal(1, 3, MetaRequest::Batch(batch)),
    ]
}

async fn dump(state: &MetaState) -> (Vec<Session>, usize, usize, Vec<(String, String)>) {
    let sessions = state.list_sessions("", None, usize::MAX).await;
    let subscriptions = state.list_subscriptions("t1/client-001").await;
    let nodes = state.list_nodes().await;
    let config = state.list_config().await;
    (
        sessions.expect("list sessions"),
        subscriptions.expect("list subscriptions").len(),
        nodes.expect("list nodes").len(),
        config.expect("list config"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_then_install_into_a_fresh_store_reproduces_the_state() {
    let (_dir_a, _reg_a, mut leader) = fresh(2).await;
    let sm_a = &mut leader[1].1;
    sm_a.apply(populate()).await.unwrap();
    let built = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 3)));
    // What a follower receives: the current snapshot, encoded from the
    // checkpoint the build took.
    let snapshot = sm_a.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(snapshot.meta, built.meta);
    let expected = dump(&sm_a.state()).await;
    assert_eq!(expected.0.len(), 100);
    assert_eq!((expected.1, expected.2, expected.3.len()), (3, 1, 1));

    let (dir_b, _reg_b, mut follower) = fresh(2).await;
    {
        let sm_b = &mut follower[1].1;
        // Stale state the snapshot must replace, not merge with.
        sm_b.apply(vec![normal(
            1,
            1,
            MetaRequest::CreateSessions(vec![Session {
                client_key: "stale/x".into(),
                ..Default::default()
            }]),
        )])
        .await
        .unwrap();

        let mut receiving = sm_b.begin_receiving_snapshot().await.unwrap();
        *receiving = *snapshot.snapshot;
        sm_b.install_snapshot(&snapshot.meta, receiving)
            .await
            .unwrap();

        assert_eq!(dump(&sm_b.state()).await, expected);
        assert!(sm_b.state().get_session("stale/x").await.unwrap().is_none());
        let (applied, members) = sm_b.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 3)));
        assert_eq!(members, snapshot.meta.last_membership);
        let current = sm_b.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);
        // Group 0 of the follower is untouched.
        assert_eq!(follower[0].1.applied_state().await.unwrap().0, None);
    }
    drop(follower);

    // The installed state and the current snapshot survive a restart.
    let (_reg, mut follower) = reopen(&dir_b, 2).await;
    let sm_b = &mut follower[1].1;
    assert_eq!(dump(&sm_b.state()).await, expected);
    let current = sm_b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_refused_and_changes_nothing() {
    let (_dir_a, _reg_a, mut leader) = fresh(1).await;
    let sm_a = &mut leader[0].1;
    sm_a.apply(populate()).await.unwrap();
    sm_a.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let snapshot = sm_a.get_current_snapshot().await.unwrap().unwrap();
    let mut blob = snapshot.snapshot.into_bytes().await.unwrap();
    let middle = blob.len() / 2;
    blob[middle] ^= 0xFF;

    let (_dir_b, _reg_b, mut follower) = fresh(1).await;
    let sm_b = &mut follower[0].1;
    let mut receiving = sm_b.begin_receiving_snapshot().await.unwrap();
    *receiving = MetaSnapshotData::from_bytes(blob);
    assert!(
        sm_b.install_snapshot(&snapshot.meta, receiving)
            .await
            .is_err()
    );
    assert_eq!(sm_b.applied_state().await.unwrap().0, None);
    assert!(sm_b.get_current_snapshot().await.unwrap().is_none());
    assert!(
        sm_b.state()
            .list_sessions("", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// This group's checkpoint directories and whether a received blob is kept.
fn snapshot_files(dir: &std::path::Path, group: u32) -> (Vec<String>, bool, bool) {
    let snapshots = dir.join("snapshots");
    let mut checkpoints: Vec<String> = std::fs::read_dir(&snapshots)
        .expect("snapshot dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("g{group}-")) && n.ends_with(".ckpt"))
        .collect();
    checkpoints.sort();
    let pointer = snapshots.join(format!("g{group}.ckpt.json")).exists();
    let blob = snapshots.join(format!("g{group}.snap")).exists();
    (checkpoints, pointer, blob)
}

/// A session created at `index`, after the entries of `populate`.
fn late(index: u64) -> openraft::Entry<tidemq_meta::TypeConfig> {
    normal(
        1,
        index,
        MetaRequest::CreateSessions(vec![Session {
            client_key: format!("late/{index}"),
            ..Default::default()
        }]),
    )
}

async fn build(sm: &mut MetaStateMachine) -> SnapshotMeta<u64, MetaNode> {
    let mut builder = sm.get_snapshot_builder().await;
    builder
        .build_snapshot()
        .await
        .expect("build a snapshot")
        .meta
}

/// A fresh store whose group 1 installed `data` as the snapshot `meta`.
async fn install_fresh(
    meta: &SnapshotMeta<u64, MetaNode>,
    data: MetaSnapshotData,
) -> (tempfile::TempDir, prometheus::Registry, common::Stores) {
    let (dir, registry, mut stores) = fresh(2).await;
    let sm = &mut stores[1].1;
    let mut receiving = sm.begin_receiving_snapshot().await.expect("receive");
    *receiving = data;
    sm.install_snapshot(meta, receiving).await.expect("install");
    (dir, registry, stores)
}

async fn session_count(sm: &MetaStateMachine) -> usize {
    let sessions = sm.state().list_sessions("", None, usize::MAX).await;
    sessions.expect("list sessions").len()
}

async fn has_session(sm: &MetaStateMachine, key: &str) -> bool {
    sm.state()
        .get_session(key)
        .await
        .expect("get session")
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_a_point_in_time_checkpoint_replaced_by_the_next() {
    let (dir, _reg, mut stores) = fresh(2).await;
    let sm = &mut stores[1].1;
    sm.apply(populate()).await.unwrap();
    let first = build(sm).await;
    assert_eq!(first.last_log_id, Some(log_id(1, 3)));
    // Written after the checkpoint: not in it.
    sm.apply(vec![late(4)]).await.unwrap();
    let (checkpoints, pointer, blob) = snapshot_files(dir.path(), 1);
    assert_eq!(
        (checkpoints.len(), pointer, blob),
        (1, true, false),
        "{checkpoints:?}"
    );
    assert!(checkpoints[0].starts_with(&first.snapshot_id));

    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, first);
    let (_dir_b, _reg_b, follower) = install_fresh(&first, *current.snapshot).await;
    assert_eq!(session_count(&follower[1].1).await, 100);
    assert!(!has_session(&follower[1].1, "late/4").await);

    // The next build replaces the checkpoint; the old one is removed.
    let second = build(sm).await;
    assert_eq!(second.last_log_id, Some(log_id(1, 4)));
    let (checkpoints, _, _) = snapshot_files(dir.path(), 1);
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    assert!(checkpoints[0].starts_with(&second.snapshot_id));
    // Group 0 built nothing.
    assert_eq!(snapshot_files(dir.path(), 0), (Vec::new(), false, false));
    drop(stores);

    // A leftover half-built checkpoint is cleared at start; the current
    // snapshot is the last one built.
    std::fs::create_dir(dir.path().join("snapshots/g1-9-9.ckpt")).unwrap();
    let (_reg, mut stores) = reopen(&dir, 2).await;
    assert_eq!(snapshot_files(dir.path(), 1).0.len(), 1);
    let current = stores[1].1.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, second);
    let blob = current.snapshot.into_bytes().await.unwrap();
    let (_dir_c, _reg_c, other) = install_fresh(&second, MetaSnapshotData::from_bytes(blob)).await;
    assert!(has_session(&other[1].1, "late/4").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_being_sent_outlives_the_checkpoint_that_replaces_it() {
    let (dir, _reg, mut stores) = fresh(2).await;
    let sm = &mut stores[1].1;
    sm.apply(populate()).await.unwrap();
    let first = build(sm).await;
    // A follower's transfer starts: the data is not read yet.
    let sending = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(sending.meta, first);
    sm.apply(vec![late(4)]).await.unwrap();
    let second = build(sm).await;
    assert_ne!(second, first);
    // Both checkpoints are on disk while the first one is still being sent.
    assert_eq!(snapshot_files(dir.path(), 1).0.len(), 2);

    let (_dir_b, _reg_b, follower) = install_fresh(&first, *sending.snapshot).await;
    assert_eq!(session_count(&follower[1].1).await, 100);
    assert!(!has_session(&follower[1].1, "late/4").await);

    // Sent and dropped: the next build removes the replaced checkpoint.
    sm.apply(vec![late(5)]).await.unwrap();
    let third = build(sm).await;
    let (checkpoints, _, _) = snapshot_files(dir.path(), 1);
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    assert!(checkpoints[0].starts_with(&third.snapshot_id));
}
