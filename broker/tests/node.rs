//! The `tidemq` binary as a real process: configuration from the
//! environment, serving clients, and a graceful stop on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Raw;
use tidemq_proto::mqtt::{Packet, Protocol, QoS, ReasonCode};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemq"))
        .env("TIDEMQ_LISTENER__BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tidemq starts");
    let addr = format!("127.0.0.1:{port}").parse().expect("address");
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "tidemq listens on the configured port");

    // MQTT 3.1 (MQIsdp), 3.1.1 and 5.0 clients talk to each other.
    let mut v31 = Raw::connect(addr, Protocol::V3_1, "old-client").await;
    v31.subscribe(1, "mix/#", QoS::AtLeastOnce).await;
    let mut v5 = Raw::connect(addr, Protocol::V5, "new-client").await;
    v5.publish("mix/a", b"hello", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(&v31.expect_publish().await.payload[..], b"hello");

    // SIGTERM: 5.0 clients are told the server is shutting down, exit code 0.
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let closing = v5.until_closed().await;
    assert!(
        matches!(closing.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::ServerShuttingDown),
        "{closing:?}"
    );
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn binary_refuses_an_anonymous_public_listener() {
    let output = Command::new(env!("CARGO_BIN_EXE_tidemq"))
        .env("TIDEMQ_LISTENER__BIND", "0.0.0.0:0")
        .output()
        .expect("tidemq runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to accept anonymous clients"),
        "{stderr}"
    );
}
