//! A node whose disk fills up: it refuses what needs the disk with a reason
//! code (never acknowledging what was not written), keeps serving what does
//! not, starts again while full, and takes messages again by itself once
//! space is freed; and a session that never comes back does not keep the
//! space of everything stored after its oldest message. The real `tidemq`
//! binary, on a small loop-mounted ext4 where the disk must fill.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::disk::LoopDisk;
use common::process::NodeProcess;
use common::{Raw, disconnect, persistent};
use tidemq_proto::mqtt::{Packet, Protocol, PubResponse, QoS, ReasonCode};

const PAYLOAD: usize = 256 * 1024;

/// A payload that says which message it is.
fn payload(index: u32) -> Vec<u8> {
    let mut bytes = index.to_be_bytes().to_vec();
    bytes.resize(PAYLOAD, b'x');
    bytes
}

fn index_of(payload: &[u8]) -> anyhow::Result<u32> {
    let head: [u8; 4] = payload.get(..4).context("short payload")?.try_into()?;
    Ok(u32::from_be_bytes(head))
}

/// Publishes `index` at QoS 1 and returns the PUBACK's reason code.
async fn publish(raw: &mut Raw, index: u32) -> anyhow::Result<ReasonCode> {
    let packet_id = u16::try_from(index % 60_000 + 1)?;
    match raw
        .publish(
            "full/data",
            &payload(index),
            QoS::AtLeastOnce,
            false,
            packet_id,
        )
        .await
    {
        Some(PubResponse {
            packet_id: acked,
            reason,
            ..
        }) if acked == packet_id => Ok(reason),
        other => bail!("expected PUBACK {packet_id}, got {other:?}"),
    }
}

/// Starts the node with its data on `disk`: small segments, a 32 MiB
/// floor of free space (room for the meta store's next WAL file, which
/// RocksDB preallocates at about 18 MiB), frequent trims.
fn start(disk: &LoopDisk) -> anyhow::Result<NodeProcess> {
    NodeProcess::start(
        &disk.path().join("data"),
        &[
            ("TIDEMQ_STORAGE__SEGMENT_BYTES", "1048576"),
            ("TIDEMQ_STORAGE__MIN_FREE_BYTES", "33554432"),
            ("TIDEMQ_STORAGE__TRIM_INTERVAL_MS", "200"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_stored_messages_serves_the_rest_and_recovers() -> anyhow::Result<()> {
    let Some(disk) = LoopDisk::mount(128 * 1024 * 1024)? else {
        return Ok(());
    };
    let mut node = start(&disk)?;
    let (mut sub, _) = persistent(node.mqtt, "keeper").await;
    sub.subscribe(1, "full/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;

    // Fill the disk through a 5.0 publisher until the store refuses.
    let mut publisher = Raw::connect(node.mqtt, Protocol::V5, "filler").await;
    let mut accepted = Vec::new();
    let refused_at = loop {
        let index = u32::try_from(accepted.len())?;
        match publish(&mut publisher, index).await? {
            ReasonCode::Success => accepted.push(index),
            ReasonCode::QuotaExceeded => break index,
            other => bail!("message {index}: unexpected {other:?}"),
        }
        ensure!(accepted.len() < 2_000, "the disk never filled");
    };
    ensure!(accepted.len() > 50, "only {} stored", accepted.len());
    // The refused publisher stays connected. (A retry may or may not be
    // refused: the floor counts bytes, the filesystem blocks, so a sample
    // taken since may show a little room.)
    publisher.send(&Packet::PingReq).await;
    ensure!(
        matches!(publisher.recv().await, Some(Packet::PingResp)),
        "the refused publisher was disconnected"
    );

    // 3.1.1 cannot be told: the connection ends, with no PUBACK.
    let mut old = Raw::connect(node.mqtt, Protocol::V3_1_1, "old-publisher").await;
    old.send(&Packet::Publish(common::publish(
        "full/data",
        &payload(refused_at),
        QoS::AtLeastOnce,
        false,
        1,
    )))
    .await;
    let seen = old.until_closed().await;
    ensure!(
        !seen.iter().any(|p| matches!(p, Packet::PubAck(_))),
        "acknowledged what was not written: {seen:?}"
    );

    // What needs no disk goes on: QoS 0 and messages without persistent
    // subscribers, to a clean session.
    let mut live = Raw::connect(node.mqtt, Protocol::V5, "live-sub").await;
    live.subscribe(1, "live/#", QoS::AtLeastOnce).await;
    let mut live_pub = Raw::connect(node.mqtt, Protocol::V5, "live-pub").await;
    live_pub
        .publish("live/0", b"qos0", QoS::AtMostOnce, false, 0)
        .await;
    let reason = live_pub
        .publish("live/1", b"qos1", QoS::AtLeastOnce, false, 7)
        .await
        .map(|r| r.reason);
    assert_eq!(reason, Some(ReasonCode::Success));
    for want in [b"qos0".as_slice(), b"qos1"] {
        let got = live.expect_publish().await;
        assert_eq!(got.payload.as_ref(), want);
    }
    let metrics = common::process::http_get(node.http, "/metrics")?.1;
    ensure!(
        metrics.contains("tidemq_messages_dropped_total{reason=\"not_stored\"}"),
        "refusals are counted"
    );
    drop((publisher, live, live_pub));

    // The node starts again on its full disk.
    node.sigterm()?;
    node.restart()?;
    let (status, _) = common::process::http_get(node.http, "/health")?;
    assert_eq!(status, 200);

    // Every acknowledged message is there; nothing refused is.
    let (mut sub, present) = persistent(node.mqtt, "keeper").await;
    assert!(present, "the session survived");
    let mut received = Vec::new();
    while received.len() < accepted.len() {
        let p = sub.expect_publish().await;
        received.push(index_of(&p.payload)?);
    }
    assert_eq!(received, accepted);
    sub.expect_silence().await;

    // The space those messages held is given back, and storing resumes
    // without a restart.
    let mut publisher = Raw::connect(node.mqtt, Protocol::V5, "filler").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let next = refused_at + 1;
    loop {
        match publish(&mut publisher, next).await? {
            ReasonCode::Success => break,
            ReasonCode::QuotaExceeded if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => bail!("storing did not resume: {other:?}"),
        }
    }
    let p = sub.expect_publish().await;
    assert_eq!(index_of(&p.payload)?, next);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_session_does_not_pin_the_disk() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = NodeProcess::start(
        dir.path(),
        &[
            ("TIDEMQ_STORAGE__SEGMENT_BYTES", "65536"),
            ("TIDEMQ_STORAGE__TRIM_INTERVAL_MS", "200"),
            ("TIDEMQ_SESSION__MAX_MESSAGE_AGE_SECS", "1"),
        ],
    )?;
    // A 3.1.1 persistent session that takes one message and never returns.
    let (mut gone, _) = persistent(node.mqtt, "gone").await;
    gone.subscribe(1, "age/old", QoS::AtLeastOnce).await;
    disconnect(gone).await;
    let (mut active, _) = persistent(node.mqtt, "keeper").await;
    active.subscribe(1, "age/new", QoS::AtLeastOnce).await;
    let mut publisher = Raw::connect(node.mqtt, Protocol::V3_1_1, "pub").await;
    publisher
        .publish("age/old", b"unread", QoS::AtLeastOnce, false, 1)
        .await;

    // Much more is stored and taken after it, past the age limit.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    pass_through(&mut publisher, &mut active, "age/new", 1).await?;
    node.metric_until(
        "tidemq_storage_deleted_segments_total",
        Duration::from_secs(10),
        "segments after the old message were not given back",
        |deleted| deleted >= 20.0,
    )
    .await?;
    assert_eq!(
        node.metric("tidemq_messages_dropped_total{reason=\"too_old\"}")?,
        1.0
    );
    // The session comes back to nothing.
    let (mut gone, present) = persistent(node.mqtt, "gone").await;
    assert!(present);
    gone.expect_silence().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_sessions_few_messages_move_forward_so_old_segments_go() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = NodeProcess::start(
        dir.path(),
        &[
            ("TIDEMQ_STORAGE__SEGMENT_BYTES", "65536"),
            ("TIDEMQ_STORAGE__TRIM_INTERVAL_MS", "200"),
        ],
    )?;
    // Away for good, as far as the node can tell: one unread QoS 1 message.
    let (mut away, _) = persistent(node.mqtt, "away").await;
    away.subscribe(1, "fwd/old", QoS::AtLeastOnce).await;
    disconnect(away).await;
    let (mut active, _) = persistent(node.mqtt, "keeper").await;
    active.subscribe(1, "fwd/new", QoS::AtLeastOnce).await;
    let mut publisher = Raw::connect(node.mqtt, Protocol::V3_1_1, "pub").await;
    publisher
        .publish("fwd/old", b"unread", QoS::AtLeastOnce, false, 1)
        .await;
    pass_through(&mut publisher, &mut active, "fwd/new", 2).await?;
    // The old message is copied forward and the segments behind it go,
    // long before any age limit.
    node.metric_until(
        "tidemq_storage_deleted_segments_total",
        Duration::from_secs(10),
        "the old segments were not given back",
        |deleted| deleted >= 20.0,
    )
    .await?;
    ensure!(node.metric("tidemq_store_moved_messages_total")? >= 1.0);
    // After a crash the session still has its message, once.
    node.sigkill()?;
    node.restart()?;
    let (mut away, present) = persistent(node.mqtt, "away").await;
    assert!(present);
    assert_eq!(away.expect_publish().await.payload.as_ref(), b"unread");
    away.expect_silence().await;
    disconnect(away).await;
    let (mut away, _) = persistent(node.mqtt, "away").await;
    away.expect_silence().await;
    Ok(())
}

/// Publishes 2,000 QoS 1 messages of 1 KiB to `topic` (packet ids from
/// `first_id`), each taken by `subscriber` before the next: many segments'
/// worth stored and consumed.
async fn pass_through(
    publisher: &mut Raw,
    subscriber: &mut Raw,
    topic: &str,
    first_id: u16,
) -> anyhow::Result<()> {
    for i in 0..2_000u16 {
        publisher
            .publish(topic, &[b'n'; 1024], QoS::AtLeastOnce, false, i + first_id)
            .await;
        subscriber.expect_publish().await;
    }
    Ok(())
}
