//! Will messages: published on abnormal disconnects, not on normal ones,
//! after their delay, and never when the session resumes in time.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Raw;
use tidemq_proto::mqtt::{
    Connect, Disconnect, LastWill, Packet, Protocol, QoS, ReasonCode, WillProperties,
};

fn with_will(delay: Option<u32>) -> impl FnOnce(&mut Connect) {
    move |c| {
        c.will = Some(LastWill {
            topic: "wills/dev".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties {
                will_delay_interval: delay,
                ..Default::default()
            },
        });
        if delay.is_some() {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(60);
        }
    }
}

#[tokio::test]
async fn will_on_abnormal_close_not_on_disconnect() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut watcher = Raw::connect(addr, Protocol::V3_1_1, "watcher").await;
    watcher.subscribe(1, "wills/#", QoS::AtLeastOnce).await;

    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        // Normal DISCONNECT: no will.
        let (mut dev, _) = Raw::connect_with(addr, protocol, "dev", with_will(None)).await;
        dev.send(&Packet::Disconnect(Disconnect::default())).await;
        assert!(dev.until_closed().await.is_empty());
        watcher.expect_silence().await;
        // Socket dropped without DISCONNECT: the will goes out.
        let (dev, _) = Raw::connect_with(addr, protocol, "dev", with_will(None)).await;
        drop(dev);
        let will = watcher.expect_publish().await;
        assert_eq!(
            (will.topic.as_str(), &will.payload[..]),
            ("wills/dev", &b"gone"[..])
        );
    }
    // 5.0 DISCONNECT 0x04 asks for the will.
    let (mut dev, _) = Raw::connect_with(addr, Protocol::V5, "dev", with_will(None)).await;
    dev.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::DisconnectWithWillMessage,
        ..Default::default()
    }))
    .await;
    assert_eq!(watcher.expect_publish().await.topic, "wills/dev");
    broker.shutdown().await;
}

#[tokio::test]
async fn will_delay_waits_and_is_cancelled_by_a_reconnect() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut watcher = Raw::connect(addr, Protocol::V5, "watcher").await;
    watcher.subscribe(1, "wills/#", QoS::AtLeastOnce).await;

    // Delay 1 s, reconnect after 300 ms: never published.
    let (dev, _) = Raw::connect_with(addr, Protocol::V5, "dev", with_will(Some(1))).await;
    drop(dev);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_dev, ack) = Raw::connect_with(addr, Protocol::V5, "dev", with_will(Some(1))).await;
    assert!(ack.session_present);
    assert!(
        watcher
            .recv_within(Duration::from_millis(1_300))
            .await
            .is_none()
    );
    drop(_dev);
    // No reconnect: published after the delay, not before.
    let started = std::time::Instant::now();
    assert!(
        watcher
            .recv_within(Duration::from_millis(600))
            .await
            .is_none()
    );
    let will = watcher.expect_publish().await;
    assert_eq!(will.topic, "wills/dev");
    assert!(started.elapsed() >= Duration::from_millis(900));
    broker.shutdown().await;
}

#[tokio::test]
async fn takeover_publishes_the_will_of_the_old_connection() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let mut watcher = Raw::connect(addr, Protocol::V3_1_1, "watcher").await;
    watcher.subscribe(1, "wills/#", QoS::AtMostOnce).await;
    let (_old, _) = Raw::connect_with(addr, Protocol::V3_1_1, "dev", with_will(None)).await;
    let _new = Raw::connect(addr, Protocol::V3_1_1, "dev").await;
    assert_eq!(watcher.expect_publish().await.topic, "wills/dev");
    broker.shutdown().await;
}
