//! The cluster secret over real gRPC on 127.0.0.1: a node given one refuses
//! every call without it (a stranger cannot add a voter, delete a session or
//! speak Raft to it), members holding it form a cluster, and `ListSessions`
//! answers in bounded pages.

use std::time::Duration;

use tidemq_meta::{ClusterSecret, MetaClient, MetaConfig, MetaError, MetaNodeHandle};
use tidemq_proto::grpc::v1 as pb;
use tonic::metadata::MetadataValue;

const SECRET: &str = "s3cret-of-the-test-cluster";

fn secret(text: &str) -> ClusterSecret {
    ClusterSecret::new(text).expect("a valid secret")
}

async fn start(
    id: u64,
    dir: &std::path::Path,
    secret: Option<ClusterSecret>,
    join: Vec<String>,
    registry: &prometheus::Registry,
) -> Result<MetaNodeHandle, MetaError> {
    let mut config = MetaConfig::new(id, "127.0.0.1:0".parse().expect("addr"), dir);
    config.secret = secret;
    config.join = join;
    MetaNodeHandle::start(config, registry).await
}

fn counter(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .into_iter()
        .find(|m| m.name() == name)
        .map_or(0.0, |m| m.get_metric()[0].get_counter().get_value())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_secret_refuses_calls_without_it() -> anyhow::Result<()> {
    let (one, two, three) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let registry = prometheus::Registry::new();
    let first = start(1, one.path(), Some(secret(SECRET)), Vec::new(), &registry).await?;
    let addr = first.local_addr().to_string();
    let trusted = MetaClient::with_secret(
        [addr.clone()],
        Duration::from_secs(10),
        Some(secret(SECRET)),
    )?;
    trusted.list_nodes().await?;

    // Without the secret, or with another, nothing is answered.
    for stranger in [
        MetaClient::with_deadline([addr.clone()], Duration::from_secs(1))?,
        MetaClient::with_secret(
            [addr.clone()],
            Duration::from_secs(1),
            Some(secret("another-secret-entirely")),
        )?,
    ] {
        let refused = stranger.add_member(0, 99, "127.0.0.1:1").await;
        assert!(
            matches!(refused, Err(MetaError::Unauthenticated { .. })),
            "{refused:?}"
        );
        let refused = stranger.delete_session("acme/x").await;
        assert!(matches!(refused, Err(MetaError::Unauthenticated { .. })));
    }
    let mut raw =
        pb::raft_service_client::RaftServiceClient::connect(format!("http://{addr}")).await?;
    let vote = raw
        .vote(pb::RaftRequest {
            group: 0,
            payload: b"{}".to_vec(),
        })
        .await
        .expect_err("Raft without the secret");
    assert_eq!(vote.code(), tonic::Code::Unauthenticated);
    // A header that is almost right is still wrong.
    let mut request = tonic::Request::new(pb::RaftStatusRequest {});
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {SECRET}x"))?,
    );
    let mut raw_meta =
        pb::meta_service_client::MetaServiceClient::connect(format!("http://{addr}")).await?;
    let status = raw_meta
        .raft_status(request)
        .await
        .expect_err("wrong secret");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(counter(&registry, "tidemq_meta_unauthenticated_total") >= 6.0);
    let nodes = trusted.list_nodes().await?;
    assert!(
        nodes.iter().all(|n| n.node_id != 99),
        "no stranger was added"
    );

    // A member holding the secret joins and replicates; one with the wrong
    // secret cannot join.
    let second = start(
        2,
        two.path(),
        Some(secret(SECRET)),
        vec![addr.clone()],
        &prometheus::Registry::new(),
    )
    .await?;
    let status = trusted
        .raft_status(&second.local_addr().to_string())
        .await?;
    assert!(status.iter().all(|g| g.voters.contains(&2)), "{status:?}");
    let intruder = tokio::time::timeout(
        Duration::from_secs(30),
        start(
            3,
            three.path(),
            Some(secret("not-the-cluster-secret")),
            vec![addr],
            &prometheus::Registry::new(),
        ),
    )
    .await?;
    assert!(intruder.is_err(), "joined with the wrong secret");
    second.shutdown().await;
    first.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sessions_answers_in_pages() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = MetaConfig::new(1, "127.0.0.1:0".parse()?, dir.path());
    config.data_raft_group_num = 3;
    let node = MetaNodeHandle::start(config, &prometheus::Registry::new()).await?;
    let client =
        MetaClient::with_deadline([node.local_addr().to_string()], Duration::from_secs(10))?;
    client.list_nodes().await?;
    let keys: Vec<String> = (0..2_500).map(|i| format!("acme/dev-{i:05}")).collect();
    for chunk in keys.chunks(500) {
        let sessions = chunk
            .iter()
            .map(|key| pb::Session {
                client_key: key.clone(),
                node_id: 1,
                created_at_ms: 0,
                expiry_secs: 60,
                connected: false,
                payload: Vec::new(),
            })
            .collect();
        client.create_sessions(sessions).await?;
    }
    // One call answers one page, however much is asked for.
    let page = client.list_sessions_page("acme/", "", 0).await?;
    assert_eq!(page.len(), 1_000);
    assert_eq!(
        client.list_sessions_page("acme/", "", 50_000).await?.len(),
        1_000
    );
    let listed: Vec<String> = page.into_iter().map(|s| s.client_key).collect();
    assert_eq!(listed, keys[..1_000], "the first page, in key order");
    let next = client.list_sessions_page("acme/", &listed[999], 10).await?;
    let next: Vec<String> = next.into_iter().map(|s| s.client_key).collect();
    assert_eq!(next, keys[1_000..1_010]);
    // The client pages through all of them.
    let all: Vec<String> = client
        .list_sessions("acme/", 0)
        .await?
        .into_iter()
        .map(|s| s.client_key)
        .collect();
    assert_eq!(all, keys);
    assert_eq!(client.list_sessions("acme/", 1_234).await?.len(), 1_234);
    node.shutdown().await;
    Ok(())
}
