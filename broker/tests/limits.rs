//! Limits: CONNECT timeout, keep alive, maximum packet size (both ways),
//! receive maximum (both ways), maximum connections.

mod common;

use std::time::{Duration, Instant};

use common::{Raw, publish};
use tidemq_broker::Config;
use tidemq_proto::mqtt::{Packet, Protocol, QoS, ReasonCode};

#[tokio::test]
async fn connect_timeout_closes_silent_connections() {
    let mut config = Config::default();
    config.mqtt.connect_timeout_secs = 1;
    let broker = common::start(config).await;
    let mut raw = Raw::tcp(broker.local_addr(), Protocol::V3_1_1).await;
    let started = Instant::now();
    assert!(raw.until_closed().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    broker.shutdown().await;
}

#[tokio::test]
async fn keep_alive_times_out_after_one_and_a_half_intervals() {
    let broker = common::start_default().await;
    let (mut raw, _) = Raw::connect_with(broker.local_addr(), Protocol::V5, "sleepy", |c| {
        c.keep_alive = 1
    })
    .await;
    let started = Instant::now();
    let closing = raw.until_closed().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_400) && waited < Duration::from_millis(3_000),
        "{waited:?}"
    );
    assert!(
        matches!(closing.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::KeepAliveTimeout),
        "{closing:?}"
    );
    // PINGREQ keeps a connection alive.
    let (mut raw, _) = Raw::connect_with(broker.local_addr(), Protocol::V3_1_1, "pinger", |c| {
        c.keep_alive = 1
    })
    .await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        raw.send(&Packet::PingReq).await;
        assert_eq!(raw.recv().await, Some(Packet::PingResp));
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn maximum_packet_size_both_ways() {
    let mut config = Config::default();
    config.mqtt.max_packet_size = 1024;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let (mut small, ack) = Raw::connect_with(addr, Protocol::V5, "small", |c| {
        c.properties.maximum_packet_size = Some(200);
    })
    .await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024));
    small.subscribe(1, "big/#", QoS::AtMostOnce).await;
    let mut p = Raw::connect(addr, Protocol::V5, "p").await;
    // Larger than the subscriber accepts: not sent to it (and counted).
    p.publish("big/a", &[1u8; 500], QoS::AtMostOnce, false, 0)
        .await;
    p.publish("big/b", &[2u8; 10], QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(small.expect_publish().await.topic, "big/b");
    // Larger than the broker accepts: DISCONNECT 0x95.
    p.send(&Packet::Publish(publish(
        "big/c",
        &[3u8; 2000],
        QoS::AtMostOnce,
        false,
        0,
    )))
    .await;
    let closing = p.until_closed().await;
    assert!(
        matches!(closing.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::PacketTooLarge),
        "{closing:?}"
    );
    let dropped = broker
        .shared()
        .metrics
        .messages_dropped
        .with_label_values(&["too_large"])
        .get();
    assert_eq!(dropped, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn receive_maximum_both_ways() {
    let mut config = Config::default();
    config.mqtt.receive_maximum = 2;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    // Outbound: the client's receive maximum of 2 caps what is in flight.
    let (mut s, _) = Raw::connect_with(addr, Protocol::V5, "s", |c| {
        c.properties.receive_maximum = Some(2)
    })
    .await;
    s.subscribe(1, "rm", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(addr, Protocol::V5, "p").await;
    for i in 0..5u16 {
        p.publish("rm", &[i as u8], QoS::AtLeastOnce, false, i + 1)
            .await;
    }
    let mut unacked = Vec::new();
    for _ in 0..2 {
        match s.recv().await {
            Some(Packet::Publish(m)) => unacked.push(m),
            other => panic!("{other:?}"),
        }
    }
    s.expect_silence().await; // window full
    for m in &unacked {
        s.ack(m).await;
    }
    for _ in 0..3 {
        s.expect_publish().await;
    }
    // Inbound: a third unreleased QoS 2 message exceeds the broker's 2: 0x93.
    for id in 1..=2u16 {
        p.send(&Packet::Publish(publish(
            "rm2",
            b"x",
            QoS::ExactlyOnce,
            false,
            id,
        )))
        .await;
        assert!(matches!(p.recv().await, Some(Packet::PubRec(_))));
    }
    p.send(&Packet::Publish(publish(
        "rm2",
        b"x",
        QoS::ExactlyOnce,
        false,
        3,
    )))
    .await;
    let closing = p.until_closed().await;
    assert!(
        matches!(closing.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::ReceiveMaximumExceeded),
        "{closing:?}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn maximum_connections_are_enforced() {
    let mut config = Config::default();
    config.listener.max_connections = 2;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let _a = Raw::connect(addr, Protocol::V3_1_1, "a").await;
    let _b = Raw::connect(addr, Protocol::V3_1_1, "b").await;
    let mut third = Raw::tcp(addr, Protocol::V3_1_1).await;
    assert!(third.until_closed().await.is_empty(), "refused at accept");
    assert_eq!(broker.shared().metrics.connections_refused.get(), 1);
    drop(_a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _c = Raw::connect(addr, Protocol::V3_1_1, "c").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_server_shutting_down() {
    let broker = common::start_default().await;
    let mut v5 = Raw::connect(broker.local_addr(), Protocol::V5, "v5").await;
    let mut v3 = Raw::connect(broker.local_addr(), Protocol::V3_1_1, "v3").await;
    broker.shutdown().await;
    let closing = v5.until_closed().await;
    assert!(
        matches!(closing.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::ServerShuttingDown),
        "{closing:?}"
    );
    assert!(v3.until_closed().await.is_empty());
}

#[tokio::test]
async fn connections_per_address_and_the_connect_rate_are_limited() {
    let mut config = Config::default();
    config.listener.max_connections_per_address = 2;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let _a = Raw::connect(addr, Protocol::V3_1_1, "a").await;
    let _b = Raw::connect(addr, Protocol::V3_1_1, "b").await;
    let mut third = Raw::tcp(addr, Protocol::V3_1_1).await;
    assert!(third.until_closed().await.is_empty(), "closed at accept");
    let limited = broker.shared().metrics.connections_limited.clone();
    assert_eq!(limited.with_label_values(&["per_address"]).get(), 1);
    broker.shutdown().await;

    let mut config = Config::default();
    config.listener.max_connect_rate = 3;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(Raw::connect(addr, Protocol::V3_1_1, &format!("r{i}")).await);
    }
    let mut fourth = Raw::tcp(addr, Protocol::V3_1_1).await;
    assert!(
        fourth.until_closed().await.is_empty(),
        "over the rate: closed at accept"
    );
    let limited = broker.shared().metrics.connections_limited.clone();
    assert_eq!(limited.with_label_values(&["rate"]).get(), 1);
    broker.shutdown().await;
}

/// Every handshake over `diagnostics.slow_connect_ms` is counted, and every
/// step of every handshake feeds its histogram.
#[tokio::test]
async fn slow_connects_are_counted_and_every_step_is_timed() {
    let mut config = Config::default();
    config.diagnostics.slow_connect_ms = 0;
    let (broker, registry) = common::start_registered(config).await;
    for i in 0..3 {
        let _client = Raw::connect(broker.local_addr(), Protocol::V5, &format!("slow-{i}")).await;
    }
    assert_eq!(
        common::sample(&registry, "tidemq_slow_connects_total", &[]),
        3.0
    );
    let observed = |step: &str| {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "tidemq_connect_step_duration_seconds")
            .flat_map(|f| f.get_metric())
            .filter(|m| m.get_label().iter().any(|l| l.value() == step))
            .map(|m| m.get_histogram().get_sample_count())
            .sum::<u64>()
    };
    for step in [
        "read_connect",
        "validate",
        "auth",
        "session",
        "persist",
        "connack",
    ] {
        assert_eq!(observed(step), 3, "{step}");
    }
}
