//! What a connection read before it ended reaches persistent subscribers,
//! and a persistent subscriber over its memory limit loses nothing that
//! was acknowledged to the publisher: the real `tidemq` binary, with its
//! message store, through real sockets.

mod common;

use anyhow::{bail, ensure};
use bytes::BytesMut;
use common::process::NodeProcess;
use common::{Raw, disconnect, persistent};
use tidemq_proto::mqtt::{self, Connect, ConnectProperties, Disconnect, Packet, Protocol, QoS};

/// CONNECT, one QoS 1 PUBLISH per payload, DISCONNECT: one TCP write, as a
/// short-lived publisher sends them.
fn one_write(protocol: Protocol, client_id: &str, topic: &str, payloads: &[&[u8]]) -> BytesMut {
    let mut packets = vec![Packet::Connect(Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.to_string(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    })];
    for (id, payload) in payloads.iter().enumerate() {
        let id = u16::try_from(id + 1).expect("few payloads");
        packets.push(Packet::Publish(common::publish(
            topic,
            payload,
            QoS::AtLeastOnce,
            false,
            id,
        )));
    }
    packets.push(Packet::Disconnect(Disconnect::default()));
    let mut out = BytesMut::new();
    for packet in &packets {
        mqtt::encode(packet, protocol, &mut out).expect("encodable");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_disconnect_in_one_write_reach_persistent_subscribers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = NodeProcess::start(dir.path(), &[])?;
    let (mut offline, _) = persistent(node.mqtt, "offline-sub").await;
    offline.subscribe(1, "ow/#", QoS::AtLeastOnce).await;
    disconnect(offline).await;
    let (mut online, _) = persistent(node.mqtt, "online-sub").await;
    online.subscribe(1, "ow/#", QoS::AtLeastOnce).await;

    for (round, protocol) in [Protocol::V3_1_1, Protocol::V5].into_iter().enumerate() {
        let first = format!("a{round}");
        let second = format!("b{round}");
        let mut publisher = Raw::tcp(node.mqtt, protocol).await;
        let bytes = one_write(
            protocol,
            "script",
            "ow/x",
            &[first.as_bytes(), second.as_bytes()],
        );
        publisher.send_bytes(&bytes).await;
        for expected in [&first, &second] {
            let got = online.expect_publish().await;
            ensure!(
                got.payload[..] == *expected.as_bytes(),
                "online got {got:?}"
            );
        }
        // The broker closes after the DISCONNECT; nothing was lost meanwhile.
        publisher.until_closed().await;
    }
    let (mut offline, present) = persistent(node.mqtt, "offline-sub").await;
    ensure!(present, "the offline session is still there");
    for expected in ["a0", "b0", "a1", "b1"] {
        let got = offline.expect_publish().await;
        ensure!(
            got.payload[..] == *expected.as_bytes(),
            "offline got {got:?}, expected {expected}"
        );
    }
    offline.expect_silence().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_persistent_subscriber_over_its_byte_limit_keeps_every_message()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = NodeProcess::start(
        dir.path(),
        &[
            ("TIDEMQ_SESSION__MAX_QUEUED_BYTES", "2000"),
            ("TIDEMQ_MQTT__MAX_INFLIGHT", "2"),
        ],
    )?;
    let (mut sub, _) = persistent(node.mqtt, "slow").await;
    sub.subscribe(1, "big/#", QoS::AtLeastOnce).await;
    let mut publisher = Raw::connect(node.mqtt, Protocol::V3_1_1, "pub").await;
    let count = 40u16;
    for i in 0..count {
        let mut payload = vec![0u8; 300];
        payload[..2].copy_from_slice(&i.to_be_bytes());
        let ack = publisher
            .publish("big/x", &payload, QoS::AtLeastOnce, false, i + 1)
            .await;
        ensure!(
            ack.is_some_and(|a| !a.reason.is_error()),
            "publish {i} refused"
        );
    }
    // 40 × 300 bytes is six times what the session may hold in memory: the
    // rest waited on disk, and every acknowledged message arrives, in order.
    for i in 0..count {
        let got = match sub.recv().await {
            Some(Packet::Publish(p)) => p,
            other => bail!("message {i}: expected PUBLISH, got {other:?}"),
        };
        sub.ack(&got).await;
        ensure!(
            got.payload[..2] == i.to_be_bytes(),
            "message {i} out of order: {:?}",
            &got.payload[..2]
        );
    }
    sub.expect_silence().await;
    Ok(())
}
