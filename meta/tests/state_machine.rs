//! What each request does to the state, and the outcome it reports.

mod common;

use openraft::storage::RaftStateMachine;
use tidemq_meta::{MetaRequest, MetaResponse, Session};

use common::{fresh, normal};

fn session(key: &str) -> Session {
    Session {
        client_key: key.into(),
        ..Default::default()
    }
}

fn subscribe(client_key: &str, filter: &str) -> MetaRequest {
    MetaRequest::AddSubscription {
        client_key: client_key.into(),
        filter: filter.into(),
        qos: 1,
        options: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_report_their_outcome_and_batches_see_their_own_writes() {
    let (_dir, registry, mut stores) = fresh(1).await;
    let sm = &mut stores[0].1;
    let batch = MetaRequest::Batch(vec![
        MetaRequest::CreateSessions(vec![session("t/a"), session("t/a/b")]),
        subscribe("t/a", "x/y"),
        subscribe("t/a/b", "z"),
        MetaRequest::NodeHeartbeat {
            node_id: 4,
            at_ms: 10,
        },
        MetaRequest::RegisterNode {
            node_id: 4,
            addr: "127.0.0.1:1".into(),
            at_ms: 11,
            labels: Vec::new(),
        },
        MetaRequest::NodeHeartbeat {
            node_id: 4,
            at_ms: 12,
        },
        MetaRequest::CreateSessions(vec![session("t/ok"), session("")]),
        MetaRequest::RemoveSubscription {
            client_key: "t/a".into(),
            filter: "nope".into(),
        },
    ]);
    let responses = sm
        .apply(vec![
            normal(1, 1, batch),
            normal(
                1,
                2,
                MetaRequest::DeleteSession {
                    client_key: "t/a".into(),
                },
            ),
        ])
        .await
        .unwrap();
    let MetaResponse::Batch(outcomes) = &responses[0] else {
        panic!("expected a batch response, got {:?}", responses[0]);
    };
    assert_eq!(outcomes[0], MetaResponse::Sessions { written: 2 });
    assert_eq!(outcomes[1], MetaResponse::Ok);
    assert_eq!(
        outcomes[3],
        MetaResponse::NotFound,
        "heartbeat before registration"
    );
    assert_eq!(
        outcomes[5],
        MetaResponse::Ok,
        "heartbeat sees the registration of the same batch"
    );
    assert!(
        matches!(outcomes[6], MetaResponse::Rejected { .. }),
        "all or none"
    );
    assert_eq!(outcomes[7], MetaResponse::Deleted { existed: false });
    assert_eq!(responses[1], MetaResponse::Deleted { existed: true });

    let state = sm.state();
    assert!(state.get_session("t/a").await.unwrap().is_none());
    assert!(state.list_subscriptions("t/a").await.unwrap().is_empty());
    // "t/a/b" shares a string prefix with "t/a" but is another session.
    assert!(state.get_session("t/a/b").await.unwrap().is_some());
    assert_eq!(state.list_subscriptions("t/a/b").await.unwrap().len(), 1);
    assert!(state.get_session("t/ok").await.unwrap().is_none());
    let nodes = state.list_nodes().await.unwrap();
    assert_eq!((nodes.len(), nodes[0].last_heartbeat_ms), (1, 12));

    let (applies, _) = common::histogram(&registry, "raft_apply_batch_duration_ms");
    assert_eq!(applies, 1, "one apply call, one observation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sessions_pages_by_prefix() {
    let (_dir, _registry, mut stores) = fresh(1).await;
    let sm = &mut stores[0].1;
    let sessions = ["a/1", "a/2", "a/3", "b/1"].map(session).to_vec();
    sm.apply(vec![normal(1, 1, MetaRequest::CreateSessions(sessions))])
        .await
        .unwrap();
    let state = sm.state();
    let keys = |v: Vec<Session>| v.into_iter().map(|s| s.client_key).collect::<Vec<_>>();
    assert_eq!(
        keys(state.list_sessions("a/", None, 2).await.unwrap()),
        ["a/1", "a/2"]
    );
    assert_eq!(
        keys(state.list_sessions("a/", Some("a/2"), 2).await.unwrap()),
        ["a/3"]
    );
    assert_eq!(
        keys(state.list_sessions("", Some("a/3"), 10).await.unwrap()),
        ["b/1"]
    );
}
