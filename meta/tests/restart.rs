//! Everything acknowledged survives closing and reopening the store.

mod common;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{RaftLogReader, Vote};
use tidemq_meta::{MetaRequest, Session};

use common::{append_synced, blank, fresh, log_id, membership, normal, reopen};

fn session(key: &str) -> Session {
    Session {
        client_key: key.to_string(),
        node_id: 7,
        created_at_ms: 1_700_000_000_000,
        expiry_secs: 3600,
        connected: true,
        payload: vec![1, 2, 3],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_logs_and_state_survive_reopen() {
    let (dir, _registry, mut stores) = fresh(2).await;
    {
        let (log, sm) = &mut stores[1];
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        let entries = vec![
            membership(1, 1, &[1]),
            normal(
                1,
                2,
                MetaRequest::CreateSessions(vec![session("t/a"), session("t/b")]),
            ),
            normal(
                1,
                3,
                MetaRequest::SetClusterConfig {
                    key: "max_sessions".into(),
                    value: "1000".into(),
                },
            ),
            blank(2, 4),
            blank(2, 5),
        ];
        append_synced(log, entries.clone()).await.unwrap();
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        sm.apply(entries[..3].to_vec()).await.unwrap();
        // Group 0 gets a different vote and log, to catch crossed families.
        let (log0, _) = &mut stores[0];
        log0.save_vote(&Vote::new(9, 2)).await.unwrap();
        append_synced(log0, vec![blank(9, 1)]).await.unwrap();
    }
    drop(stores);

    let (_registry, mut stores) = reopen(&dir, 2).await;
    let (log, sm) = &mut stores[1];
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(2, 5)));
    assert_eq!(state.last_purged_log_id, None);
    let entries = log.try_get_log_entries(1..=5).await.unwrap();
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[1].log_id, log_id(1, 2));

    let (applied, stored_membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 3)));
    assert_eq!(stored_membership.log_id(), &Some(log_id(1, 1)));
    let reader = sm.state();
    assert_eq!(
        reader.get_session("t/a").await.unwrap(),
        Some(session("t/a"))
    );
    assert_eq!(reader.list_sessions("", None, 10).await.unwrap().len(), 2);
    assert_eq!(
        reader.get_config("max_sessions").await.unwrap().as_deref(),
        Some("1000")
    );

    let (log0, sm0) = &mut stores[0];
    assert_eq!(log0.read_vote().await.unwrap(), Some(Vote::new(9, 2)));
    assert_eq!(
        log0.get_log_state().await.unwrap().last_log_id,
        Some(log_id(9, 1))
    );
    assert_eq!(sm0.applied_state().await.unwrap().0, None);
    assert!(sm0.state().get_session("t/a").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_truncate_survive_reopen() {
    let (dir, _registry, mut stores) = fresh(1).await;
    {
        let log = &mut stores[0].0;
        append_synced(log, (1..=10).map(|i| blank(1, i)).collect())
            .await
            .unwrap();
        log.purge(log_id(1, 4)).await.unwrap();
        log.truncate(log_id(1, 9)).await.unwrap();
    }
    drop(stores);

    let (_registry, mut stores) = reopen(&dir, 1).await;
    let log = &mut stores[0].0;
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 8)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![5, 6, 7, 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_with_fewer_groups_keeps_the_others() {
    let (dir, _registry, stores) = fresh(3).await;
    append_synced(&stores[2].0, vec![blank(1, 1)])
        .await
        .unwrap();
    drop(stores);
    let (_registry, stores) = reopen(&dir, 1).await;
    assert_eq!(stores.len(), 1);
    drop(stores);
    let (_registry, mut stores) = reopen(&dir, 3).await;
    let state = stores[2].0.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 1)));
}
