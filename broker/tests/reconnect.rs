//! Reconnects, takeovers and connection ends, through real sockets: what
//! devices on flaky networks do, and what lost messages before.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::Raw;
use tidemq_broker::Config;
use tidemq_proto::mqtt::{self, Disconnect, LastWill, Packet, Protocol, QoS, ReasonCode};

fn encode(packets: &[Packet], protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    for packet in packets {
        mqtt::encode(packet, protocol, &mut out).expect("encodable");
    }
    out
}

#[tokio::test]
async fn a_clean_reconnect_while_the_old_connection_is_open_keeps_receiving() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut publisher = Raw::connect(addr, Protocol::V3_1_1, "pub").await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        for round in 0..10u16 {
            // The first connection is half-open from the device's side: it
            // is still there when the device connects again.
            let _old = Raw::connect(addr, protocol, "x").await;
            let mut new = Raw::connect(addr, protocol, "x").await;
            new.subscribe(1, "t/x", QoS::AtMostOnce).await;
            publisher
                .publish("t/x", &round.to_be_bytes(), QoS::AtMostOnce, false, 0)
                .await;
            let got = new.expect_publish().await;
            assert_eq!(
                &got.payload[..],
                round.to_be_bytes(),
                "{protocol:?} round {round}"
            );
        }
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_quick_disconnect_and_reconnect_keeps_receiving() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut publisher = Raw::connect(addr, Protocol::V3_1_1, "pub").await;
    for round in 0..50u16 {
        let mut old = Raw::connect(addr, Protocol::V3_1_1, "x").await;
        old.send(&Packet::Disconnect(Disconnect::default())).await;
        // No waiting for the close: the device reconnects at once.
        let mut new = Raw::connect(addr, Protocol::V3_1_1, "x").await;
        new.subscribe(1, "t/x", QoS::AtLeastOnce).await;
        publisher
            .publish("t/x", &round.to_be_bytes(), QoS::AtLeastOnce, false, 1)
            .await;
        let got = new.expect_publish().await;
        assert_eq!(&got.payload[..], round.to_be_bytes(), "round {round}");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_third_connection_always_kicks_the_live_one() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut first = Raw::connect(addr, Protocol::V5, "x").await;
    let mut second = Raw::connect(addr, Protocol::V5, "x").await;
    let _third = Raw::connect(addr, Protocol::V5, "x").await;
    for old in [&mut first, &mut second] {
        let closing = old.until_closed().await;
        assert!(
            matches!(
                closing.last(),
                Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SessionTakenOver
            ),
            "{closing:?}"
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn publish_and_disconnect_in_one_write_reach_the_subscriber() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut subscriber = Raw::connect(addr, Protocol::V3_1_1, "sub").await;
    subscriber.subscribe(1, "t/once", QoS::AtLeastOnce).await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut raw = Raw::tcp(addr, protocol).await;
        let bytes = encode(
            &[
                Packet::Connect(common::connect_packet(protocol, "short-lived")),
                Packet::Publish(common::publish("t/once", b"hi", QoS::AtLeastOnce, false, 1)),
                Packet::Disconnect(Disconnect::default()),
            ],
            protocol,
        );
        raw.send_bytes(&bytes).await;
        assert_eq!(&subscriber.expect_publish().await.payload[..], b"hi");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn keep_alive_counts_whole_packets_not_trickled_bytes() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let (mut raw, _) = Raw::connect_with(addr, Protocol::V5, "slow", |c| c.keep_alive = 1).await;
    // The start of a PUBLISH, one byte every 200 ms: never a whole packet.
    let started = std::time::Instant::now();
    let partial = [
        0x30u8, 0x7f, 0x00, 0x03, b'a', b'b', b'c', 1, 2, 3, 4, 5, 6, 7, 8,
    ];
    let mut closed = None;
    for byte in partial {
        raw.send_bytes(&[byte]).await;
        if let Some(packet) = raw.recv_within(Duration::from_millis(200)).await {
            closed = Some(packet);
            break;
        }
    }
    let packet = match closed {
        Some(packet) => packet,
        None => raw.recv().await.expect("a DISCONNECT before the close"),
    };
    assert!(
        matches!(&packet, Packet::Disconnect(d) if d.reason == ReasonCode::KeepAliveTimeout),
        "{packet:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn max_keep_alive_caps_5_0_clients_and_refuses_3_1_1() {
    let mut config = Config::default();
    config.mqtt.max_keep_alive = 60;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    for asked in [0u16, 61, 3600] {
        let (_c, ack) = Raw::connect_with(addr, Protocol::V5, "k5", |c| c.keep_alive = asked).await;
        assert_eq!(ack.reason, ReasonCode::Success);
        assert_eq!(ack.properties.server_keep_alive, Some(60), "asked {asked}");
    }
    let (_c, ack) = Raw::connect_with(addr, Protocol::V5, "k5", |c| c.keep_alive = 30).await;
    assert_eq!(
        ack.properties.server_keep_alive, None,
        "30 is within the cap"
    );
    // 3.1.1 cannot be told: more than the cap is refused, 0 accepted.
    for asked in [61u16, 3600] {
        let (_c, ack) =
            Raw::connect_with(addr, Protocol::V3_1_1, "k3", |c| c.keep_alive = asked).await;
        assert_eq!(
            ack.reason,
            ReasonCode::ClientIdentifierNotValid,
            "asked {asked}"
        );
    }
    for asked in [0u16, 60] {
        let (_c, ack) =
            Raw::connect_with(addr, Protocol::V3_1_1, "k3", |c| c.keep_alive = asked).await;
        assert_eq!(ack.reason, ReasonCode::Success, "asked {asked}");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_retained_will_is_refused_when_retain_is_unavailable() {
    let mut config = Config::default();
    config.mqtt.retain_available = false;
    let broker = common::start(config).await;
    let (_c, ack) = Raw::connect_with(broker.local_addr(), Protocol::V5, "w", |c| {
        c.will = Some(LastWill {
            topic: "wills/w".into(),
            payload: bytes::Bytes::from_static(b"bye"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
        });
    })
    .await;
    assert_eq!(ack.reason, ReasonCode::RetainNotSupported);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_others_go_on() {
    let mut config = Config::default();
    config.mqtt.write_timeout_secs = 1;
    config.session.max_queued_bytes = 64 * 1024 * 1024;
    config.session.max_queued_messages = 100_000;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    // Subscribes, then never reads a byte again.
    let mut stuck = Raw::connect(addr, Protocol::V5, "stuck").await;
    stuck.subscribe(1, "flood", QoS::AtMostOnce).await;
    let mut watcher = Raw::connect(addr, Protocol::V5, "watcher").await;
    watcher.subscribe(1, "other", QoS::AtMostOnce).await;
    let mut publisher = Raw::connect(addr, Protocol::V5, "pub").await;
    let payload = vec![7u8; 64 * 1024];
    for _ in 0..400 {
        publisher
            .publish("flood", &payload, QoS::AtMostOnce, false, 0)
            .await;
    }
    // The broker is still serving everyone else meanwhile.
    publisher
        .publish("other", b"ok", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(&watcher.expect_publish().await.payload[..], b"ok");
    // A takeover is honoured although the old connection's write is stuck.
    let started = std::time::Instant::now();
    let _again = Raw::connect(addr, Protocol::V5, "stuck").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "takeover took {:?}",
        started.elapsed()
    );
    drop(stuck);
    // And a stuck client on its own is dropped after the write timeout.
    let mut stuck2 = Raw::connect(addr, Protocol::V3_1_1, "stuck2").await;
    stuck2.subscribe(1, "flood", QoS::AtMostOnce).await;
    for _ in 0..400 {
        publisher
            .publish("flood", &payload, QoS::AtMostOnce, false, 0)
            .await;
    }
    let metrics = broker.shared().metrics.disconnects.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metrics.with_label_values(&["write_timeout"]).get() == 0 {
        assert!(std::time::Instant::now() < deadline, "never disconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn reconnects_cancel_the_offline_timers() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let cycle = |delay| async move {
        let (c, _) = Raw::connect_with(addr, Protocol::V5, "timers", |c| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(3600);
            c.will = Some(LastWill {
                topic: "wills/timers".into(),
                payload: bytes::Bytes::from_static(b"bye"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: tidemq_proto::mqtt::WillProperties {
                    will_delay_interval: delay,
                    ..Default::default()
                },
            });
        })
        .await;
        // Dropped, not disconnected: the will waits for its delay.
        drop(c);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    cycle(Some(3600)).await;
    let before = alive();
    for _ in 0..50 {
        cycle(Some(3600)).await;
    }
    let after = alive();
    assert!(
        after <= before + 5,
        "{before} tasks before, {after} after 50 reconnects"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_dropped_oversized_packet_does_not_use_up_a_topic_alias() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::connect_with(addr, Protocol::V5, "alias", |c| {
        c.properties.topic_alias_maximum = Some(1);
        c.properties.maximum_packet_size = Some(200);
    })
    .await;
    sub.subscribe(1, "aliased/topic", QoS::AtMostOnce).await;
    let mut publisher = Raw::connect(addr, Protocol::V5, "pub").await;
    // Too large for the subscriber: dropped, so it never learns an alias.
    publisher
        .publish("aliased/topic", &[0u8; 500], QoS::AtMostOnce, false, 0)
        .await;
    publisher
        .publish("aliased/topic", b"small", QoS::AtMostOnce, false, 0)
        .await;
    let got = sub.expect_publish().await;
    assert_eq!(
        got.topic, "aliased/topic",
        "the first packet sent names its topic"
    );
    assert_eq!(got.properties.topic_alias, Some(1));
    assert_eq!(&got.payload[..], b"small");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_disconnect_reaches_a_client_that_keeps_sending() {
    let mut config = Config::default();
    config.mqtt.receive_maximum = 2;
    let broker = common::start(config).await;
    let mut raw = Raw::connect(broker.local_addr(), Protocol::V5, "flooder").await;
    // Three unreleased QoS 2 messages against a receive maximum of 2, sent
    // without reading, as the Paho interop suite's flow-control test does.
    let publishes: Vec<Packet> = (1..=3u16)
        .map(|id| Packet::Publish(common::publish("t/q2", b"x", QoS::ExactlyOnce, false, id)))
        .collect();
    raw.send_bytes(&encode(&publishes, Protocol::V5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The client goes on sending after the broker closed: without a
    // lingering close those packets make the kernel reset the connection,
    // so the client's next send fails (the Paho client dies of the broken
    // pipe) before it has read the DISCONNECT.
    for id in 1..=2u16 {
        let pubrel = Packet::PubRel(tidemq_proto::mqtt::PubResponse::success(id));
        raw.try_send_bytes(&encode(&[pubrel], Protocol::V5))
            .await
            .expect("the broker still takes bytes while it closes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = raw.until_closed().await;
    assert!(
        matches!(
            seen.last(),
            Some(Packet::Disconnect(d)) if d.reason == ReasonCode::ReceiveMaximumExceeded
        ),
        "{seen:?}"
    );
    broker.shutdown().await;
}
