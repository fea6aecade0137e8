//! Building a snapshot and installing it elsewhere reproduces the state.

mod common;

use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use tidemq_meta::{MetaRequest, MetaState, Session};

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
    let snapshot = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 3)));
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
    let snapshot = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut blob = snapshot.snapshot.into_inner();
    let middle = blob.len() / 2;
    blob[middle] ^= 0xFF;

    let (_dir_b, _reg_b, mut follower) = fresh(1).await;
    let sm_b = &mut follower[0].1;
    let mut receiving = sm_b.begin_receiving_snapshot().await.unwrap();
    receiving.get_mut().extend_from_slice(&blob);
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
