//! `create-session` against a single-node meta service on an ephemeral port.

use std::time::{Duration, Instant};

use prometheus::Registry;
use tidemq_meta::{MetaClient, MetaConfig, MetaNodeHandle};

use super::*;

fn args(port: u16, run_id: &str) -> CreateSessionArgs {
    CreateSessionArgs {
        host: "127.0.0.1".into(),
        port,
        count: Some(500),
        duration_secs: None,
        concurrency: 20,
        rate: None,
        no_coalesce: false,
        batch: 1,
        timeout_ms: 5000,
        tenant: "bench".into(),
        run_id: Some(run_id.into()),
        clients: 1,
        session_expiry_secs: 60,
        payload_size: 16,
        output: Output::Table,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_every_session_it_counts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = MetaConfig::new(1, "127.0.0.1:0".parse()?, dir.path());
    let node = MetaNodeHandle::start(config, &Registry::new()).await?;
    let port = node.local_addr().port();
    let client =
        MetaClient::with_deadline([node.local_addr().to_string()], Duration::from_secs(10))?;
    client.list_nodes().await?; // a leader is elected

    let report = create_session::create_session(&args(port, "a"), Arc::default()).await?;
    println!("{report}");
    assert_eq!(
        (
            report.sessions,
            report.requests,
            report.errors,
            report.timeouts
        ),
        (500, 500, 0, 0)
    );
    assert!(report.errors_by_kind.is_empty());
    assert_eq!(report.key_prefix, "bench/bench-a-");
    assert!(report.p50_ms > 0.0 && report.p50_ms <= report.max_ms);
    for n in [0, 250, 499] {
        let session = client.get_session(&format!("bench/bench-a-{n}")).await?;
        let session = session.ok_or_else(|| anyhow::anyhow!("session {n} missing"))?;
        assert_eq!((session.expiry_secs, session.payload.len()), (60, 16));
    }
    assert!(client.get_session("bench/bench-a-500").await?.is_none());
    assert_eq!(client.list_sessions("bench/bench-a-", 0).await?.len(), 500);

    // Batches: the last request carries the remainder; two clients.
    let batched = CreateSessionArgs {
        count: Some(100),
        batch: 7,
        clients: 2,
        output: Output::Json,
        ..args(port, "b")
    };
    let report = create_session::create_session(&batched, Arc::default()).await?;
    println!("{}", serde_json::to_string(&report)?);
    assert_eq!(
        (report.sessions, report.requests, report.errors),
        (100, 15, 0)
    );
    assert_eq!(client.list_sessions("bench/bench-b-", 0).await?.len(), 100);

    // A fixed duration, no count.
    let timed = CreateSessionArgs {
        count: None,
        duration_secs: Some(1),
        concurrency: 4,
        ..args(port, "c")
    };
    let started = Instant::now();
    let report = create_session::create_session(&timed, Arc::default()).await?;
    println!("{report}");
    assert!(report.sessions > 0 && report.errors == 0, "{report:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let listed = client.list_sessions("bench/bench-c-", 0).await?.len() as u64;
    assert_eq!(listed, report.sessions);

    // One request per session, and an open loop: 50 sessions at 100/s
    // cannot take less than about half a second, however fast the node.
    let paced = CreateSessionArgs {
        count: Some(50),
        rate: Some(100),
        concurrency: 5,
        no_coalesce: true,
        ..args(port, "e")
    };
    let started = Instant::now();
    let report = create_session::create_session(&paced, Arc::default()).await?;
    println!("{report}");
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{report:?}"
    );
    assert_eq!(
        (report.sessions, report.requests, report.errors),
        (50, 50, 0)
    );
    assert_eq!(client.list_sessions("bench/bench-e-", 0).await?.len(), 50);

    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_stop_flag_sends_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = MetaConfig::new(1, "127.0.0.1:0".parse()?, dir.path());
    let node = MetaNodeHandle::start(config, &Registry::new()).await?;
    let stop = Arc::new(AtomicBool::new(true));
    let report = create_session::create_session(&args(node.local_addr().port(), "d"), stop).await?;
    assert_eq!((report.sessions, report.requests), (0, 0));
    assert_eq!(
        report.to_string().lines().last(),
        Some("latency: none recorded")
    );
    node.shutdown().await;
    Ok(())
}

#[test]
fn the_line_per_second_reads_like_cli_bench() {
    let tick = Tick {
        sec: 3,
        ops_per_sec: 12_345.4,
        requests_per_sec: 1_234.5,
        total: 37_000,
        errors: 1,
        timeouts: 2,
        p50_ms: 0.5,
        p95_ms: 1.25,
        p99_ms: 3.0,
        batched: false,
    };
    assert_eq!(
        tick.to_string(),
        "sec=3 | ops/s=12345 | total=37000 | errors=1 | timeouts=2 | p50=0.50ms p95=1.25ms p99=3.00ms"
    );
    let batched = Tick {
        batched: true,
        ..tick
    };
    assert!(
        batched
            .to_string()
            .starts_with("sec=3 | ops/s=12345 | req/s=1234 | total=")
    );
    let json = serde_json::to_value(&batched).unwrap_or_default();
    assert_eq!(json["p99_ms"], 3.0);
    assert!(json.get("batched").is_none());
}

#[tokio::test]
async fn errors_are_named_by_grpc_code() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let client = MetaClient::with_deadline([format!("127.0.0.1:{port}")], Duration::ZERO)?;
    let refused = client
        .create_sessions(vec![tidemq_proto::grpc::v1::Session {
            client_key: "t/x".into(),
            ..Default::default()
        }])
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("created a session on a closed port"))?;
    assert_eq!(stats::error_kind(&refused), "Unavailable", "{refused}");
    let invalid = tidemq_meta::MetaError::InvalidArgument { reason: "r".into() };
    assert_eq!(stats::error_kind(&invalid), "InvalidArgument");
    Ok(())
}

/// The `tidemq-meta` binary cargo built next to this test's directory.
fn meta_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/{profile}/deps/this-test -> target/{profile}/tidemq-meta
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("tidemq-meta"))
        .expect("target directory")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_measures_each_round_with_writers_running() -> anyhow::Result<()> {
    let args = FailoverArgs {
        bin: Some(meta_binary()),
        rounds: 2,
        data_groups: 1,
        heartbeat_ms: 50,
        election_timeout_ms: "300-600".into(),
        writers: 2,
        output: Output::Table,
    };
    let report = failover::failover(&args).await?;
    println!("{report}");
    assert_eq!(report.rounds_ms.len(), 2);
    assert!(report.min_ms > 0.0 && report.min_ms <= report.median_ms);
    assert!(report.median_ms <= report.max_ms);
    // A follower waits at least the election timeout's lower bound (300 ms)
    // before it stands; a cluster that never recovers fails the run instead.
    assert!(report.min_ms >= 150.0, "{report}");
    assert!(report.writes > 0, "the writers made progress: {report}");
    Ok(())
}
