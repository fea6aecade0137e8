//! What one packet and one session may hold: a repeated filter brings its
//! retained messages once, retained messages stop at the session's free
//! queue space, filters beyond the per-packet and per-session limits are
//! refused with 0x97 (5.0) or 0x80 (3.1.1), a PUBLISH with too many user
//! properties is refused with 0x97, and properties count against a
//! session's byte limit.

mod common;

use std::sync::Arc;

use common::Raw;
use tidemq_broker::Config;
use tidemq_proto::mqtt::{
    Packet, Protocol, QoS, ReasonCode, Subscribe, SubscribeFilter, SubscribeProperties,
    SubscriptionOptions,
};

fn subscribe(filters: &[&str]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: filters
            .iter()
            .map(|filter| SubscribeFilter {
                filter: filter.to_string(),
                options: SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    ..Default::default()
                },
            })
            .collect(),
        properties: SubscribeProperties::default(),
    })
}

async fn suback(raw: &mut Raw) -> Vec<ReasonCode> {
    match raw.recv().await {
        Some(Packet::SubAck(ack)) => ack.reasons,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Retained messages received until a short silence.
async fn drain(raw: &mut Raw) -> usize {
    let mut count = 0;
    while let Some(packet) = raw.recv_within(std::time::Duration::from_millis(300)).await {
        assert!(matches!(packet, Packet::Publish(_)), "{packet:?}");
        count += 1;
    }
    count
}

#[tokio::test]
async fn a_repeated_filter_brings_its_retained_messages_once_and_never_more_than_fit() {
    let mut config = Config::default();
    config.session.max_queued_messages = 15;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let mut publisher = Raw::connect(addr, Protocol::V5, "pub").await;
    for i in 0..10u16 {
        publisher
            .publish(&format!("mine/{i}"), b"r", QoS::AtLeastOnce, true, i + 1)
            .await;
    }
    let mut sub = Raw::connect(addr, Protocol::V5, "sub").await;
    sub.send(&subscribe(&["mine/#"; 50])).await;
    assert_eq!(suback(&mut sub).await, vec![ReasonCode::Success; 50]);
    assert_eq!(drain(&mut sub).await, 10, "each retained message once");
    // Two filters matching the same 10: only 15 fit the queue.
    let mut sub2 = Raw::connect(addr, Protocol::V5, "sub2").await;
    sub2.send(&subscribe(&["mine/#", "mine/+"])).await;
    suback(&mut sub2).await;
    assert_eq!(
        drain(&mut sub2).await,
        15,
        "stopped at the free queue space"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn filters_beyond_the_packet_and_session_limits_are_refused() {
    let mut config = Config::default();
    config.mqtt.max_subscribe_filters = 3;
    config.session.max_subscriptions = 4;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let mut v5 = Raw::connect(addr, Protocol::V5, "many").await;
    v5.send(&subscribe(&["a", "b", "c", "d", "e"])).await;
    let granted = ReasonCode::Success;
    let quota = ReasonCode::QuotaExceeded;
    assert_eq!(
        suback(&mut v5).await,
        vec![granted, granted, granted, quota, quota]
    );
    // The session holds a, b, c: one more fits, a replacement always does.
    v5.send(&subscribe(&["d", "e", "a"])).await;
    assert_eq!(suback(&mut v5).await, vec![granted, quota, granted]);
    // 3.1.1 has one failure code.
    let mut v3 = Raw::connect(addr, Protocol::V3_1_1, "many3").await;
    v3.send(&subscribe(&["a", "b", "c", "d"])).await;
    let failure = ReasonCode::UnspecifiedError;
    assert_eq!(
        suback(&mut v3).await,
        vec![granted, granted, granted, failure]
    );
    let refused = &broker.shared().metrics.subscribe_refused;
    assert_eq!(refused.with_label_values(&["too_many_filters"]).get(), 3);
    assert_eq!(
        refused.with_label_values(&["too_many_subscriptions"]).get(),
        1
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_publish_with_too_many_user_properties_is_refused_and_not_routed() {
    let mut config = Config::default();
    config.mqtt.max_user_properties = 10;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let mut sub = Raw::connect(addr, Protocol::V5, "sub").await;
    sub.subscribe(1, "props", QoS::AtLeastOnce).await;
    let mut publisher = Raw::connect(addr, Protocol::V5, "pub").await;
    let mut flood = common::publish("props", b"x", QoS::AtLeastOnce, false, 1);
    flood.properties.user_properties =
        Arc::new((0..11).map(|i| (format!("k{i}"), String::new())).collect());
    publisher.send(&Packet::Publish(flood)).await;
    match publisher.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.reason, ReasonCode::QuotaExceeded),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    sub.expect_silence().await;
    let mut fine = common::publish("props", b"y", QoS::AtLeastOnce, false, 2);
    fine.properties.user_properties =
        Arc::new((0..10).map(|i| (format!("k{i}"), String::new())).collect());
    publisher.send(&Packet::Publish(fine)).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(a)) if !a.reason.is_error()));
    assert_eq!(
        sub.expect_publish().await.properties.user_properties.len(),
        10
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn properties_count_against_the_queue_byte_limit() {
    let mut config = Config::default();
    config.session.max_queued_bytes = 4096;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    // An offline persistent session that queues QoS 1 messages in memory.
    let (mut sub, _) = Raw::connect_with(addr, Protocol::V5, "slow", |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(600);
    })
    .await;
    sub.subscribe(1, "heavy", QoS::AtLeastOnce).await;
    common::disconnect(sub).await;
    let mut publisher = Raw::connect(addr, Protocol::V5, "pub").await;
    // A 1-byte payload with ~1 KiB of user properties: the fifth does not fit.
    for id in 1..=5u16 {
        let mut heavy = common::publish("heavy", b"x", QoS::AtLeastOnce, false, id);
        heavy.properties.user_properties = vec![("k".into(), "v".repeat(1000))].into();
        publisher.send(&Packet::Publish(heavy)).await;
        publisher.recv().await;
    }
    let dropped = broker
        .shared()
        .metrics
        .messages_dropped
        .with_label_values(&["queue_full"])
        .get();
    assert!(
        dropped >= 1,
        "1-byte payloads with 1 KiB properties filled 4 KiB: {dropped} dropped"
    );
    broker.shutdown().await;
}
