//! The `tidemq` binary as a real process: configuration from flags and the
//! environment, serving clients, and a graceful stop on SIGTERM. Its HTTP
//! endpoints and meta service: `tests/endpoints.rs`.

mod common;

use std::process::Command;

use common::Raw;
use common::process::NodeProcess;
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
