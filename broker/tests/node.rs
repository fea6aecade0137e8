//! The `tidemq` binary as a real process: configuration from flags and the
//! environment, serving clients, a graceful stop on SIGTERM, and the
//! retained messages an earlier version kept in its own store. Its HTTP
//! endpoints and meta service: `tests/endpoints.rs`.

mod common;

use std::process::Command;

use std::time::Duration;

use anyhow::{Context, ensure};
use common::Raw;
use common::process::NodeProcess;
use tidemq_broker::{Broker, Config, DurableConfig, DurableStore, SessionCatalog};
use tidemq_proto::mqtt::{Packet, Protocol, QoS, ReasonCode};

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The addresses by flag this time (port 0: the ready line tells).
    let mut node = NodeProcess::start_with_args(
        dir.path(),
        &[],
        &[
            "--bind=127.0.0.1:0",
            "--meta-grpc-addr=127.0.0.1:0",
            "--http-bind=127.0.0.1:0",
        ],
    )?;
    let addr = node.mqtt;
    assert_ne!(addr.port(), 0);
    assert_ne!(node.grpc.port(), 0);
    assert_ne!(node.http.port(), 0);

    // MQTT 3.1 (MQIsdp), 3.1.1 and 5.0 clients talk to each other.
    let mut v31 = Raw::connect(addr, Protocol::V3_1, "old-client").await;
    v31.subscribe(1, "mix/#", QoS::AtLeastOnce).await;
    let mut v5 = Raw::connect(addr, Protocol::V5, "new-client").await;
    v5.publish("mix/a", b"hello", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(&v31.expect_publish().await.payload[..], b"hello");

    // SIGTERM: 5.0 clients are told the server is shutting down, exit code 0.
    let exit = tokio::task::spawn_blocking(move || node.sigterm());
    let closing = v5.until_closed().await;
    assert!(
        matches!(closing.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::ServerShuttingDown),
        "{closing:?}"
    );
    let exit = exit.await??;
    assert!(exit.success(), "{exit:?}");
    Ok(())
}

#[tokio::test]
async fn binary_refuses_an_anonymous_public_listener() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_tidemq"))
        .arg("--data-dir")
        .arg(dir.path())
        .env("TIDEMQ_LISTENER__BIND", "0.0.0.0:0")
        .env("TIDEMQ_META__GRPC_ADDR", "127.0.0.1:0")
        .env("TIDEMQ_HTTP__BIND", "127.0.0.1:0")
        .output()
        .expect("tidemq runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to accept anonymous clients"),
        "{stderr}"
    );
    // Refused before anything started: no data written.
    assert!(!dir.path().join("meta").exists());
}

/// The payloads of the retained messages a new subscriber to `filter` is
/// sent, in order.
async fn retained(addr: std::net::SocketAddr, filter: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let got = common::retained_sent(addr, "reader", filter)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut payloads: Vec<Vec<u8>> = got.iter().map(|p| p.payload.to_vec()).collect();
    // In no order the specification names.
    payloads.sort();
    Ok(payloads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_an_earlier_version_stored_are_kept_by_the_node() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // An earlier version kept retained messages in its message store, as a
    // broker without a meta service still does.
    let defaults = Config::default();
    let durable = DurableConfig {
        dir: dir.path().join("messages"),
        partitions: defaults.storage.partitions,
        io_threads: 1,
        pin_cores: false,
        sync: defaults.storage.sync_policy()?,
        segment_bytes: defaults.storage.segment_bytes,
        preallocate_bytes: defaults.storage.preallocate_bytes,
        max_backlog_bytes: 1 << 20,
        min_free_bytes: 0,
        max_message_age: None,
    };
    let registry = prometheus::Registry::new();
    let store = DurableStore::open(&durable, &registry).await?;
    let mut config = Config::default();
    config.listener.bind = "127.0.0.1:0".parse()?;
    let broker =
        Broker::start_with_store(config, &registry, Some(store), SessionCatalog::Local).await?;
    let mut publisher = Raw::connect(broker.local_addr(), Protocol::V5, "old").await;
    for (topic, payload) in [("old/a", &b"kept a"[..]), ("old/b", b"kept b")] {
        let ack = publisher
            .publish(topic, payload, QoS::AtLeastOnce, true, 1)
            .await
            .context("PUBACK")?;
        ensure!(!ack.reason.is_error(), "{ack:?}");
    }
    drop(publisher);
    broker.shutdown().await;

    // The node serves them, moves them to its metadata group, and still
    // serves them (once each) after a SIGKILL and a restart.
    let mut node = NodeProcess::start(dir.path(), &[])?;
    let both = vec![b"kept a".to_vec(), b"kept b".to_vec()];
    let got = retained(node.mqtt, "old/#").await?;
    ensure!(got == both, "at start: {got:?}");
    node.metric_until(
        "tidemq_cluster_retained_writes_total",
        Duration::from_secs(10),
        "the retained messages were not written to the metadata group",
        |n| n >= 1.0,
    )
    .await?;
    node.sigkill()?;
    node.restart()?;
    let got = retained(node.mqtt, "old/#").await?;
    ensure!(got == both, "after a restart: {got:?}");
    ensure!(node.metric("tidemq_retained_messages")? == 2.0);
    // Cleared now, it stays cleared: the store no longer holds the old copy.
    let mut publisher = Raw::connect(node.mqtt, Protocol::V5, "clearer").await;
    let ack = publisher
        .publish("old/a", b"", QoS::AtLeastOnce, true, 1)
        .await
        .context("PUBACK")?;
    ensure!(!ack.reason.is_error(), "{ack:?}");
    drop(publisher);
    node.sigkill()?;
    node.restart()?;
    let got = retained(node.mqtt, "old/#").await?;
    ensure!(got == [b"kept b".to_vec()], "after the clear: {got:?}");
    Ok(())
}
