//! Limits of the node as a whole, whatever each client does: sessions held,
//! retained messages (count and bytes), stored messages of every persistent
//! session together, and open files. Each is refused with its reason code
//! (or waits in the listen backlog) and counted.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::process::NodeProcess;
use common::{Raw, disconnect, persistent};
use tidemq_broker::Config;
use tidemq_proto::mqtt::{Packet, Protocol, QoS, ReasonCode};

#[tokio::test]
async fn sessions_stop_at_the_node_limit_and_existing_ones_resume() {
    let mut config = Config::default();
    config.session.max_sessions = 2;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let (first, _) = persistent(addr, "first").await;
    let (second, _) = persistent(addr, "second").await;
    disconnect(first).await;
    // 3.1.1 hears 0x03, server unavailable.
    for (protocol, want) in [
        (Protocol::V5, ReasonCode::QuotaExceeded),
        (Protocol::V3_1_1, ReasonCode::ServerUnavailable),
    ] {
        let (_, ack) = Raw::connect_with(addr, protocol, "third", |_| {}).await;
        assert_eq!(ack.reason, want, "{protocol:?}: {ack:?}");
    }
    let (_, present) = persistent(addr, "first").await;
    assert!(present, "an existing session resumes at the limit");
    disconnect(second).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_messages_stop_at_their_count() {
    let mut config = Config::default();
    config.mqtt.max_retained_messages = 2;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let mut sub = Raw::connect(addr, Protocol::V5, "sub").await;
    sub.subscribe(1, "r/#", QoS::AtLeastOnce).await;
    let mut publisher = Raw::connect(addr, Protocol::V5, "pub").await;
    for (id, topic, want) in [
        (1, "r/1", ReasonCode::Success),
        (2, "r/2", ReasonCode::Success),
        (3, "r/3", ReasonCode::QuotaExceeded),
        (4, "r/2", ReasonCode::Success),
    ] {
        let reason = publisher
            .publish(topic, b"v", QoS::AtLeastOnce, true, id)
            .await
            .map(|r| r.reason);
        assert_eq!(reason, Some(want), "{topic}");
        if want == ReasonCode::Success {
            assert_eq!(sub.expect_publish().await.topic, topic);
        }
    }
    sub.expect_silence().await;
    // A new subscriber sees the two that were kept.
    let mut late = Raw::connect(addr, Protocol::V5, "late").await;
    late.subscribe(1, "r/#", QoS::AtMostOnce).await;
    let mut topics = vec![
        late.expect_publish().await.topic,
        late.expect_publish().await.topic,
    ];
    topics.sort();
    assert_eq!(topics, ["r/1", "r/2"]);
    late.expect_silence().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_messages_of_all_sessions_stop_at_their_total() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = NodeProcess::start(
        dir.path(),
        &[
            ("TIDEMQ_SESSION__MAX_STORED_MESSAGES_TOTAL", "10"),
            ("TIDEMQ_STORAGE__TRIM_INTERVAL_MS", "100"),
        ],
    )?;
    for id in ["a", "b"] {
        let (mut sub, _) = persistent(node.mqtt, id).await;
        sub.subscribe(1, "s/#", QoS::AtLeastOnce).await;
        disconnect(sub).await;
    }
    let mut publisher = Raw::connect(node.mqtt, Protocol::V5, "pub").await;
    let publish_five = async |publisher: &mut Raw, from: u16| {
        for id in from..from + 5 {
            publisher
                .publish("s/x", &id.to_be_bytes(), QoS::AtLeastOnce, false, id)
                .await;
        }
    };
    // Two sessions × five messages reach the total of ten; once a trim has
    // counted them, nothing more is stored.
    publish_five(&mut publisher, 1).await;
    node.metric_until(
        "tidemq_stored_backlog_messages",
        Duration::from_secs(5),
        "the trim never counted them",
        |stored| stored >= 10.0,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(250)).await;
    publish_five(&mut publisher, 6).await;
    assert_eq!(
        node.metric("tidemq_messages_dropped_total{reason=\"stored_limit\"}")?,
        10.0
    );
    for id in ["a", "b"] {
        let (mut sub, present) = persistent(node.mqtt, id).await;
        assert!(present);
        for want in 1..=5u16 {
            let p = sub.expect_publish().await;
            assert_eq!(p.payload.as_ref(), want.to_be_bytes());
        }
        sub.expect_silence().await;
        disconnect(sub).await;
    }
    // Once they are taken, storing resumes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.metric("tidemq_stored_backlog_messages")? > 0.0 {
        ensure!(
            Instant::now() < deadline,
            "the backlog was not counted again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    publisher
        .publish("s/x", b"again", QoS::AtLeastOnce, false, 99)
        .await;
    let (mut sub, _) = persistent(node.mqtt, "a").await;
    assert_eq!(sub.expect_publish().await.payload.as_ref(), b"again");
    ensure!(!matches!(
        sub.recv_within(Duration::from_millis(200)).await,
        Some(Packet::Publish(_))
    ));
    Ok(())
}

/// Started under open-file limits of 64 (soft) and 128 (hard), the node
/// raises the soft limit to 128 and keeps half of it for its own files:
/// `max_connections` becomes 64, and connections past it are refused and
/// counted. When other sockets (idle HTTP connections here) take the
/// descriptors, accepts fail instead: those connections wait in the listen
/// backlog, the failures are counted, and they are served once descriptors
/// are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stop_short_of_the_open_file_limit() -> anyhow::Result<()> {
    const HARD: usize = 128;
    let dir = tempfile::tempdir()?;
    let node = NodeProcess::start_with_open_files(dir.path(), &[], 64, HARD as u64)?;
    let pid = node.pid().context("the node runs")?;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let open_files: Vec<&str> = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .context("no open-file limit")?
        .split_whitespace()
        .take(2)
        .collect();
    assert_eq!(
        open_files,
        ["128", "128"],
        "the soft limit raised to the hard one"
    );

    let (served, waiting) = connect_many(node.mqtt, 70).await?;
    assert_eq!(
        (served.len(), waiting.len()),
        (64, 0),
        "max_connections lowered to 64"
    );
    let refused = node.metric("tidemq_connections_limited_total{reason=\"max_connections\"}")?;
    assert_eq!(refused, 6.0);
    for raw in served {
        disconnect(raw).await;
    }

    // Idle HTTP connections take every descriptor left (those past it
    // wait in the HTTP listener's backlog).
    let in_use = || std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count);
    let http: Vec<_> = (0..HARD)
        .map(|_| std::net::TcpStream::connect(node.http))
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while in_use()? < HARD - 2 {
        ensure!(
            Instant::now() < deadline,
            "the HTTP connections were not accepted: {} descriptors in use",
            in_use()?
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (served, mut waiting) = connect_many(node.mqtt, 20).await?;
    ensure!(!waiting.is_empty(), "all 20 served with no descriptor free");
    drop(http);
    for raw in &mut waiting {
        match raw.recv_within(Duration::from_secs(5)).await {
            Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::Success),
            other => anyhow::bail!("a waiting connection got {other:?}"),
        }
    }
    drop((served, waiting));
    ensure!(node.metric("tidemq_accept_errors_total")? > 0.0);
    Ok(())
}

/// Opens `count` MQTT 5.0 connections and sends CONNECT on each; returns
/// those that got a CONNACK within two seconds and those still waiting.
/// Connections the broker closed are left out.
async fn connect_many(
    addr: std::net::SocketAddr,
    count: usize,
) -> anyhow::Result<(Vec<Raw>, Vec<Raw>)> {
    let mut clients = Vec::new();
    for i in 0..count {
        let mut raw = Raw::tcp(addr, Protocol::V5).await;
        let connect = common::connect_packet(Protocol::V5, &format!("fd-{i}"));
        raw.send(&Packet::Connect(connect)).await;
        clients.push(raw);
    }
    let (mut served, mut waiting) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for mut raw in clients {
        match tokio::time::timeout_at(deadline, raw.recv()).await {
            Ok(Some(Packet::ConnAck(ack))) if ack.reason == ReasonCode::Success => served.push(raw),
            Ok(None) => {}
            Err(_) => waiting.push(raw),
            Ok(other) => anyhow::bail!("expected a CONNACK or a close, got {other:?}"),
        }
    }
    Ok((served, waiting))
}
