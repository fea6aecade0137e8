//! Durability of the real `tidemq` binary: what the broker acknowledged to
//! a publisher for a persistent session survives SIGKILL, QoS 2 arrives
//! exactly once, retained messages and subscriptions survive a restart, an
//! expired session leaves nothing on disk, a corrupt storage tail is cut
//! off and reported instead of stopping the node, PUBACKs keep their
//! order when stored and unstored messages share a read, completions read
//! in one pass are recorded (and survive SIGKILL), and the meta
//! service's record says whether a session is connected (after a crash
//! too).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::process::{NodeProcess, http_get};
use common::{Raw, disconnect, persistent};
use tidemq_meta::MetaClient;
use tidemq_proto::mqtt::{Packet, Protocol, PubResponse, QoS};

/// Small segments and a fast trim, so that space coming back is visible.
const SMALL_SEGMENTS: [(&str, &str); 2] = [
    ("TIDEMQ_STORAGE__SEGMENT_BYTES", "8192"),
    ("TIDEMQ_STORAGE__TRIM_INTERVAL_MS", "100"),
];

/// Publishes `topic`/`seq` payloads at `qos` until the connection dies,
/// recording every sequence number the broker acknowledged (PUBACK, or
/// PUBREC for QoS 2: from then on the broker owns the message).
async fn publish_until_killed(
    addr: SocketAddr,
    client_id: String,
    topic: String,
    qos: QoS,
    acked: Arc<Mutex<Vec<u32>>>,
) {
    let (mut raw, _) = persistent(addr, &client_id).await;
    for seq in 0u32.. {
        let packet_id = (seq % 60_000) as u16 + 1;
        let publish = common::publish(&topic, &seq.to_be_bytes(), qos, false, packet_id);
        raw.send(&Packet::Publish(publish)).await;
        match raw.recv_within(Duration::from_secs(5)).await {
            Some(Packet::PubAck(ack)) | Some(Packet::PubRec(ack)) if !ack.reason.is_error() => {
                acked.lock().expect("acked").push(seq);
            }
            _ => return,
        }
        if qos == QoS::ExactlyOnce {
            raw.send(&Packet::PubRel(PubResponse::success(packet_id)))
                .await;
            if !matches!(
                raw.recv_within(Duration::from_secs(5)).await,
                Some(Packet::PubComp(_))
            ) {
                return;
            }
        }
    }
}

/// What a subscriber's application receives, per topic, in arrival order:
/// QoS 2 duplicates (a PUBLISH whose packet id is received and not yet
/// released) are not passed on, as a client must do.
async fn receive_all(
    raw: &mut Raw,
    quiet: Duration,
) -> std::collections::HashMap<String, Vec<u32>> {
    let mut got: std::collections::HashMap<String, Vec<u32>> = Default::default();
    let mut unreleased: HashSet<u16> = HashSet::new();
    while let Some(packet) = raw.recv_within(quiet).await {
        match packet {
            Packet::Publish(p) => {
                let seq = u32::from_be_bytes(p.payload[..4].try_into().expect("4-byte payload"));
                let id = p.packet_id.expect("QoS 1/2");
                match p.qos {
                    QoS::AtLeastOnce => {
                        got.entry(p.topic.clone()).or_default().push(seq);
                        raw.send(&Packet::PubAck(PubResponse::success(id))).await;
                    }
                    QoS::ExactlyOnce => {
                        if unreleased.insert(id) {
                            got.entry(p.topic.clone()).or_default().push(seq);
                        }
                        raw.send(&Packet::PubRec(PubResponse::success(id))).await;
                    }
                    QoS::AtMostOnce => {}
                }
            }
            Packet::PubRel(rel) => {
                unreleased.remove(&rel.packet_id);
                raw.send(&Packet::PubComp(PubResponse::success(rel.packet_id)))
                    .await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

/// The packet ids of the next `count` QoS 1/2 PUBLISH packets, left
/// unacknowledged.
async fn receive_unacknowledged(sub: &mut Raw, count: usize) -> anyhow::Result<Vec<u16>> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        match sub.recv().await {
            Some(Packet::Publish(p)) => ids.push(p.packet_id.context("QoS 1 or 2")?),
            other => bail!("expected PUBLISH, got {other:?}"),
        }
    }
    Ok(ids)
}

/// Sequence numbers must arrive in order (QoS 1 may repeat a suffix after a
/// resend, so only first arrivals are checked).
fn first_arrivals_in_order(seqs: &[u32]) -> bool {
    let mut seen = HashSet::new();
    let firsts: Vec<u32> = seqs.iter().copied().filter(|s| seen.insert(*s)).collect();
    firsts.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_and_qos2_arrives_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = NodeProcess::start(dir.path(), &[])?;

    let (mut sub, present) = persistent(node.mqtt, "sub").await;
    ensure!(!present, "a new session is not present");
    sub.subscribe(1, "d/q1/#", QoS::AtLeastOnce).await;
    sub.subscribe(2, "d/q2/#", QoS::ExactlyOnce).await;
    disconnect(sub).await;

    let acked1 = Arc::new(Mutex::new(Vec::new()));
    let acked2 = Arc::new(Mutex::new(Vec::new()));
    let publishers = [
        tokio::spawn(publish_until_killed(
            node.mqtt,
            "pub1".into(),
            "d/q1/t".into(),
            QoS::AtLeastOnce,
            Arc::clone(&acked1),
        )),
        tokio::spawn(publish_until_killed(
            node.mqtt,
            "pub2".into(),
            "d/q2/t".into(),
            QoS::ExactlyOnce,
            Arc::clone(&acked2),
        )),
    ];
    // Mid-stream: kill the node once both publishers are well under way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acked1.lock().expect("acked").len() < 100 || acked2.lock().expect("acked").len() < 50 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "publishers made no progress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.sigkill()?;
    for publisher in publishers {
        publisher.await?;
    }
    let acked1 = acked1.lock().expect("acked").clone();
    let acked2 = acked2.lock().expect("acked").clone();

    node.restart()?;
    let (mut sub, present) = persistent(node.mqtt, "sub").await;
    ensure!(present, "the persistent session survived the crash");
    let got = receive_all(&mut sub, Duration::from_secs(2)).await;
    let q1 = got.get("d/q1/t").cloned().unwrap_or_default();
    let q2 = got.get("d/q2/t").cloned().unwrap_or_default();

    let q1_set: BTreeSet<u32> = q1.iter().copied().collect();
    let lost1: Vec<u32> = acked1
        .iter()
        .copied()
        .filter(|s| !q1_set.contains(s))
        .collect();
    ensure!(
        lost1.is_empty(),
        "QoS 1: {} of {} acknowledged messages lost, e.g. {:?}",
        lost1.len(),
        acked1.len(),
        &lost1[..lost1.len().min(5)]
    );
    ensure!(first_arrivals_in_order(&q1), "QoS 1 out of order: {q1:?}");

    let q2_set: BTreeSet<u32> = q2.iter().copied().collect();
    ensure!(
        q2_set.len() == q2.len(),
        "QoS 2 delivered a message twice: {q2:?}"
    );
    let lost2: Vec<u32> = acked2
        .iter()
        .copied()
        .filter(|s| !q2_set.contains(s))
        .collect();
    ensure!(
        lost2.is_empty(),
        "QoS 2: {} of {} acknowledged messages lost, e.g. {:?}",
        lost2.len(),
        acked2.len(),
        &lost2[..lost2.len().min(5)]
    );
    ensure!(
        q2.windows(2).all(|w| w[0] < w[1]),
        "QoS 2 out of order: {q2:?}"
    );

    // Completed means completed: a second reconnect gets nothing again.
    disconnect(sub).await;
    let (mut sub, _) = persistent(node.mqtt, "sub").await;
    let again = receive_all(&mut sub, Duration::from_millis(500)).await;
    ensure!(again.is_empty(), "completed messages came back: {again:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_subscriptions_survive_a_graceful_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = NodeProcess::start(dir.path(), &[])?;

    let (mut sub, _) = persistent(node.mqtt, "keeper").await;
    sub.subscribe(1, "g/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    // The session was written through the meta service before SUBACK.
    let meta = MetaClient::new([node.grpc.to_string()])?;
    let record = meta
        .get_session("default/keeper")
        .await?
        .context("the session is in the meta service")?;
    // A 3.1.1 persistent session gets the node's maximum expiry.
    let max_expiry = tidemq_broker::Config::default()
        .mqtt
        .max_session_expiry_secs;
    ensure!(record.node_id == 1 && record.expiry_secs == max_expiry);
    ensure!(
        record.payload.windows(3).any(|w| w == b"g/#"),
        "the subscription is in the session record"
    );
    // The disconnect is written through too: the session is offline.
    wait_for_connected(&meta, "default/keeper", false).await?;

    let mut publisher = Raw::connect(node.mqtt, Protocol::V5, "retainer").await;
    publisher
        .publish("r/a", b"kept", QoS::AtLeastOnce, true, 1)
        .await;
    publisher
        .publish("r/b", b"gone", QoS::AtLeastOnce, true, 2)
        .await;
    publisher
        .publish("r/b", b"", QoS::AtLeastOnce, true, 3)
        .await;
    for seq in 0u32..50 {
        publisher
            .publish("g/x", &seq.to_be_bytes(), QoS::AtLeastOnce, false, 10)
            .await;
    }
    drop(publisher);

    let status = node.sigterm()?;
    ensure!(status.success(), "graceful shutdown exits 0, got {status}");
    node.restart()?;

    // The subscription routes new messages to the offline session.
    let mut publisher = Raw::connect(node.mqtt, Protocol::V5, "retainer").await;
    for seq in 50u32..60 {
        publisher
            .publish("g/x", &seq.to_be_bytes(), QoS::AtLeastOnce, false, 10)
            .await;
    }
    let (mut sub, present) = persistent(node.mqtt, "keeper").await;
    ensure!(present, "session present after the restart");
    let meta = MetaClient::new([node.grpc.to_string()])?;
    wait_for_connected(&meta, "default/keeper", true).await?;
    let got = receive_all(&mut sub, Duration::from_secs(1)).await;
    ensure!(
        got.get("g/x") == Some(&(0..60).collect::<Vec<u32>>()),
        "got {got:?}"
    );

    // Retained: r/a kept, r/b cleared.
    let mut fresh = Raw::connect(node.mqtt, Protocol::V5, "fresh").await;
    fresh.subscribe(1, "r/#", QoS::AtLeastOnce).await;
    let retained = fresh.expect_publish().await;
    ensure!(retained.topic == "r/a" && &retained.payload[..] == b"kept" && retained.retain);
    fresh.expect_silence().await;
    Ok(())
}

/// Waits (up to 5 s) until the meta service's record of `key` says
/// `connected`: a disconnect is written after the connection is gone.
async fn wait_for_connected(meta: &MetaClient, key: &str, connected: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let record = meta
            .get_session(key)
            .await?
            .context("the session is in the meta service")?;
        if record.connected == connected {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{key}: connected stayed {}",
            record.connected
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ids of the message partitions (not the session and retained ones).
fn message_partitions(data_dir: &Path) -> anyhow::Result<Vec<u64>> {
    let partitions = data_dir.join("messages").join("partitions");
    let mut ids = Vec::new();
    for partition in std::fs::read_dir(&partitions).context("partitions")? {
        let name = partition?.file_name();
        if let Some(id) = name.to_str().and_then(|n| n.parse::<u64>().ok())
            && id < 1 << 32
        {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Bytes of the message partitions' segment files. The broker trims while
/// this reads, so a file or partition that vanishes between the listing and
/// its size counts as zero bytes.
fn message_bytes(data_dir: &Path) -> anyhow::Result<u64> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut total = 0;
    for id in message_partitions(data_dir)? {
        let partition = data_dir
            .join("messages")
            .join("partitions")
            .join(id.to_string());
        let files = match std::fs::read_dir(&partition) {
            Err(e) if gone(&e) => continue,
            files => files?,
        };
        for file in files {
            match file.and_then(|f| f.metadata()) {
                Ok(meta) => total += meta.len(),
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_leaves_nothing_on_disk() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = NodeProcess::start(dir.path(), &SMALL_SEGMENTS)?;

    // A 5.0 session that expires 2 s after it disconnects.
    let (mut sub, _) = Raw::connect_with(node.mqtt, Protocol::V5, "brief", |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(2);
    })
    .await;
    sub.subscribe(1, "e/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;

    let mut publisher = Raw::connect(node.mqtt, Protocol::V5, "filler").await;
    let payload = vec![7u8; 512];
    for _ in 0..200 {
        publisher
            .publish("e/x", &payload, QoS::AtLeastOnce, false, 1)
            .await;
    }
    let held = message_bytes(dir.path())?;
    ensure!(held > 100 * 512, "the backlog is on disk ({held} bytes)");

    // After expiry the trim gives the segments back.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = message_bytes(dir.path())?;
        if now < 16 * 1024 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "still {now} bytes of messages on disk after expiry (was {held})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let meta = MetaClient::new([node.grpc.to_string()])?;
    ensure!(
        meta.get_session("default/brief").await?.is_none(),
        "the meta service forgot the expired session"
    );
    // And a restart does not bring the session back.
    node.sigkill()?;
    node.restart()?;
    let (mut sub, ack) = Raw::connect_with(node.mqtt, Protocol::V5, "brief", |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(2);
    })
    .await;
    ensure!(!ack.session_present, "the expired session is gone");
    sub.expect_silence().await;
    Ok(())
}

/// The newest segment file of message partition `partition`.
fn newest_segment(data_dir: &Path, partition: u64) -> anyhow::Result<PathBuf> {
    let dir = data_dir
        .join("messages")
        .join("partitions")
        .join(partition.to_string());
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().context("no segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_tail_is_cut_off_and_reported() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = NodeProcess::start(dir.path(), &[])?;
    let (mut sub, _) = persistent(node.mqtt, "reader").await;
    sub.subscribe(1, "c/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let mut publisher = Raw::connect(node.mqtt, Protocol::V3_1_1, "writer").await;
    for seq in 0u32..20 {
        publisher
            .publish("c/x", &seq.to_be_bytes(), QoS::AtLeastOnce, false, 1)
            .await;
    }
    drop(publisher);
    node.sigkill()?;

    // Garbage after the last record of every message partition that has one.
    let mut damaged = 0;
    for partition in message_partitions(dir.path())? {
        let segment = newest_segment(dir.path(), partition)?;
        if std::fs::metadata(&segment)?.len() > 0 {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().append(true).open(&segment)?;
            file.write_all(&[0xAB; 300])?;
            damaged += 1;
        }
    }
    if damaged == 0 {
        bail!("no message partition holds records");
    }

    node.restart()?;
    let (_, metrics) = http_get(node.http, "/metrics")?;
    let truncated: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tidemq_storage_truncated_segments_total "))
        .context("truncation metric")?
        .trim()
        .parse()?;
    ensure!(
        truncated >= f64::from(damaged),
        "{truncated} segments reported truncated, {damaged} damaged"
    );
    let (mut sub, present) = persistent(node.mqtt, "reader").await;
    ensure!(present);
    let got = receive_all(&mut sub, Duration::from_secs(1)).await;
    ensure!(
        got.get("c/x") == Some(&(0..20).collect::<Vec<u32>>()),
        "got {got:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_flow_cut_by_a_crash_resumes_where_it_stood() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = NodeProcess::start(dir.path(), &[])?;
    let (mut sub, _) = persistent(node.mqtt, "midway").await;
    sub.subscribe(1, "m/#", QoS::ExactlyOnce).await;

    let mut publisher = Raw::connect(node.mqtt, Protocol::V3_1_1, "source").await;
    for seq in 0u32..5 {
        publisher
            .publish("m/x", &seq.to_be_bytes(), QoS::ExactlyOnce, false, 1)
            .await;
    }
    // The subscriber answers PUBREC for the first three only, and sees
    // their PUBREL; then the node dies.
    let ids = receive_unacknowledged(&mut sub, 5).await?;
    for id in &ids[..3] {
        sub.send(&Packet::PubRec(PubResponse::success(*id))).await;
    }
    for _ in 0..3 {
        match sub.recv().await {
            Some(Packet::PubRel(rel)) => ensure!(ids[..3].contains(&rel.packet_id)),
            other => bail!("expected PUBREL, got {other:?}"),
        }
    }
    node.sigkill()?;
    drop(sub);

    node.restart()?;
    let (mut sub, present) = persistent(node.mqtt, "midway").await;
    ensure!(present);
    // PUBREL again for the three released, the other two resent as
    // duplicates with the packet ids the client already holds.
    let mut released = BTreeSet::new();
    let mut resent = BTreeSet::new();
    for _ in 0..5 {
        match sub.recv().await {
            Some(Packet::PubRel(rel)) => {
                released.insert(rel.packet_id);
            }
            Some(Packet::Publish(p)) => {
                ensure!(p.dup, "a resend carries DUP");
                resent.insert(p.packet_id.context("QoS 2")?);
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(
        released == ids[..3].iter().copied().collect(),
        "released {released:?}, ids {ids:?}"
    );
    ensure!(
        resent == ids[3..].iter().copied().collect(),
        "resent {resent:?}, ids {ids:?}"
    );
    sub.expect_silence().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_keep_the_order_of_publishes_read_in_one_pass() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = NodeProcess::start(dir.path(), &[])?;
    let (mut sub, _) = persistent(node.mqtt, "ordered").await;
    sub.subscribe(1, "p/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;

    // One write: messages that must be stored first (p/...) between ones
    // that are answered at once (n/..., no subscriber).
    let mut publisher = Raw::connect(node.mqtt, Protocol::V3_1_1, "mixed").await;
    let mut bytes = bytes::BytesMut::new();
    for id in 1u16..=8 {
        let topic = if id % 2 == 1 { "p/x" } else { "n/x" };
        let packet = Packet::Publish(common::publish(
            topic,
            &id.to_be_bytes(),
            QoS::AtLeastOnce,
            false,
            id,
        ));
        tidemq_proto::mqtt::encode(&packet, Protocol::V3_1_1, &mut bytes)?;
    }
    publisher.send_bytes(&bytes).await;
    let mut acked = Vec::new();
    for _ in 1..=8 {
        match publisher.recv().await {
            Some(Packet::PubAck(ack)) => acked.push(ack.packet_id),
            other => bail!("expected PUBACK, got {other:?}"),
        }
    }
    ensure!(
        acked == (1..=8).collect::<Vec<u16>>(),
        "PUBACKs in {acked:?}"
    );

    let (mut sub, present) = persistent(node.mqtt, "ordered").await;
    ensure!(present);
    for id in [1u16, 3, 5, 7] {
        let got = sub.expect_publish().await;
        ensure!(
            got.topic == "p/x" && got.payload[..] == id.to_be_bytes(),
            "{got:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_read_in_one_pass_survive_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = NodeProcess::start(dir.path(), &[])?;
    let (mut sub, _) = persistent(node.mqtt, "completer").await;
    sub.subscribe(1, "c/#", QoS::AtLeastOnce).await;

    let mut publisher = Raw::connect(node.mqtt, Protocol::V3_1_1, "source").await;
    for seq in 0u16..10 {
        publisher
            .publish("c/x", &seq.to_be_bytes(), QoS::AtLeastOnce, false, seq + 1)
            .await;
    }
    // Received, not acknowledged yet.
    let ids = receive_unacknowledged(&mut sub, 10).await?;
    // Seven PUBACKs in one write: the node records them together.
    let mut bytes = bytes::BytesMut::new();
    for id in &ids[..7] {
        tidemq_proto::mqtt::encode(
            &Packet::PubAck(PubResponse::success(*id)),
            Protocol::V3_1_1,
            &mut bytes,
        )?;
    }
    // PINGRESP comes once the pass that read them has handed them to the
    // store's writer.
    tidemq_proto::mqtt::encode(&Packet::PingReq, Protocol::V3_1_1, &mut bytes)?;
    sub.send_bytes(&bytes).await;
    match sub.recv().await {
        Some(Packet::PingResp) => {}
        other => bail!("expected PINGRESP, got {other:?}"),
    }
    // The publisher's next message is stored after them (same partition,
    // one writer, in order): its PUBACK means they are on disk too.
    publisher
        .publish("c/x", &10u16.to_be_bytes(), QoS::AtLeastOnce, false, 11)
        .await;
    match sub.recv().await {
        Some(Packet::Publish(p)) => ensure!(p.payload[..] == 10u16.to_be_bytes()),
        other => bail!("expected PUBLISH, got {other:?}"),
    }
    node.sigkill()?;
    drop(sub);

    node.restart()?;
    let (mut sub, present) = persistent(node.mqtt, "completer").await;
    ensure!(present);
    let mut resent = BTreeSet::new();
    for _ in 7..=10 {
        let again = sub.expect_publish().await;
        ensure!(again.dup, "a resend carries DUP");
        resent.insert(u16::from_be_bytes([again.payload[0], again.payload[1]]));
    }
    ensure!(
        resent == (7u16..=10).collect(),
        "resent {resent:?}: the completed ones must not come back"
    );
    sub.expect_silence().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_connected_at_a_crash_read_offline_after_the_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = NodeProcess::start(dir.path(), &[])?;
    let (mut sub, _) = persistent(node.mqtt, "crashed").await;
    sub.subscribe(1, "c/#", QoS::AtLeastOnce).await;
    let meta = MetaClient::new([node.grpc.to_string()])?;
    wait_for_connected(&meta, "default/crashed", true).await?;

    node.sigkill()?;
    drop(sub);
    node.restart()?;
    let meta = MetaClient::new([node.grpc.to_string()])?;
    wait_for_connected(&meta, "default/crashed", false).await?;

    let (_sub, present) = persistent(node.mqtt, "crashed").await;
    ensure!(present, "session present after the restart");
    wait_for_connected(&meta, "default/crashed", true).await?;
    Ok(())
}
