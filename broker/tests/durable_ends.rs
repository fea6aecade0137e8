//! What a connection read before it ended reaches persistent subscribers,
//! a persistent subscriber over its memory limit loses nothing that was
//! acknowledged to the publisher, a backlogged store holds input back, and
//! a CONNECT the store cannot record leaves nothing behind: the real
//! `tidemq` binary (or a broker with a real store), through real sockets.

mod common;

use anyhow::{Context, bail, ensure};
use bytes::BytesMut;
use common::process::NodeProcess;
use common::{Raw, disconnect, persistent};
use tidemq_broker::{Broker, Config};
use tidemq_broker::{DurableConfig, DurableStore, SessionCatalog};
use tidemq_proto::mqtt::{self, Disconnect, Packet, Protocol, QoS, ReasonCode};
use tidemq_storage_engine::SyncPolicy;

/// CONNECT, one QoS 1 PUBLISH per payload, DISCONNECT: one TCP write, as a
/// short-lived publisher sends them.
fn one_write(protocol: Protocol, client_id: &str, topic: &str, payloads: &[&[u8]]) -> BytesMut {
    let mut packets = vec![Packet::Connect(common::connect_packet(protocol, client_id))];
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogged_store_holds_input_back_and_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Any record makes the writers' queue full until it is taken: every
    // publisher waits for the writers all the time.
    let node = NodeProcess::start(dir.path(), &[("TIDEMQ_STORAGE__MAX_BACKLOG_BYTES", "1")])?;
    let (mut sub, _) = persistent(node.mqtt, "backlogged").await;
    sub.subscribe(1, "bl/#", QoS::AtLeastOnce).await;
    let mut publishers = Vec::new();
    for p in 0..4u16 {
        let addr = node.mqtt;
        publishers.push(tokio::spawn(async move {
            let mut publisher = Raw::connect(addr, Protocol::V3_1_1, &format!("bl-pub-{p}")).await;
            // One write of 50 publishes: the broker reads them as the store allows.
            let mut bytes = BytesMut::new();
            for i in 0..50u16 {
                let payload = [p.to_be_bytes(), i.to_be_bytes()].concat();
                let packet = Packet::Publish(common::publish(
                    "bl/x",
                    &payload,
                    QoS::AtLeastOnce,
                    false,
                    i + 1,
                ));
                mqtt::encode(&packet, Protocol::V3_1_1, &mut bytes).expect("encodable");
            }
            publisher.send_bytes(&bytes).await;
            for _ in 0..50 {
                match publisher.recv().await {
                    Some(Packet::PubAck(_)) => {}
                    other => panic!("expected PUBACK, got {other:?}"),
                }
            }
        }));
    }
    for publisher in publishers {
        publisher.await?;
    }
    let mut next = [0u16; 4];
    for _ in 0..200 {
        let got = sub.expect_publish().await;
        let p = usize::from(u16::from_be_bytes([got.payload[0], got.payload[1]]));
        let i = u16::from_be_bytes([got.payload[2], got.payload[3]]);
        ensure!(i == next[p], "publisher {p}: got {i}, expected {}", next[p]);
        next[p] += 1;
    }
    sub.expect_silence().await;
    Ok(())
}

#[tokio::test]
async fn a_connect_the_store_cannot_record_leaves_no_session_behind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let registry = prometheus::Registry::new();
    let durable = DurableConfig {
        dir: dir.path().to_path_buf(),
        partitions: 1,
        io_threads: 1,
        pin_cores: false,
        sync: SyncPolicy::Always,
        segment_bytes: 1 << 20,
        preallocate_bytes: 0,
        max_backlog_bytes: 1 << 20,
        min_free_bytes: 0,
        max_message_age: None,
    };
    let store = DurableStore::open(&durable, &registry).await?;
    let mut config = Config::default();
    config.listener.bind = "127.0.0.1:0".parse()?;
    let broker =
        Broker::start_with_store(config, &registry, Some(store), SessionCatalog::Local).await?;
    let shared = broker.shared();
    shared.durable.as_ref().context("a store")?.close().await?;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let (_raw, ack) = Raw::connect_with(broker.local_addr(), protocol, "unlucky", |c| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(3600);
        })
        .await;
        ensure!(
            ack.reason == ReasonCode::ServerUnavailable,
            "{protocol:?}: {ack:?}"
        );
        ensure!(
            shared.sessions.is_empty(),
            "{protocol:?}: a session was left registered"
        );
    }
    Ok(())
}
