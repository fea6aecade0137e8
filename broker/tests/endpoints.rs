//! The node's endpoints, on the real `tidemq` binary: `/metrics` carries
//! every part's metrics, `/health` follows the meta service's leadership
//! (and a node without a leader refuses clients),
//! the in-process meta service answers gRPC and keeps its data across a
//! restart. Plus the same node started in-process through [`Node`].

mod common;

use std::time::Duration;

use anyhow::{Context, ensure};
use common::process::{NodeProcess, http_get};
use tidemq_broker::{Config, Node};
use tidemq_meta::MetaClient;
use tidemq_proto::grpc::v1 as pb;

const WAIT: Duration = Duration::from_secs(20);

/// Election timeouts short enough that a restarted single node leads again
/// within a second.
const FAST_RAFT: (&str, &str) = ("TIDEMQ_META__ELECTION_TIMEOUT_MS", "[300, 600]");

// The process tests block their thread (child processes, raw HTTP): with
// worker threads, the gRPC client's connection tasks keep running meanwhile
// and close their connections when the node shuts down, as real clients do.
// A client that never does would hold the node's gRPC shutdown (see
// `Node::shutdown`).

/// The leader of `group` as the node at `addr` sees it.
async fn leader_of(addr: &str, group: u32) -> anyhow::Result<Option<u64>> {
    let status = MetaClient::new([addr])?.raft_status(addr).await?;
    Ok(status
        .iter()
        .find(|g| g.group == group)
        .and_then(|g| g.leader_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_grpc_answer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = NodeProcess::start(dir.path(), &[FAST_RAFT])?;

    let (status, body) = node.http_until("/health", WAIT, |status, _| status == 200)?;
    ensure!(status == 200, "/health: {status} {body}");
    for part in [
        r#""status":"ok""#.to_string(),
        r#""node_id":1"#.to_string(),
        r#""meta_leader":true"#.to_string(),
        r#""groups":2"#.to_string(),
        format!(r#""mqtt":"{}""#, node.mqtt),
        format!(r#""grpc":"{}""#, node.grpc),
    ] {
        ensure!(body.contains(&part), "/health lacks {part}: {body}");
    }

    // One metric of each part: runtimes (once sampled), meta, broker.
    let expected = [
        r#"runtime_busy_ratio{runtime="broker"}"#,
        r#"runtime_busy_ratio{runtime="meta-raft"}"#,
        r#"runtime_workers{runtime="meta-grpc"} 1"#,
        r#"raft_last_applied{group="0"}"#,
        r#"raft_is_leader{group="1"} 1"#,
        "rocksdb_operation_ms",
        "tidemq_connections 0",
    ];
    let (status, body) = node.http_until("/metrics", WAIT, |_, body| {
        expected.iter().all(|metric| body.contains(metric))
    })?;
    ensure!(status == 200, "/metrics: {status}");
    for metric in expected {
        ensure!(body.contains(metric), "/metrics lacks {metric}:\n{body}");
    }
    let (status, _) = http_get(node.http, "/no-such-page")?;
    ensure!(status == 404, "unknown path: {status}");

    // The meta service answers on the node's gRPC address.
    let grpc = node.grpc.to_string();
    ensure!(leader_of(&grpc, 0).await? == Some(1));
    let status = MetaClient::new([grpc.as_str()])?.raft_status(&grpc).await?;
    ensure!(status.len() == 2, "{status:?}");

    let exit = node.sigterm()?;
    ensure!(exit.success(), "{exit:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_data_dir_keeps_meta_data() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = NodeProcess::start(dir.path(), &[FAST_RAFT])?;
    node.http_until("/health", WAIT, |status, _| status == 200)?;
    let grpc = node.grpc.to_string();
    let client = MetaClient::new([grpc.as_str()])?;
    let session = pb::Session {
        client_key: "default/kept".into(),
        expiry_secs: 3600,
        ..Default::default()
    };
    ensure!(client.create_sessions(vec![session]).await? == 1);
    client.set_cluster_config("answer", "42").await?;
    ensure!(node.sigterm()?.success());
    ensure!(
        dir.path().join("meta").is_dir(),
        "meta data under data_dir/meta"
    );

    node.restart()?;
    let (status, body) = node.http_until("/health", WAIT, |status, _| status == 200)?;
    ensure!(status == 200, "/health after restart: {status} {body}");
    // Another process, another port: a fresh client.
    let grpc = node.grpc.to_string();
    let client = MetaClient::new([grpc.as_str()])?;
    let kept = client
        .get_session("default/kept")
        .await?
        .context("session lost across the restart")?;
    ensure!(kept.expiry_secs == 3600, "{kept:?}");
    let config = client.refresh_cluster_config().await?;
    ensure!(
        config.get("answer").map(String::as_str) == Some("42"),
        "{config:?}"
    );
    ensure!(leader_of(&grpc, 0).await? == Some(1));
    ensure!(node.sigterm()?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_and_clients_are_refused_while_a_group_has_no_leader() -> anyhow::Result<()> {
    // A two-member cluster whose other member never comes: node 1 (lowest
    // id) initializes it but can never win an election alone.
    let absent = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let peers = format!(r#"["1=127.0.0.1:1", "2={absent}"]"#);
    let dir = tempfile::tempdir()?;
    let mut node = NodeProcess::start(
        dir.path(),
        &[("TIDEMQ_META__PEERS", &peers), ("RUST_LOG", "error")],
    )?;
    let (status, body) = http_get(node.http, "/health")?;
    ensure!(status == 503, "/health: {status} {body}");
    ensure!(body.contains(r#""status":"no_leader""#), "{body}");
    ensure!(body.contains(r#""groups_without_leader":[0,1]"#), "{body}");
    ensure!(body.contains(r#""caught_up":false"#), "{body}");
    // Its route table cannot catch up, so it takes no clients: a 3.1.1
    // CONNECT gets CONNACK 0x03 (server unavailable).
    use std::io::{Read, Write};
    let mut mqtt = std::net::TcpStream::connect(node.mqtt)?;
    mqtt.set_read_timeout(Some(WAIT))?;
    let connect = [
        &[0x10, 17, 0, 4][..],
        b"MQTT",
        &[4, 2, 0, 60, 0, 5],
        b"probe",
    ]
    .concat();
    mqtt.write_all(&connect)?;
    let mut connack = [0; 4];
    mqtt.read_exact(&mut connack)?;
    ensure!(connack == [0x20, 2, 0, 3], "CONNACK {connack:?}");
    ensure!(node.sigterm()?.success());
    Ok(())
}

/// The library API the binary is built on: start, serve, shut down cleanly
/// enough that the same data directory opens again in the same process.
#[test]
fn node_starts_and_stops_in_process() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.listener.bind = "127.0.0.1:0".parse()?;
    config.meta.grpc_addr = "127.0.0.1:0".parse()?;
    config.http.bind = "127.0.0.1:0".parse()?;
    config.meta.election_timeout_ms = [300, 600];
    for round in 0..2 {
        let node = Node::start(config.clone())?;
        ensure!(node.mqtt_addr().port() != 0 && node.http_addr().port() != 0);
        let deadline = std::time::Instant::now() + WAIT;
        let (mut status, mut body) = http_get(node.http_addr(), "/health")?;
        while status != 200 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            (status, body) = http_get(node.http_addr(), "/health")?;
        }
        ensure!(status == 200, "round {round}: /health {status} {body}");
        let families = node.registry().gather();
        ensure!(families.iter().any(|f| f.name() == "raft_term"));
        ensure!(families.iter().any(|f| f.name() == "tidemq_sessions"));
        node.shutdown();
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_guard_the_meta_service_and_the_http_endpoint() -> anyhow::Result<()> {
    use common::process::http_get_with;
    use tidemq_meta::{ClusterSecret, MetaError};
    let dir = tempfile::tempdir()?;
    let (secret_file, token_file) = (dir.path().join("secret"), dir.path().join("token"));
    let (secret, token) = ("cluster-secret-0123456789", "scrape-token-0123456789");
    std::fs::write(&secret_file, format!("{secret}\n"))?;
    std::fs::write(&token_file, token)?;
    let node = NodeProcess::start(
        &dir.path().join("data"),
        &[
            FAST_RAFT,
            (
                "TIDEMQ_META__CLUSTER_SECRET_FILE",
                secret_file.to_str().context("path")?,
            ),
            (
                "TIDEMQ_HTTP__TOKEN_FILE",
                token_file.to_str().context("path")?,
            ),
        ],
    )?;
    // The node's own calls carry the secret: a persistent session, which is
    // written through the meta service, connects.
    let (raw, _) = common::persistent(node.mqtt, "durable").await;
    common::disconnect(raw).await;

    let grpc = node.grpc.to_string();
    let stranger = MetaClient::with_deadline([grpc.as_str()], Duration::from_secs(1))?;
    let refused = stranger.list_nodes().await;
    ensure!(
        matches!(refused, Err(MetaError::Unauthenticated { .. })),
        "{refused:?}"
    );
    let member = MetaClient::with_secret([grpc.as_str()], WAIT, Some(ClusterSecret::new(secret)?))?;
    ensure!(member.get_session("default/durable").await?.is_some());

    for path in ["/health", "/metrics"] {
        let (status, _) = http_get_with(node.http, path, None)?;
        ensure!(status == 401, "{path} without the token: {status}");
        let (status, _) = http_get_with(node.http, path, Some("scrape-token-012345678X"))?;
        ensure!(status == 401, "{path} with a wrong token: {status}");
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, _) = http_get_with(node.http, "/health", Some(token))?;
        if status == 200 {
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "/health: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = http_get_with(node.http, "/metrics", Some(token))?;
    ensure!(
        metrics.contains("tidemq_http_unauthorized_total 4"),
        "counted"
    );
    ensure!(
        !metrics.contains("tidemq_meta_unauthenticated_total 0\n"),
        "counted"
    );
    Ok(())
}
