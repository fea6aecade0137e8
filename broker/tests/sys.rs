//! `$SYS/broker/...`: values checked against known activity, retained for
//! late subscribers, closed to publishers, readable without an ACL on
//! loopback listeners only.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Raw, WAIT};
use tidemq_broker::{Config, ListenerConfig};
use tidemq_proto::mqtt::{Packet, Protocol, QoS, ReasonCode};

fn sys_config() -> Config {
    let mut config = Config::default();
    config.mqtt.sys_interval = 1;
    config
}

/// Reads `$SYS` publishes until `done` holds for the values seen so far.
async fn until_values(
    raw: &mut Raw,
    done: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let mut values = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&values) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "$SYS values never matched: {values:?}"
        );
        if let Some(Packet::Publish(p)) = raw.recv_within(Duration::from_secs(3)).await {
            let value = String::from_utf8_lossy(&p.payload).into_owned();
            values.insert(p.topic, value);
        }
    }
    values
}

fn number(values: &HashMap<String, String>, topic: &str) -> Option<f64> {
    values.get(&format!("$SYS/broker/{topic}"))?.parse().ok()
}

#[tokio::test]
async fn sys_topics_report_clients_messages_and_subscriptions() {
    let broker = common::start(sys_config()).await;
    let addr = broker.local_addr();
    let mut watcher = Raw::connect(addr, Protocol::V5, "watcher").await;
    let ack = watcher.subscribe(1, "$SYS/broker/#", QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::Success]);
    let mut publisher = Raw::connect(addr, Protocol::V3_1_1, "publisher").await;
    let mut subscriber = Raw::connect(addr, Protocol::V3_1_1, "subscriber").await;
    subscriber.subscribe(1, "data/#", QoS::AtMostOnce).await;
    for i in 0..5u8 {
        publisher
            .publish("data/x", &[i], QoS::AtMostOnce, false, 0)
            .await;
    }
    for _ in 0..5 {
        subscriber.expect_publish().await;
    }
    let values = until_values(&mut watcher, |v| {
        number(v, "clients/connected") == Some(3.0)
            && number(v, "publish/messages/received").is_some_and(|n| n >= 5.0)
            && number(v, "publish/messages/sent").is_some_and(|n| n >= 5.0)
            && number(v, "subscriptions/count") == Some(2.0)
            && number(v, "load/publish/received/1min").is_some_and(|n| n > 0.0)
    })
    .await;
    assert!(
        values["$SYS/broker/version"].starts_with("tidemq "),
        "{values:?}"
    );
    assert!(values["$SYS/broker/uptime"].ends_with(" seconds"));
    assert!(number(&values, "clients/maximum").is_some_and(|n| n >= 3.0));
    assert!(number(&values, "bytes/received").is_some_and(|n| n > 0.0));
    assert!(number(&values, "messages/received").is_some_and(|n| n >= 5.0));

    // A client that leaves is counted out.
    common::disconnect(publisher).await;
    until_values(&mut watcher, |v| {
        number(v, "clients/connected") == Some(2.0)
    })
    .await;

    // `#` does not match `$SYS` topics (MQTT 4.7.2).
    subscriber.expect_silence().await;
    let mut everything = Raw::connect(addr, Protocol::V5, "everything").await;
    everything.subscribe(1, "#", QoS::AtMostOnce).await;
    assert!(
        everything
            .recv_within(Duration::from_millis(1500))
            .await
            .is_none(),
        "# must not bring $SYS messages"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn sys_values_are_retained_for_late_subscribers() {
    let broker = common::start(sys_config()).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut late = Raw::connect(broker.local_addr(), Protocol::V5, "late").await;
    late.subscribe(1, "$SYS/broker/version", QoS::AtMostOnce)
        .await;
    let retained = late.expect_publish().await;
    assert!(
        retained.retain,
        "a subscriber gets the retained value at once"
    );
    assert!(retained.payload.starts_with(b"tidemq "));
    broker.shutdown().await;
}

#[tokio::test]
async fn clients_cannot_publish_to_sys() {
    let broker = common::start(sys_config()).await;
    let addr = broker.local_addr();
    let mut watcher = Raw::connect(addr, Protocol::V5, "watcher").await;
    watcher
        .subscribe(1, "$SYS/broker/fake", QoS::AtMostOnce)
        .await;
    let mut forger = Raw::connect(addr, Protocol::V5, "forger").await;
    let ack = forger
        .publish("$SYS/broker/fake", b"forged", QoS::AtLeastOnce, true, 7)
        .await
        .expect("PUBACK");
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    assert!(
        watcher
            .recv_within(Duration::from_millis(500))
            .await
            .is_none(),
        "a forged $SYS message must not be routed"
    );
    broker.shutdown().await;
}

/// A listener on a non-loopback address: without an ACL `$SYS` is refused
/// there; with one, the ACL decides.
#[tokio::test]
async fn sys_on_a_public_listener_needs_an_acl_rule() {
    let public = ListenerConfig {
        bind: "0.0.0.0:0".parse().expect("address"),
        allow_anonymous_on_public_address: true,
        ..ListenerConfig::default()
    };
    let mut config = sys_config();
    config.listeners.push(public.clone());
    let broker = common::start(config).await;
    let port = broker.listener_addrs()[1].1.port();
    // Reached through the loopback interface: no test leaves 127.0.0.1.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut raw = Raw::connect(addr, Protocol::V5, "outsider").await;
    let ack = raw.subscribe(1, "$SYS/#", QoS::AtMostOnce).await;
    assert!(ack.reasons[0].is_error(), "{ack:?}");
    let ack = raw.subscribe(2, "$share/g/$SYS/#", QoS::AtMostOnce).await;
    assert!(ack.reasons[0].is_error(), "{ack:?}");
    broker.shutdown().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "allow subscribe * $SYS/#\n").expect("acl");
    let mut config = sys_config();
    config.auth.acl_file = Some(acl);
    config.listeners.push(public);
    let broker = common::start(config).await;
    let port = broker.listener_addrs()[1].1.port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut raw = Raw::connect(addr, Protocol::V5, "operator").await;
    let ack = raw
        .subscribe(1, "$SYS/broker/uptime", QoS::AtMostOnce)
        .await;
    assert_eq!(ack.reasons, vec![ReasonCode::Success]);
    let got = tokio::time::timeout(WAIT, raw.expect_publish())
        .await
        .expect("uptime");
    assert_eq!(got.topic, "$SYS/broker/uptime");
    broker.shutdown().await;
}

/// A persistent session that subscribed to `$SYS` on a loopback listener
/// loses that subscription when it resumes on a public one (no ACL).
#[tokio::test]
async fn a_sys_subscription_does_not_follow_its_session_to_a_public_listener() {
    let mut config = sys_config();
    config.listeners.push(ListenerConfig {
        bind: "0.0.0.0:0".parse().expect("address"),
        allow_anonymous_on_public_address: true,
        ..ListenerConfig::default()
    });
    let broker = common::start(config).await;
    let (mut raw, _) = common::persistent(broker.local_addr(), "wanderer").await;
    let ack = raw
        .subscribe(1, "$SYS/broker/uptime", QoS::AtMostOnce)
        .await;
    assert_eq!(ack.reasons, vec![ReasonCode::Success]);
    common::disconnect(raw).await;
    let port = broker.listener_addrs()[1].1.port();
    let public = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (mut raw, present) = common::persistent(public, "wanderer").await;
    assert!(present, "the session is resumed");
    assert!(
        raw.recv_within(Duration::from_millis(2500)).await.is_none(),
        "$SYS must not reach a client of a public listener without an ACL"
    );
    broker.shutdown().await;
}
