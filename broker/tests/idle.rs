//! Idle connections: after 100 ms with nothing to do, a connection gives
//! back its buffers and waits in its smallest state
//! (`tidemq_connections_idle` counts them). Everything a connection is
//! expected to do must still work from there: deliveries, pings, takeover,
//! keep alive, shutdown.

mod common;

use std::time::Duration;

use common::{Raw, WAIT, publish, sample};
use tidemq_broker::Config;
use tidemq_proto::mqtt::{Packet, Protocol, QoS, ReasonCode};

/// Reads until the broker closes and checks it sent one DISCONNECT with
/// `reason` first.
async fn closed_with(client: &mut Raw, reason: ReasonCode) {
    let seen = tokio::time::timeout(WAIT, client.until_closed())
        .await
        .expect("closed within the wait");
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == reason),
        "expected DISCONNECT {reason:?}, got {seen:?}"
    );
}

/// Waits until `count` connections are idle; panics after [`WAIT`].
async fn idle_until(registry: &prometheus::Registry, count: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while sample(registry, "tidemq_connections_idle", &[]) != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} idle connections, have {}",
            sample(registry, "tidemq_connections_idle", &[])
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_idle_connection_gets_deliveries_answers_pings_and_is_taken_over() {
    let (broker, registry) = common::start_registered(Config::default()).await;
    let addr = broker.local_addr();
    let mut subscriber = Raw::connect(addr, Protocol::V5, "idle-sub").await;
    subscriber.subscribe(1, "idle/t", QoS::AtLeastOnce).await;
    idle_until(&registry, 1.0).await;

    let mut publisher = Raw::connect(addr, Protocol::V5, "idle-pub").await;
    idle_until(&registry, 2.0).await;
    // Both sides start from idle: the publisher's packet wakes it, the
    // delivery wakes the subscriber.
    let ack = publisher
        .publish_packet(publish("idle/t", b"hello", QoS::AtLeastOnce, false, 7))
        .await;
    assert!(ack.is_some(), "PUBACK");
    let delivered = subscriber.expect_publish().await;
    assert_eq!(&delivered.payload[..], b"hello");
    subscriber.ack(&delivered).await;

    idle_until(&registry, 2.0).await;
    subscriber.send(&Packet::PingReq).await;
    assert_eq!(subscriber.recv().await, Some(Packet::PingResp));

    idle_until(&registry, 2.0).await;
    let _taker = Raw::connect(addr, Protocol::V5, "idle-sub").await;
    closed_with(&mut subscriber, ReasonCode::SessionTakenOver).await;
}

#[tokio::test]
async fn an_idle_connection_times_out_on_keep_alive() {
    let (broker, registry) = common::start_registered(Config::default()).await;
    let (mut client, _) = Raw::connect_with(broker.local_addr(), Protocol::V5, "idle-ka", |c| {
        c.keep_alive = 1;
    })
    .await;
    idle_until(&registry, 1.0).await;
    // 1.5 × keep alive after the CONNECT, the broker closes.
    closed_with(&mut client, ReasonCode::KeepAliveTimeout).await;
    idle_until(&registry, 0.0).await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once() {
    let (broker, registry) = common::start_registered(Config::default()).await;
    let mut client = Raw::connect(broker.local_addr(), Protocol::V5, "idle-stop").await;
    idle_until(&registry, 1.0).await;
    // Without a wake-up the broker would wait 10 s for the connection and
    // then abort it, without a DISCONNECT.
    let stopped = tokio::time::timeout(WAIT, broker.shutdown()).await;
    assert!(stopped.is_ok(), "shutdown finished within the wait");
    closed_with(&mut client, ReasonCode::ServerShuttingDown).await;
}

#[tokio::test]
async fn dropping_the_broker_closes_idle_connections() {
    let (broker, registry) = common::start_registered(Config::default()).await;
    let mut client = Raw::connect(broker.local_addr(), Protocol::V3_1_1, "idle-drop").await;
    idle_until(&registry, 1.0).await;
    drop(broker);
    let closed = tokio::time::timeout(WAIT, client.until_closed()).await;
    assert!(closed.is_ok(), "closed within the wait");
}
