//! Sessions across connections: offline queues and their bound, redelivery
//! with DUP, QoS 2 across a reconnect, takeover, expiry, clean start.

mod common;

use std::time::Duration;

use common::{Raw, publish};
use tidemq_broker::Config;
use tidemq_proto::mqtt::{Connect, Packet, Protocol, PubResponse, QoS, ReasonCode};

fn persistent(c: &mut Connect) {
    c.clean_start = false;
    if c.protocol == Protocol::V5 {
        c.properties.session_expiry_interval = Some(300);
    }
}

#[tokio::test]
async fn offline_queue_is_delivered_on_reconnect_and_bounded() {
    let mut config = Config::default();
    config.session.max_queued_messages = 5;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let (mut s, ack) = Raw::connect_with(addr, Protocol::V3_1_1, "offline", persistent).await;
    assert!(!ack.session_present);
    s.subscribe(1, "q/#", QoS::AtLeastOnce).await;
    s.send(&Packet::Disconnect(Default::default())).await;
    drop(s);

    let mut p = Raw::connect(addr, Protocol::V3_1_1, "p").await;
    for i in 0..8u16 {
        p.publish(
            "q/a",
            format!("m{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            i + 1,
        )
        .await;
    }
    // QoS 0 is not queued for an offline session.
    p.publish("q/a", b"qos0", QoS::AtMostOnce, false, 0).await;

    let (mut s, ack) = Raw::connect_with(addr, Protocol::V3_1_1, "offline", persistent).await;
    assert!(ack.session_present);
    for i in 0..5 {
        let got = s.expect_publish().await;
        assert_eq!(
            &got.payload[..],
            format!("m{i}").as_bytes(),
            "in order, oldest kept"
        );
    }
    s.expect_silence().await;
    let dropped = broker
        .shared()
        .sessions
        .get("default/offline")
        .map(|s| s.dropped.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(
        dropped,
        Some(4),
        "three over the bound of five, and the QoS 0 one"
    );
    let families = broker.shared().metrics.messages_dropped.clone();
    assert_eq!(families.with_label_values(&["queue_full"]).get(), 3);
    assert_eq!(families.with_label_values(&["offline_qos0"]).get(), 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn unacknowledged_messages_are_redelivered_with_dup() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let (mut s, _) = Raw::connect_with(addr, Protocol::V5, "redeliver", persistent).await;
    s.subscribe(1, "d", QoS::ExactlyOnce).await;
    let mut p = Raw::connect(addr, Protocol::V5, "p").await;
    p.publish("d", b"q1", QoS::AtLeastOnce, false, 1).await;
    p.publish("d", b"q2", QoS::ExactlyOnce, false, 2).await;
    // Receive both but acknowledge neither; for the QoS 2 one send PUBREC
    // only, so it sits waiting for PUBCOMP.
    let Some(Packet::Publish(first)) = s.recv().await else {
        panic!("publish")
    };
    let Some(Packet::Publish(second)) = s.recv().await else {
        panic!("publish")
    };
    let q2_id = second.packet_id.expect("qos 2 id");
    s.send(&Packet::PubRec(PubResponse::success(q2_id))).await;
    assert!(matches!(s.recv().await, Some(Packet::PubRel(_))));
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (mut s, ack) = Raw::connect_with(addr, Protocol::V5, "redeliver", persistent).await;
    assert!(ack.session_present);
    match s.recv().await {
        Some(Packet::Publish(again)) => {
            assert!(again.dup, "redelivery sets DUP");
            assert_eq!(again.packet_id, first.packet_id);
            assert_eq!(&again.payload[..], b"q1");
            s.ack(&again).await;
        }
        other => panic!("expected the QoS 1 redelivery, got {other:?}"),
    }
    // The QoS 2 message was already received: only PUBREL is resent.
    match s.recv().await {
        Some(Packet::PubRel(rel)) => {
            assert_eq!(rel.packet_id, q2_id);
            s.send(&Packet::PubComp(PubResponse::success(q2_id))).await;
        }
        other => panic!("expected PUBREL, got {other:?}"),
    }
    s.expect_silence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn qos2_inbound_state_survives_a_reconnect() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut sub = Raw::connect(addr, Protocol::V3_1_1, "sub").await;
    sub.subscribe(1, "eo", QoS::ExactlyOnce).await;
    let (mut p, _) = Raw::connect_with(addr, Protocol::V3_1_1, "qos2-pub", persistent).await;
    p.send(&Packet::Publish(publish(
        "eo",
        b"exactly",
        QoS::ExactlyOnce,
        false,
        5,
    )))
    .await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(_))));
    drop(p); // connection lost before PUBREL
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut p, ack) = Raw::connect_with(addr, Protocol::V3_1_1, "qos2-pub", persistent).await;
    assert!(ack.session_present);
    // The client resends the PUBLISH with DUP: the broker must not route it again.
    let mut again = publish("eo", b"exactly", QoS::ExactlyOnce, false, 5);
    again.dup = true;
    p.send(&Packet::Publish(again)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(_))));
    p.send(&Packet::PubRel(PubResponse::success(5))).await;
    assert!(matches!(p.recv().await, Some(Packet::PubComp(_))));
    assert_eq!(&sub.expect_publish().await.payload[..], b"exactly");
    sub.expect_silence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn takeover_closes_the_old_connection_with_0x8e() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let (mut old, _) = Raw::connect_with(addr, Protocol::V5, "twin", persistent).await;
    old.subscribe(1, "tw", QoS::AtLeastOnce).await;
    let (mut new, ack) = Raw::connect_with(addr, Protocol::V5, "twin", persistent).await;
    assert!(
        ack.session_present,
        "the session moved to the new connection"
    );
    let closing = old.until_closed().await;
    assert!(
        matches!(closing.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SessionTakenOver),
        "{closing:?}"
    );
    // The subscription carried over.
    let mut p = Raw::connect(addr, Protocol::V5, "p").await;
    p.publish("tw", b"x", QoS::AtLeastOnce, false, 1).await;
    assert_eq!(&new.expect_publish().await.payload[..], b"x");
    broker.shutdown().await;
}

#[tokio::test]
async fn session_expiry_removes_the_session() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let (mut s, _) = Raw::connect_with(addr, Protocol::V5, "short", |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(1);
    })
    .await;
    s.subscribe(1, "e", QoS::AtLeastOnce).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        broker.shared().sessions.get("default/short").is_some(),
        "kept within expiry"
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(
        broker.shared().sessions.get("default/short").is_none(),
        "gone after expiry"
    );
    let (_, ack) = Raw::connect_with(addr, Protocol::V5, "short", |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(1);
    })
    .await;
    assert!(!ack.session_present);
    assert_eq!(broker.shared().router.subscription_count(), 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn clean_start_discards_the_old_session() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let (mut s, _) = Raw::connect_with(addr, Protocol::V3_1_1, "cs", persistent).await;
    s.subscribe(1, "cs", QoS::AtLeastOnce).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut s, ack) =
        Raw::connect_with(addr, Protocol::V3_1_1, "cs", |c| c.clean_start = true).await;
    assert!(!ack.session_present);
    let mut p = Raw::connect(addr, Protocol::V3_1_1, "p").await;
    p.publish("cs", b"x", QoS::AtLeastOnce, false, 1).await;
    s.expect_silence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn empty_client_ids() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    // 5.0: the broker assigns one.
    let (_, ack) = Raw::connect_with(addr, Protocol::V5, "", |_| {}).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(assigned.starts_with("tidemq-"));
    // 3.1.1 with clean session: accepted.
    let (_, ack) = Raw::connect_with(addr, Protocol::V3_1_1, "", |_| {}).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    // 3.1.1 keeping its session: identifier rejected (return code 2).
    let (mut raw, ack) =
        Raw::connect_with(addr, Protocol::V3_1_1, "", |c| c.clean_start = false).await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    assert!(raw.until_closed().await.is_empty());
    broker.shutdown().await;
}
