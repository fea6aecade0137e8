//! One live session per client id across the cluster, as three real
//! `tidemq` processes: a client that reconnects to another node takes its
//! session over from the node that held it. The old connection gets
//! DISCONNECT 0x8E, the new one CONNACK with session present, and the
//! session continues there whole: its subscriptions (messages published
//! anywhere afterwards reach it on its new node), the QoS 1/2 messages in
//! flight with their packet ids (a QoS 2 message the client answered
//! PUBREC for gets only its PUBREL), and its queue, in order.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::Raw;
use common::cluster::TestCluster;
use tidemq_proto::mqtt::{ConnAck, Packet, Protocol, PubResponse, QoS, ReasonCode};

/// Connects the 5.0 persistent session `id` (expiry 300 s) on `addr`.
async fn connect(addr: SocketAddr, id: &str) -> (Raw, ConnAck) {
    Raw::connect_with(addr, Protocol::V5, id, |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(300);
    })
    .await
}

/// Publishes messages numbered `range` on `topic`, each acknowledged.
async fn publish_range(
    publisher: &mut Raw,
    topic: &str,
    qos: QoS,
    range: std::ops::Range<u16>,
) -> anyhow::Result<()> {
    for seq in range {
        let ack = publisher
            .publish(topic, &seq.to_be_bytes(), qos, false, seq + 1)
            .await
            .context("acknowledgement")?;
        ensure!(!ack.reason.is_error(), "message {seq}: {ack:?}");
    }
    Ok(())
}

fn number(payload: &[u8]) -> anyhow::Result<u16> {
    Ok(u16::from_be_bytes(
        payload.get(..2).context("short")?.try_into()?,
    ))
}

/// Until the session goes quiet: the numbers of the PUBLISHes it is sent
/// (acknowledged, QoS 2 through PUBCOMP) and the packet ids of the
/// PUBRELs it is sent for messages it did not receive here.
async fn drain(raw: &mut Raw) -> anyhow::Result<(Vec<(u16, Packet)>, Vec<u16>)> {
    let mut publishes = Vec::new();
    let mut released = Vec::new();
    let mut answered = std::collections::HashSet::new();
    while let Some(packet) = raw.recv_within(Duration::from_secs(2)).await {
        match &packet {
            Packet::Publish(p) => {
                let id = p.packet_id.unwrap_or_default();
                match p.qos {
                    QoS::AtLeastOnce => raw.send(&Packet::PubAck(PubResponse::success(id))).await,
                    QoS::ExactlyOnce => {
                        answered.insert(id);
                        raw.send(&Packet::PubRec(PubResponse::success(id))).await;
                    }
                    QoS::AtMostOnce => {}
                }
                publishes.push((number(&p.payload)?, packet.clone()));
            }
            Packet::PubRel(rel) => {
                if !answered.remove(&rel.packet_id) {
                    released.push(rel.packet_id);
                }
                raw.send(&Packet::PubComp(PubResponse::success(rel.packet_id)))
                    .await;
            }
            other => bail!("expected PUBLISH or PUBREL, got {other:?}"),
        }
    }
    Ok((publishes, released))
}

/// Waits until the old connection is told the session was taken over.
async fn taken_over(old: &mut Raw) -> anyhow::Result<()> {
    for packet in old.until_closed().await {
        match packet {
            Packet::Disconnect(d) if d.reason == ReasonCode::SessionTakenOver => return Ok(()),
            Packet::Disconnect(d) => bail!("disconnected with {:?}", d.reason),
            // Deliveries it had not read yet.
            _ => {}
        }
    }
    bail!("closed without DISCONNECT 0x8E")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_whole_to_the_node_its_client_reconnects_to() -> anyhow::Result<()> {
    let cluster = TestCluster::start()?;
    let (mut first, ack) = connect(cluster.mqtt(0), "hopper").await;
    ensure!(ack.reason == ReasonCode::Success, "{ack:?}");
    first.subscribe(1, "hop/q1", QoS::AtLeastOnce).await;
    first.subscribe(2, "hop/q2", QoS::ExactlyOnce).await;

    // From node 3: ten of each, then read by the subscriber without
    // completing them: QoS 1 unacknowledged, QoS 2 answered PUBREC (only
    // PUBREL left) for the even ones, not at all for the odd ones.
    let mut publisher = Raw::connect(cluster.mqtt(2), Protocol::V5, "hop-pub").await;
    publish_range(&mut publisher, "hop/q1", QoS::AtLeastOnce, 0..10).await?;
    publish_range(&mut publisher, "hop/q2", QoS::ExactlyOnce, 100..110).await?;
    let mut in_flight: HashMap<u16, (u16, QoS)> = HashMap::new();
    let mut pubrec = Vec::new();
    while in_flight.len() < 20 {
        match first.recv_within(Duration::from_secs(5)).await {
            Some(Packet::Publish(p)) => {
                let seq = number(&p.payload)?;
                let id = p.packet_id.context("QoS 1/2")?;
                if p.qos == QoS::ExactlyOnce && seq % 2 == 0 {
                    first.send(&Packet::PubRec(PubResponse::success(id))).await;
                    pubrec.push(id);
                }
                in_flight.insert(seq, (id, p.qos));
            }
            Some(Packet::PubRel(_)) => {}
            other => bail!("expected PUBLISH, got {other:?}"),
        }
    }
    // Its PUBRELs came: those messages are the client's now.
    // Queued behind the window: ten more of each.
    publish_range(&mut publisher, "hop/q1", QoS::AtLeastOnce, 10..20).await?;
    publish_range(&mut publisher, "hop/q2", QoS::ExactlyOnce, 110..120).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The client reconnects to node 2 while its connection to node 1 lives.
    let (mut second, ack) = connect(cluster.mqtt(1), "hopper").await;
    ensure!(ack.reason == ReasonCode::Success, "{ack:?}");
    ensure!(ack.session_present, "the session came along");
    taken_over(&mut first).await?;

    let (publishes, released) = drain(&mut second).await?;
    // What was PUBREC'd gets its PUBREL with the same packet id, and is
    // not sent again.
    let mut want_released = pubrec.clone();
    want_released.sort_unstable();
    let mut got_released = released.clone();
    got_released.sort_unstable();
    ensure!(
        got_released == want_released,
        "PUBRELs for {want_released:?}, got {released:?}"
    );
    let seqs: Vec<u16> = publishes.iter().map(|(seq, _)| *seq).collect();
    let mut expected: Vec<u16> = (0..10).chain((101..110).step_by(2)).collect();
    expected.extend((10..20).chain(110..120));
    ensure!(
        seqs == expected,
        "in flight again, then the queue, in order: {seqs:?}"
    );
    // In flight again: the same packet ids, DUP set.
    for (seq, packet) in &publishes {
        let Packet::Publish(p) = packet else { continue };
        if let Some((id, qos)) = in_flight.get(seq) {
            ensure!(
                p.packet_id == Some(*id) && p.dup && p.qos == *qos,
                "message {seq} resent as {p:?}, was packet id {id}"
            );
        }
    }

    // The subscriptions live on node 2 now: what node 3 and node 1 publish
    // reaches it there, once.
    publish_range(&mut publisher, "hop/q1", QoS::AtLeastOnce, 20..30).await?;
    let mut on_first = Raw::connect(cluster.mqtt(0), Protocol::V5, "hop-pub-1").await;
    publish_range(&mut on_first, "hop/q2", QoS::ExactlyOnce, 120..130).await?;
    let (publishes, _) = drain(&mut second).await?;
    let seqs: Vec<u16> = publishes.iter().map(|(seq, _)| *seq).collect();
    let expected: Vec<u16> = (20..30).chain(120..130).collect();
    ensure!(seqs == expected, "after the move: {seqs:?}");
    ensure!(
        cluster.nodes[0].metric("tidemq_sessions")? == 1.0,
        "node 1 holds only its publisher's session"
    );
    let taken = cluster.nodes[1].metric("tidemq_cluster_takeovers_total{result=\"taken\"}")?;
    ensure!(taken == 1.0, "counted on the taking node: {taken}");
    ensure!(
        cluster.nodes[0].metric("tidemq_cluster_takeovers_total{result=\"given\"}")? == 1.0,
        "counted on the giving node"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_session_and_its_stored_queue_follow_their_client() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start()?;
    let (mut sub, _) = connect(cluster.mqtt(0), "wanderer").await;
    sub.subscribe(1, "wander/#", QoS::ExactlyOnce).await;
    common::disconnect(sub).await;
    let mut publisher = Raw::connect(cluster.mqtt(2), Protocol::V5, "wander-pub").await;
    publish_range(&mut publisher, "wander/a", QoS::ExactlyOnce, 0..100).await?;
    // Stored on node 1's disk: a restart reads it back from there.
    cluster.nodes[0].sigkill()?;
    cluster.nodes[0].restart()?;
    cluster.healthy(&cluster.nodes[0])?;

    // Node 1 -> node 3 -> node 2, each time with more queued meanwhile.
    let mut next = 100;
    for node in [2, 1] {
        let (mut sub, ack) = connect(cluster.mqtt(node), "wanderer").await;
        ensure!(
            ack.session_present,
            "the session came along to node {}",
            node + 1
        );
        let (publishes, _) = drain(&mut sub).await?;
        let seqs: Vec<u16> = publishes.iter().map(|(seq, _)| *seq).collect();
        let from = if node == 2 { 0 } else { next - 50 };
        ensure!(
            seqs == (from..next).collect::<Vec<_>>(),
            "on node {}: {seqs:?}",
            node + 1
        );
        common::disconnect(sub).await;
        publish_range(
            &mut publisher,
            "wander/a",
            QoS::ExactlyOnce,
            next..next + 50,
        )
        .await?;
        next += 50;
    }
    // And back to node 1, which gave it away: it takes it back.
    let (mut sub, ack) = connect(cluster.mqtt(0), "wanderer").await;
    ensure!(ack.session_present, "the session came back to node 1");
    let (publishes, _) = drain(&mut sub).await?;
    let seqs: Vec<u16> = publishes.iter().map(|(seq, _)| *seq).collect();
    ensure!(
        seqs == (150..200).collect::<Vec<_>>(),
        "back on node 1: {seqs:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_on_another_node_ends_the_session_there() -> anyhow::Result<()> {
    let cluster = TestCluster::start()?;
    let (mut first, _) = connect(cluster.mqtt(0), "cleaner").await;
    first.subscribe(1, "clean/#", QoS::AtLeastOnce).await;
    let mut publisher = Raw::connect(cluster.mqtt(2), Protocol::V5, "clean-pub").await;
    publish_range(&mut publisher, "clean/a", QoS::AtLeastOnce, 0..5).await?;

    let (mut second, ack) = Raw::connect_with(cluster.mqtt(1), Protocol::V5, "cleaner", |c| {
        c.properties.session_expiry_interval = Some(300);
    })
    .await;
    ensure!(
        ack.reason == ReasonCode::Success && !ack.session_present,
        "{ack:?}"
    );
    taken_over(&mut first).await?;
    // Nothing of the old session: not its subscriptions, not its messages.
    publish_range(&mut publisher, "clean/a", QoS::AtLeastOnce, 5..10).await?;
    let (publishes, _) = drain(&mut second).await?;
    ensure!(publishes.is_empty(), "the old session's: {publishes:?}");
    ensure!(
        cluster.nodes[0].metric("tidemq_sessions")? == 0.0,
        "node 1 ended the session"
    );
    // And node 1 does not hand an ended session to anyone.
    let (_, ack) = connect(cluster.mqtt(0), "cleaner").await;
    ensure!(ack.session_present, "the new session (node 2's) is resumed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_its_own_user_takes_a_session_from_another_node() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let passwords = dir.path().join("passwords");
    std::fs::write(
        &passwords,
        format!(
            "alice:{}\nmallory:{}\n",
            common::cheap_hash("a-secret"),
            common::cheap_hash("m-secret")
        ),
    )?;
    let file = passwords.to_string_lossy().into_owned();
    let cluster = TestCluster::start_with(&[("TIDEMQ_AUTH__PASSWORD_FILE", file.as_str())])?;
    let login = |user: &'static str, secret: &'static [u8]| {
        move |c: &mut tidemq_proto::mqtt::Connect| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(300);
            c.username = Some(user.into());
            c.password = Some(bytes::Bytes::from_static(secret));
        }
    };
    let (mut alice, ack) = Raw::connect_with(
        cluster.mqtt(0),
        Protocol::V5,
        "meter",
        login("alice", b"a-secret"),
    )
    .await;
    ensure!(ack.reason == ReasonCode::Success, "{ack:?}");
    alice.subscribe(1, "meter/#", QoS::AtLeastOnce).await;

    // Another user with the same client id on another node: refused, and
    // the session and its connection stay where they are.
    for (node, fresh) in [(1, true), (2, false)] {
        let (_, ack) = Raw::connect_with(cluster.mqtt(node), Protocol::V5, "meter", |c| {
            login("mallory", b"m-secret")(c);
            c.clean_start = fresh;
        })
        .await;
        ensure!(
            ack.reason == ReasonCode::NotAuthorized,
            "node {node}: {ack:?}"
        );
    }
    let mut publisher = Raw::connect(cluster.mqtt(2), Protocol::V5, "meter-pub").await;
    publish_range(&mut publisher, "meter/a", QoS::AtLeastOnce, 0..3).await?;
    let (publishes, _) = drain(&mut alice).await?;
    let numbers: Vec<u16> = publishes.iter().map(|(n, _)| *n).collect();
    ensure!(
        numbers == [0, 1, 2],
        "alice's connection lives on: {numbers:?}"
    );

    // Its own user takes it.
    let (_, ack) = Raw::connect_with(
        cluster.mqtt(1),
        Protocol::V5,
        "meter",
        login("alice", b"a-secret"),
    )
    .await;
    ensure!(
        ack.reason == ReasonCode::Success && ack.session_present,
        "{ack:?}"
    );
    taken_over(&mut alice).await?;
    Ok(())
}

/// A QoS 2 subscriber as a client library keeps it across its
/// connections: the packet ids it answered PUBREC for and has not seen
/// PUBREL for (a PUBLISH resent with one of those is not delivered
/// again), and every message number delivered to the application.
#[derive(Default)]
struct Receiver {
    awaiting_release: std::collections::HashSet<u16>,
    delivered: Vec<u16>,
    /// Every PUBLISH: its number, DUP flag and the hop it came on.
    trace: Vec<(u16, bool, usize)>,
    hop: usize,
}

impl Receiver {
    /// Handles one packet of `raw`; returns `false` once the connection
    /// ended (DISCONNECT or closed).
    async fn handle(&mut self, raw: &mut Raw, packet: Option<Packet>) -> anyhow::Result<bool> {
        match packet {
            Some(Packet::Publish(p)) => {
                let id = p.packet_id.context("QoS 2")?;
                self.trace.push((number(&p.payload)?, p.dup, self.hop));
                if self.awaiting_release.insert(id) {
                    self.delivered.push(number(&p.payload)?);
                }
                raw.send(&Packet::PubRec(PubResponse::success(id))).await;
                Ok(true)
            }
            Some(Packet::PubRel(rel)) => {
                self.awaiting_release.remove(&rel.packet_id);
                raw.send(&Packet::PubComp(PubResponse::success(rel.packet_id)))
                    .await;
                Ok(true)
            }
            Some(Packet::Disconnect(d)) => {
                ensure!(d.reason == ReasonCode::SessionTakenOver, "{d:?}");
                Ok(false)
            }
            None => Ok(false),
            Some(other) => bail!("unexpected {other:?}"),
        }
    }

    /// Reads `raw` for `time`, or until it ends.
    async fn read_for(&mut self, raw: &mut Raw, time: Duration) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + time;
        while let Ok(packet) = tokio::time::timeout_at(until, raw.recv()).await {
            if !self.handle(raw, packet).await? {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Publishes `MESSAGES` QoS 2 messages from `publisher`, `window` at a
/// time (each window acknowledged through PUBCOMP before the next).
async fn publish_windows(mut publisher: Raw, window: usize, messages: u16) -> anyhow::Result<()> {
    for chunk in (0..messages).collect::<Vec<_>>().chunks(window) {
        for &seq in chunk {
            let p = common::publish(
                "load/a",
                &seq.to_be_bytes(),
                QoS::ExactlyOnce,
                false,
                seq % 60_000 + 1,
            );
            publisher.send(&Packet::Publish(p)).await;
        }
        for _ in chunk {
            match publisher.recv().await {
                Some(Packet::PubRec(rec)) if !rec.reason.is_error() => {
                    publisher
                        .send(&Packet::PubRel(PubResponse::success(rec.packet_id)))
                        .await;
                }
                other => bail!("expected a successful PUBREC, got {other:?}"),
            }
        }
        for _ in chunk {
            match publisher.recv().await {
                Some(Packet::PubComp(_)) => {}
                other => bail!("expected a PUBCOMP, got {other:?}"),
            }
        }
    }
    Ok(())
}

/// A persistent QoS 2 subscriber on `load/#` that moves to the next of
/// the first `nodes` nodes every `stay` while node 3 publishes `messages`
/// `window` at a time; checks every message arrived once and in order.
async fn hop_under_load(
    nodes: usize,
    stay: Duration,
    window: usize,
    messages: u16,
) -> anyhow::Result<()> {
    let cluster = TestCluster::start()?;
    let (mut current, _) = connect(cluster.mqtt(0), "load-hopper").await;
    current.subscribe(1, "load/#", QoS::ExactlyOnce).await;
    let publisher = Raw::connect(cluster.mqtt(2), Protocol::V5, "load-pub").await;
    let publishing = tokio::spawn(publish_windows(publisher, window, messages));

    let mut receiver = Receiver::default();
    let mut hops = 0;
    while !publishing.is_finished() {
        receiver.read_for(&mut current, stay).await?;
        // To the next node while this connection lives: the old one ends
        // with 0x8E; what it had not finished goes on on the new one.
        let (next, ack) = connect(cluster.mqtt((hops + 1) % nodes), "load-hopper").await;
        ensure!(
            ack.reason == ReasonCode::Success && ack.session_present,
            "hop {hops}: {ack:?}"
        );
        receiver
            .read_for(&mut current, Duration::from_secs(5))
            .await?;
        current = next;
        hops += 1;
        receiver.hop = hops;
    }
    publishing.await??;
    receiver
        .read_for(&mut current, Duration::from_secs(3))
        .await?;
    ensure!(hops >= 5, "only {hops} hops");
    receiver.verdict(messages, hops)
}

impl Receiver {
    /// Every one of `messages` delivered once, in order; otherwise what
    /// each hop's connection brought, as runs of consecutive numbers (`D`:
    /// resent with DUP).
    fn verdict(&self, messages: u16, hops: usize) -> anyhow::Result<()> {
        let mut sorted = self.delivered.clone();
        sorted.sort_unstable();
        let missing = (0..messages)
            .filter(|s| sorted.binary_search(s).is_err())
            .count();
        sorted.dedup();
        let duplicates = self.delivered.len() - sorted.len();
        let out_of_order = self.delivered.windows(2).filter(|w| w[0] > w[1]).count();
        if missing == 0 && duplicates == 0 && out_of_order == 0 {
            return Ok(());
        }
        let mut runs = String::new();
        for hop in 0..=hops {
            runs.push_str(&format!("\nhop {hop}:"));
            let seqs: Vec<(u16, bool)> = self
                .trace
                .iter()
                .filter(|t| t.2 == hop)
                .map(|t| (t.0, t.1))
                .collect();
            let mut i = 0;
            while i < seqs.len() {
                let mut j = i;
                while j + 1 < seqs.len()
                    && seqs[j + 1].0 == seqs[j].0 + 1
                    && seqs[j + 1].1 == seqs[i].1
                {
                    j += 1;
                }
                let dup = if seqs[i].1 { "D" } else { "" };
                runs.push_str(&format!(" {}-{}{dup}", seqs[i].0, seqs[j].0));
                i = j + 1;
            }
        }
        bail!(
            "{hops} hops: {missing} missing, {duplicates} delivered twice, \
             {out_of_order} out of order{runs}"
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_hopping_between_nodes_under_load_loses_nothing() -> anyhow::Result<()> {
    // One message in flight at a time, the subscriber on all three nodes
    // in turn (the publisher's too).
    hop_under_load(3, Duration::from_millis(150), 1, 3000).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_hopping_under_pipelined_load_keeps_order() -> anyhow::Result<()> {
    // 100 in flight at a time, the subscriber between nodes 1 and 2 while
    // node 3 publishes: its link to the node giving the session away is
    // full when it lets go.
    hop_under_load(2, Duration::from_millis(80), 100, 20_000).await
}
