//! Publish/subscribe semantics over raw packets: QoS flows, wildcards and
//! `$` topics, retained messages, shared subscriptions, no-local,
//! subscription identifiers, topic aliases, message expiry; a burst of
//! packets served over several turns.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{Raw, publish};
use tidemq_broker::{Broker, Config};
use tidemq_proto::mqtt::{
    Packet, Protocol, PubResponse, QoS, ReasonCode, RetainHandling, SubscriptionOptions,
};

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut all = Raw::connect(addr, Protocol::V3_1_1, "all").await;
    all.subscribe(1, "#", QoS::AtMostOnce).await;
    let mut sys = Raw::connect(addr, Protocol::V3_1_1, "sys").await;
    sys.subscribe(1, "$app/#", QoS::AtMostOnce).await;
    let mut plus = Raw::connect(addr, Protocol::V3_1_1, "plus").await;
    plus.subscribe(1, "+/b", QoS::AtMostOnce).await;

    let mut p = Raw::connect(addr, Protocol::V3_1_1, "pub").await;
    p.publish("$app/uptime", b"1", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(sys.expect_publish().await.topic, "$app/uptime");
    all.expect_silence().await; // `#` does not match `$` topics
    p.publish("a/b", b"2", QoS::AtMostOnce, false, 0).await;
    assert_eq!(all.expect_publish().await.topic, "a/b");
    assert_eq!(plus.expect_publish().await.topic, "a/b");
    p.publish("a/b/c", b"3", QoS::AtMostOnce, false, 0).await;
    assert_eq!(all.expect_publish().await.topic, "a/b/c");
    plus.expect_silence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn qos2_inbound_is_exactly_once_on_resend() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut sub = Raw::connect(addr, Protocol::V5, "sub").await;
    sub.subscribe(1, "q2", QoS::ExactlyOnce).await;
    let mut p = Raw::connect(addr, Protocol::V5, "pub").await;
    // Send the same QoS 2 PUBLISH twice (the second with DUP) before PUBREL.
    let mut first = publish("q2", b"once", QoS::ExactlyOnce, false, 7);
    p.send(&Packet::Publish(first.clone())).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 7));
    first.dup = true;
    p.send(&Packet::Publish(first)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 7));
    p.send(&Packet::PubRel(PubResponse::success(7))).await;
    assert!(
        matches!(p.recv().await, Some(Packet::PubComp(c)) if c.packet_id == 7 && c.reason == ReasonCode::Success)
    );
    let got = sub.expect_publish().await;
    assert_eq!(&got.payload[..], b"once");
    sub.expect_silence().await;
    // A PUBREL for an unknown id is answered, with 0x92 in 5.0.
    p.send(&Packet::PubRel(PubResponse::success(99))).await;
    assert!(
        matches!(p.recv().await, Some(Packet::PubComp(c)) if c.reason == ReasonCode::PacketIdentifierNotFound)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_set_clear_and_retain_handling() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut p = Raw::connect(addr, Protocol::V5, "pub").await;
    p.publish("r/1", b"one", QoS::AtLeastOnce, true, 1).await;
    p.publish("r/2", b"two", QoS::AtMostOnce, true, 0).await;

    let mut s = Raw::connect(addr, Protocol::V5, "s").await;
    s.subscribe(1, "r/+", QoS::AtLeastOnce).await;
    let mut topics = [s.expect_publish().await, s.expect_publish().await];
    topics.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!((topics[0].topic.as_str(), topics[0].retain), ("r/1", true));
    assert_eq!(
        (topics[1].topic.as_str(), topics[1].qos),
        ("r/2", QoS::AtMostOnce)
    );

    // Handling 1: only when the subscription is new.
    let options = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        retain_handling: RetainHandling::SendIfNew,
        ..Default::default()
    };
    let mut h1 = Raw::connect(addr, Protocol::V5, "h1").await;
    h1.subscribe_with(1, "r/1", options, None).await;
    assert_eq!(h1.expect_publish().await.topic, "r/1");
    h1.subscribe_with(2, "r/1", options, None).await;
    h1.expect_silence().await;
    // Handling 2: never.
    let mut h2 = Raw::connect(addr, Protocol::V5, "h2").await;
    let never = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..options
    };
    h2.subscribe_with(1, "r/#", never, None).await;
    h2.expect_silence().await;

    // An empty retained payload clears the topic.
    p.publish("r/1", b"", QoS::AtMostOnce, true, 0).await;
    let cleared = h2.expect_publish().await;
    assert!(cleared.payload.is_empty());
    let mut late = Raw::connect(addr, Protocol::V5, "late").await;
    late.subscribe(1, "r/#", QoS::AtMostOnce).await;
    assert_eq!(late.expect_publish().await.topic, "r/2");
    late.expect_silence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn retain_as_published_and_no_local() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut c = Raw::connect(addr, Protocol::V5, "self").await;
    let keep = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        retain_as_published: true,
        no_local: true,
        ..Default::default()
    };
    c.subscribe_with(1, "t/#", keep, None).await;
    let mut other = Raw::connect(addr, Protocol::V5, "other").await;
    other.subscribe(1, "t/#", QoS::AtMostOnce).await;
    c.publish("t/x", b"mine", QoS::AtMostOnce, true, 0).await;
    // The publisher does not get its own message (no-local)...
    c.expect_silence().await;
    // ...and a plain subscriber sees RETAIN cleared on live delivery.
    let live = other.expect_publish().await;
    assert!(!live.retain);
    other
        .publish("t/y", b"theirs", QoS::AtMostOnce, true, 0)
        .await;
    assert!(c.expect_publish().await.retain, "retain as published");
    broker.shutdown().await;
}

#[tokio::test]
async fn shared_subscriptions_round_robin_over_connected_members() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut a = Raw::connect(addr, Protocol::V5, "a").await;
    let mut b = Raw::connect(addr, Protocol::V5, "b").await;
    assert_eq!(
        a.subscribe(1, "$share/g/jobs/+", QoS::AtLeastOnce)
            .await
            .reasons,
        vec![ReasonCode::GrantedQoS1]
    );
    b.subscribe(1, "$share/g/jobs/+", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(addr, Protocol::V5, "p").await;
    for i in 0..10u16 {
        p.publish(
            "jobs/x",
            format!("{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            i + 1,
        )
        .await;
    }
    let mut got_a = 0;
    let mut got_b = 0;
    for _ in 0..10 {
        tokio::select! {
            pa = a.recv() => { if let Some(Packet::Publish(pp)) = pa { a.ack(&pp).await; got_a += 1; } }
            pb = b.recv() => { if let Some(Packet::Publish(pp)) = pb { b.ack(&pp).await; got_b += 1; } }
        }
    }
    assert_eq!(got_a + got_b, 10);
    assert_eq!((got_a, got_b), (5, 5), "round robin");
    // With b gone, everything goes to a.
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..4u16 {
        p.publish("jobs/y", b"z", QoS::AtLeastOnce, false, 100 + i)
            .await;
    }
    for _ in 0..4 {
        a.expect_publish().await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn subscription_identifiers_are_forwarded() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut s = Raw::connect(addr, Protocol::V5, "s").await;
    let options = SubscriptionOptions::default();
    s.subscribe_with(1, "x/+", options, Some(11)).await;
    s.subscribe_with(2, "x/#", options, Some(22)).await;
    let mut p = Raw::connect(addr, Protocol::V5, "p").await;
    p.publish("x/1", b"v", QoS::AtMostOnce, false, 0).await;
    let got = s.expect_publish().await;
    let mut ids = got.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![11, 22], "one delivery carrying both identifiers");
    s.expect_silence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn topic_aliases_in_and_out() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let (mut s, _) = Raw::connect_with(addr, Protocol::V5, "s", |c| {
        c.properties.topic_alias_maximum = Some(4);
    })
    .await;
    s.subscribe(1, "alias/#", QoS::AtMostOnce).await;
    let mut p = Raw::connect(addr, Protocol::V5, "p").await;
    // Inbound: set alias 3 with the topic, then use it with an empty topic.
    let mut first = publish("alias/long/topic", b"1", QoS::AtMostOnce, false, 0);
    first.properties.topic_alias = Some(3);
    p.send(&Packet::Publish(first)).await;
    let mut second = publish("", b"2", QoS::AtMostOnce, false, 0);
    second.properties.topic_alias = Some(3);
    p.send(&Packet::Publish(second)).await;
    // Outbound: the broker assigns an alias, then sends the topic empty.
    let a = s.expect_publish().await;
    assert_eq!(a.topic, "alias/long/topic");
    let alias = a.properties.topic_alias.expect("broker assigned an alias");
    let b = s.expect_publish().await;
    assert_eq!(
        (b.topic.as_str(), b.properties.topic_alias),
        ("", Some(alias))
    );
    assert_eq!(&b.payload[..], b"2");
    // An alias above the broker's maximum is a protocol error: 0x94.
    let mut bad = publish("alias/x", b"3", QoS::AtMostOnce, false, 0);
    bad.properties.topic_alias = Some(60_000);
    p.send(&Packet::Publish(bad)).await;
    let closing = p.until_closed().await;
    assert!(
        matches!(closing.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::TopicAliasInvalid),
        "{closing:?}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn expired_messages_are_dropped_and_remaining_interval_forwarded() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let (mut s, _) = Raw::connect_with(addr, Protocol::V5, "s", |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(60);
    })
    .await;
    s.subscribe(1, "exp/#", QoS::AtLeastOnce).await;
    s.send(&Packet::Disconnect(Default::default())).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut p = Raw::connect(addr, Protocol::V5, "p").await;
    let mut short = publish("exp/short", b"gone", QoS::AtLeastOnce, false, 1);
    short.properties.message_expiry_interval = Some(1);
    p.send(&Packet::Publish(short)).await;
    p.recv().await;
    let mut long = publish("exp/long", b"kept", QoS::AtLeastOnce, false, 2);
    long.properties.message_expiry_interval = Some(100);
    p.send(&Packet::Publish(long)).await;
    p.recv().await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (mut s, ack) = Raw::connect_with(addr, Protocol::V5, "s", |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(60);
    })
    .await;
    assert!(ack.session_present);
    let got = s.expect_publish().await;
    assert_eq!(got.topic, "exp/long");
    let left = got
        .properties
        .message_expiry_interval
        .expect("remaining interval");
    assert!((98..=100).contains(&left), "{left}");
    s.expect_silence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn request_response_and_user_properties_are_forwarded_untouched() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut s = Raw::connect(addr, Protocol::V5, "responder").await;
    s.subscribe(1, "req/#", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(addr, Protocol::V5, "requester").await;
    let mut request = publish("req/time", b"?", QoS::AtLeastOnce, false, 1);
    request.properties.response_topic = Some("resp/requester".into());
    request.properties.correlation_data = Some(bytes::Bytes::from_static(b"\x00\x01corr"));
    request.properties.content_type = Some("text/plain".into());
    request.properties.payload_format_indicator = Some(1);
    request.properties.user_properties = vec![
        ("a".into(), "1".into()),
        ("a".into(), "2".into()),
        ("b".into(), "x".into()),
    ]
    .into();
    p.send(&Packet::Publish(request.clone())).await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    let got = s.expect_publish().await;
    assert_eq!(
        got.properties.response_topic,
        request.properties.response_topic
    );
    assert_eq!(
        got.properties.correlation_data,
        request.properties.correlation_data
    );
    assert_eq!(got.properties.content_type, request.properties.content_type);
    assert_eq!(got.properties.payload_format_indicator, Some(1));
    assert_eq!(
        got.properties.user_properties, request.properties.user_properties,
        "order and duplicates kept"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn server_keep_alive_overrides_the_client() {
    let mut config = tidemq_broker::Config::default();
    config.mqtt.server_keep_alive = 1;
    let broker = common::start(config).await;
    let (mut raw, ack) = Raw::connect_with(broker.local_addr(), Protocol::V5, "ka", |c| {
        c.keep_alive = 600
    })
    .await;
    assert_eq!(ack.properties.server_keep_alive, Some(1));
    // The broker enforces its own 1 s (×1.5), not the client's 600 s.
    let started = std::time::Instant::now();
    let closing = raw.until_closed().await;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(
        matches!(closing.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::KeepAliveTimeout),
        "{closing:?}"
    );
    broker.shutdown().await;
}

/// `count` QoS 1 PUBLISH packets to `topic` (payloads "1", "2", ...) and a
/// PINGREQ, encoded back to back for one write.
fn burst(topic: &str, count: u16) -> BytesMut {
    let mut bytes = BytesMut::new();
    for id in 1..=count {
        let payload = id.to_string();
        let packet = Packet::Publish(publish(
            topic,
            payload.as_bytes(),
            QoS::AtLeastOnce,
            false,
            id,
        ));
        tidemq_proto::mqtt::encode(&packet, Protocol::V5, &mut bytes).expect("encodes");
    }
    tidemq_proto::mqtt::encode(&Packet::PingReq, Protocol::V5, &mut bytes).expect("encodes");
    bytes
}

/// Reads the answers to [`burst`]: every PUBACK in order, then PINGRESP.
async fn expect_burst_answered(client: &mut Raw, count: u16) {
    for id in 1..=count {
        match client.recv().await {
            Some(Packet::PubAck(ack)) => {
                assert_eq!((ack.packet_id, ack.reason), (id, ReasonCode::Success))
            }
            other => panic!("expected PUBACK {id}, got {other:?}"),
        }
    }
    assert_eq!(client.recv().await, Some(Packet::PingResp));
}

fn counter(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .into_iter()
        .find(|family| family.name() == name)
        .map_or(0.0, |family| {
            family.get_metric()[0].get_counter().get_value()
        })
}

/// Clients whose packets arrive faster than they are served give their
/// worker back after a bounded turn (the rest waits in the read buffer,
/// then in the session's queue), and busy publishers take turns through a
/// single lane: nothing is lost or reordered on the way, the packets held
/// over are handled without any further input, and the lane passes on.
#[tokio::test]
async fn bursts_are_served_over_several_turns_in_order() {
    let registry = prometheus::Registry::new();
    let mut config = Config::default();
    config.listener.bind = "127.0.0.1:0".parse().expect("loopback address");
    config.runtime.busy_lanes = Some(1);
    let broker = Broker::start(config, &registry)
        .await
        .expect("broker starts");
    let addr = broker.local_addr();
    let count = 1000u16;
    let mut subs = Vec::new();
    let mut publishers = Vec::new();
    for i in 0..2 {
        let mut sub = Raw::connect(addr, Protocol::V5, &format!("burst-sub-{i}")).await;
        sub.subscribe(1, &format!("burst/{i}"), QoS::AtLeastOnce)
            .await;
        subs.push(sub);
        publishers.push(Raw::connect(addr, Protocol::V5, &format!("burst-pub-{i}")).await);
    }
    for (i, publisher) in publishers.iter_mut().enumerate() {
        publisher
            .send_bytes(&burst(&format!("burst/{i}"), count))
            .await;
    }
    for publisher in &mut publishers {
        expect_burst_answered(publisher, count).await;
    }
    for sub in &mut subs {
        for id in 1..=count {
            let p = sub.expect_publish().await;
            assert_eq!(&p.payload[..], id.to_string().as_bytes());
        }
    }
    let yielded = counter(&registry, "tidemq_connection_turns_yielded_total");
    assert!(
        yielded >= 2.0,
        "1,000 packets in one write take more than one turn: {yielded}"
    );
    broker.shutdown().await;
}
