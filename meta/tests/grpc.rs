//! gRPC round trips against a single-node meta service on 127.0.0.1:
//! every MetaService RPC through `MetaClient`, bad requests refused with
//! `InvalidArgument` and nothing applied, a restart keeping the data, and
//! concurrent `put_session` calls coalesced into shared requests, and
//! concurrent reads sharing their leadership checks.

use std::time::Duration;

use tidemq_meta::{MetaClient, MetaConfig, MetaError, MetaNodeHandle};
use tidemq_proto::grpc::v1 as pb;

async fn start(dir: &std::path::Path, groups: u32) -> MetaNodeHandle {
    start_with(dir, groups, &prometheus::Registry::new()).await
}

/// A node whose metrics land in `registry`.
async fn start_with(
    dir: &std::path::Path,
    groups: u32,
    registry: &prometheus::Registry,
) -> MetaNodeHandle {
    let mut config = MetaConfig::new(1, "127.0.0.1:0".parse().expect("addr"), dir);
    config.data_raft_group_num = groups;
    MetaNodeHandle::start(config, registry)
        .await
        .expect("meta node starts")
}

fn session(key: &str) -> pb::Session {
    pb::Session {
        client_key: key.to_string(),
        node_id: 1,
        created_at_ms: 0,
        expiry_secs: 60,
        connected: true,
        payload: b"state".to_vec(),
    }
}

/// Waits until the single node has elected itself.
async fn client(node: &MetaNodeHandle) -> MetaClient {
    let client =
        MetaClient::with_deadline([node.local_addr().to_string()], Duration::from_secs(10))
            .expect("client");
    client.list_nodes().await.expect("leader elected");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_round_trips() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start(dir.path(), 4).await;
    let c = client(&node).await;

    // Sessions, spread over four data groups.
    let sessions: Vec<_> = (0..100)
        .map(|i| session(&format!("acme/dev-{i}")))
        .collect();
    assert_eq!(c.create_sessions(sessions).await?, 100);
    let got = c.get_session("acme/dev-7").await?.expect("session exists");
    assert_eq!(
        (got.node_id, got.expiry_secs, got.payload.as_slice()),
        (1, 60, &b"state"[..])
    );
    assert!(got.created_at_ms > 0, "creation time filled in");
    assert_eq!(c.list_sessions("acme/", 0).await?.len(), 100);
    assert_eq!(c.list_sessions("acme/", 10).await?.len(), 10);
    // One data group at a time, as nodes ask each other when the groups'
    // leaders differ: the groups partition the sessions.
    let mut raw = pb::meta_service_client::MetaServiceClient::connect(format!(
        "http://{}",
        node.local_addr()
    ))
    .await?;
    let mut per_group = 0;
    for group in 1..=4 {
        let mut stream = raw
            .list_sessions(pb::ListSessionsRequest {
                prefix: "acme/".into(),
                limit: 0,
                group: Some(group),
                start_after: String::new(),
            })
            .await?
            .into_inner();
        let mut n = 0;
        while stream.message().await?.is_some() {
            n += 1;
        }
        assert!(n < 100, "group {group} holds only its share, not {n}");
        per_group += n;
    }
    assert_eq!(per_group, 100);
    for group in [0, 5] {
        let refused = raw
            .list_sessions(pb::ListSessionsRequest {
                prefix: String::new(),
                limit: 0,
                group: Some(group),
                start_after: String::new(),
            })
            .await
            .expect_err("not a data group");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }
    assert!(c.delete_session("acme/dev-7").await?);
    assert!(!c.delete_session("acme/dev-7").await?);
    assert!(c.get_session("acme/dev-7").await?.is_none());

    // Subscriptions.
    let sub = pb::Subscription {
        client_key: "acme/dev-1".into(),
        filter: "sensors/+/temp".into(),
        options: 0b0000_0001,
        identifier: 42,
    };
    c.add_subscription(sub.clone()).await?;
    assert_eq!(c.list_subscriptions("acme/dev-1").await?, vec![sub]);
    c.remove_subscription("acme/dev-1", "sensors/+/temp")
        .await?;
    assert!(c.list_subscriptions("acme/dev-1").await?.is_empty());

    // Nodes and heartbeats.
    c.register_node(pb::NodeInfo {
        node_id: 9,
        grpc_addr: "127.0.0.1:9999".into(),
        mqtt_addr: "127.0.0.1:1883".into(),
        last_heartbeat_ms: 0,
    })
    .await?;
    c.heartbeat(9).await?;
    let nodes = c.list_nodes().await?;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].mqtt_addr, "127.0.0.1:1883");
    assert!(nodes[0].last_heartbeat_ms > 0);

    // Cluster configuration, cached for readers.
    c.set_cluster_config("max_connections", "5000").await?;
    assert_eq!(
        c.cluster_config()
            .get("max_connections")
            .map(String::as_str),
        Some("5000")
    );
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_arguments_and_change_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start(dir.path(), 1).await;
    let c = client(&node).await;
    let invalid = |r: Result<_, MetaError>| matches!(r, Err(MetaError::InvalidArgument { .. }));

    assert!(invalid(c.create_sessions(vec![]).await.map(|_| ())));
    // One empty key in a batch: the whole batch is refused.
    let batch = vec![session("ok/one"), session("")];
    assert!(invalid(c.create_sessions(batch).await.map(|_| ())));
    assert!(
        c.get_session("ok/one").await?.is_none(),
        "nothing half-applied"
    );
    let too_many: Vec<_> = (0..10_001).map(|i| session(&format!("t/{i}"))).collect();
    assert!(invalid(c.create_sessions(too_many).await.map(|_| ())));
    assert!(invalid(c.get_session("").await.map(|_| ())));
    assert!(invalid(c.heartbeat(12345).await), "unregistered node");
    assert!(invalid(
        c.add_subscription(pb::Subscription {
            client_key: "a/b".into(),
            filter: String::new(),
            options: 0,
            identifier: 0,
        })
        .await
    ));
    assert!(invalid(c.add_member(0, 2, "").await.map(|_| ())));
    assert!(invalid(c.add_member(7, 2, "127.0.0.1:1").await.map(|_| ())));
    assert!(invalid(c.remove_member(7, 1).await.map(|_| ())));
    let status = c.raft_status(&node.local_addr().to_string()).await?;
    assert!(
        status
            .iter()
            .all(|g| g.voters == [1] && g.learners.is_empty()),
        "membership unchanged: {status:?}"
    );
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_data() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start(dir.path(), 2).await;
    let c = client(&node).await;
    let sessions: Vec<_> = (0..50).map(|i| session(&format!("r/{i}"))).collect();
    c.create_sessions(sessions).await?;
    node.shutdown().await;

    let node = start(dir.path(), 2).await;
    let c = client(&node).await;
    assert_eq!(c.list_sessions("r/", 0).await?.len(), 50);
    // And it still takes writes: it restarted as the leader of its own cluster.
    c.create_sessions(vec![session("r/after")]).await?;
    assert!(c.get_session("r/after").await?.is_some());
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_status_and_per_group_gauges_follow_the_log() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let registry = prometheus::Registry::new();
    let node = start_with(dir.path(), 2, &registry).await;
    let c = client(&node).await;
    let sessions: Vec<_> = (0..40).map(|i| session(&format!("g/{i}"))).collect();
    c.create_sessions(sessions).await?;

    let status = c.raft_status(&node.local_addr().to_string()).await?;
    assert_eq!(status.len(), 3, "metadata group and two data groups");
    for g in &status {
        assert_eq!((g.node_id, g.state.as_str()), (1, "Leader"));
        assert_eq!(g.leader_id, Some(1));
        assert!(g.term >= 1);
        assert!(g.last_applied.is_some() && g.last_applied == g.last_log_index);
    }
    // Membership changes go through the same RPCs a joining node uses;
    // adding the node that is already the only voter changes nothing.
    let reply = c.add_member(1, 1, &node.local_addr().to_string()).await?;
    assert_eq!(reply.voters, [1]);

    // The gauges trail openraft's metrics channel by a scheduling round.
    let gauge = |name: &str, group: &str| -> Option<f64> {
        registry
            .gather()
            .into_iter()
            .find(|f| f.name() == name)?
            .get_metric()
            .iter()
            .find(|m| m.get_label().iter().any(|l| l.value() == group))
            .map(|m| m.get_gauge().get_value())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let settled = status.iter().all(|g| {
            let group = g.group.to_string();
            gauge("raft_last_applied", &group) >= g.last_applied.map(|i| i as f64)
                && gauge("raft_apply_lag", &group) == Some(0.0)
                && gauge("raft_is_leader", &group) == Some(1.0)
        });
        if settled {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "gauges never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gauge("raft_last_log_index", "1").is_some_and(|v| v >= 1.0));
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_put_sessions_share_requests_and_all_apply() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let registry = prometheus::Registry::new();
    let node = start_with(dir.path(), 2, &registry).await;
    let c = client(&node).await;
    let served = || -> u64 {
        registry
            .gather()
            .into_iter()
            .filter(|f| f.name() == "grpc_requests")
            .flat_map(|f| f.get_metric().to_vec())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "method" && l.value() == "CreateSessions")
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    };

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..2000 {
        let c = c.clone();
        calls.spawn(async move { c.put_session(session(&format!("co/{i}"))).await });
    }
    // A bad session is refused on its own; it does not fail the others.
    let bad = c.put_session(session("")).await;
    assert!(
        matches!(bad, Err(MetaError::InvalidArgument { .. })),
        "{bad:?}"
    );
    while let Some(result) = calls.join_next().await {
        result??;
    }
    assert_eq!(c.list_sessions("co/", 0).await?.len(), 2000);
    let requests = served();
    assert!(
        (2..=1000).contains(&requests),
        "2000 concurrent writes went out in {requests} requests"
    );

    // One caller's writes keep their order: the last one wins.
    for expiry in [10, 20, 30] {
        c.put_session(pb::Session {
            expiry_secs: expiry,
            ..session("co/ordered")
        })
        .await?;
    }
    let got = c.get_session("co/ordered").await?.expect("written");
    assert_eq!(got.expiry_secs, 30);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_share_leadership_checks_and_see_every_acknowledged_write()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let registry = prometheus::Registry::new();
    let node = start_with(dir.path(), 1, &registry).await;
    let c = client(&node).await;
    let checks = || -> u64 {
        registry
            .gather()
            .into_iter()
            .filter(|f| f.name() == "tidemq_meta_read_checks_total")
            .flat_map(|f| f.get_metric().to_vec())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    };
    let before = checks();
    // Each caller writes its session, then reads it back, then reads one
    // that does not exist: every read sees what was acknowledged before it.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..500 {
        let c = c.clone();
        calls.spawn(async move {
            let key = format!("lin/{i}");
            c.put_session(session(&key)).await?;
            let got = c.get_session(&key).await?;
            anyhow::ensure!(got.is_some_and(|s| s.client_key == key), "{key} not seen");
            anyhow::ensure!(c.get_session(&format!("lin/none-{i}")).await?.is_none());
            Ok(())
        });
    }
    while let Some(result) = calls.join_next().await {
        result??;
    }
    let made = checks() - before;
    assert!(
        (1..500).contains(&made),
        "1,000 concurrent reads made {made} leadership checks"
    );
    node.shutdown().await;
    Ok(())
}

#[test]
fn put_session_outside_a_runtime_is_an_error_not_a_panic() -> anyhow::Result<()> {
    use futures_util::FutureExt;
    let c = MetaClient::new(["127.0.0.1:1"])?;
    // Fails on its first poll, before any I/O: no runtime is needed to see it.
    let result = c
        .put_session(session("a/b"))
        .now_or_never()
        .expect("answers at once");
    assert!(
        matches!(result, Err(MetaError::InvalidArgument { .. })),
        "{result:?}"
    );
    Ok(())
}
