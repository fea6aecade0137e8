//! Hand-off logs, as three real `tidemq` processes: what a node must
//! receive while it is down is kept on the publishing node's disk and
//! handed over once it is back: every QoS 1 message acknowledged while it
//! was down reaches its persistent sessions in order, QoS 2 ones exactly
//! once, even when the publishing node is SIGKILLed and restarted in
//! between; a node that hangs (SIGSTOP: its connections stay open, it
//! answers nothing) is handed off like a dead one, before its publishers'
//! wait is over; and a hand-off log at its limit refuses (PUBACK 0x97)
//! instead of losing what it acknowledged.

mod common;

use std::time::Duration;

use anyhow::{Context, ensure};
use common::cluster::TestCluster;
use common::{Raw, persistent};
use tidemq_proto::mqtt::{Packet, Protocol, PubResponse, QoS, ReasonCode};

/// Publishes `count` messages numbered from 0 on `topic`, each
/// acknowledged successfully (for QoS 2, through PUBCOMP).
async fn publish_all(publisher: &mut Raw, topic: &str, qos: QoS, count: u16) -> anyhow::Result<()> {
    for seq in 0..count {
        let ack = publisher
            .publish(topic, &seq.to_be_bytes(), qos, false, seq + 1)
            .await
            .context("acknowledgement")?;
        ensure!(!ack.reason.is_error(), "message {seq}: {ack:?}");
    }
    Ok(())
}

/// Publishes `count` QoS 1 or 2 messages numbered from 0 on `topic`, 50
/// flows open at a time, each acknowledged successfully (QoS 2: PUBREC,
/// then PUBCOMP for its PUBREL).
async fn publish_pipelined(
    publisher: &mut Raw,
    topic: &str,
    qos: QoS,
    count: u16,
) -> anyhow::Result<()> {
    for chunk in (0..count).collect::<Vec<_>>().chunks(50) {
        for seq in chunk {
            let p = common::publish(topic, &seq.to_be_bytes(), qos, false, seq % 60_000 + 1);
            publisher.send(&Packet::Publish(p)).await;
        }
        for _ in chunk {
            match (qos, publisher.recv().await) {
                (QoS::AtLeastOnce, Some(Packet::PubAck(ack))) if !ack.reason.is_error() => {}
                (QoS::ExactlyOnce, Some(Packet::PubRec(rec))) if !rec.reason.is_error() => {
                    publisher
                        .send(&Packet::PubRel(PubResponse::success(rec.packet_id)))
                        .await;
                }
                (_, other) => anyhow::bail!("expected a successful acknowledgement, got {other:?}"),
            }
        }
        if qos == QoS::ExactlyOnce {
            for _ in chunk {
                match publisher.recv().await {
                    Some(Packet::PubComp(_)) => {}
                    other => anyhow::bail!("expected a PUBCOMP, got {other:?}"),
                }
            }
        }
    }
    Ok(())
}

/// Reads what a session is sent until it goes quiet: the numbers of the
/// messages, in order of arrival, each acknowledged (QoS 2: PUBREC, then
/// PUBCOMP for its PUBREL, with several flows open at once).
async fn received(raw: &mut Raw) -> anyhow::Result<Vec<u16>> {
    let mut seqs = Vec::new();
    while let Some(packet) = raw.recv_within(Duration::from_secs(2)).await {
        match packet {
            Packet::Publish(p) => {
                let id = p.packet_id.unwrap_or_default();
                match p.qos {
                    QoS::AtLeastOnce => raw.send(&Packet::PubAck(PubResponse::success(id))).await,
                    QoS::ExactlyOnce => raw.send(&Packet::PubRec(PubResponse::success(id))).await,
                    QoS::AtMostOnce => {}
                }
                seqs.push(u16::from_be_bytes(p.payload[..2].try_into()?));
            }
            Packet::PubRel(rel) => {
                raw.send(&Packet::PubComp(PubResponse::success(rel.packet_id)))
                    .await;
            }
            other => anyhow::bail!("expected PUBLISH or PUBREL, got {other:?}"),
        }
    }
    Ok(seqs)
}

/// Connects the persistent session `id` on `node` (it must be there) and
/// checks it is sent exactly `expected`, in order, once each.
async fn session_gets(
    cluster: &TestCluster,
    node: usize,
    id: &str,
    expected: impl IntoIterator<Item = u16>,
) -> anyhow::Result<()> {
    let (mut sub, present) = persistent(cluster.mqtt(node), id).await;
    ensure!(present, "the session {id} survived");
    let got = received(&mut sub).await?;
    let expected: Vec<u16> = expected.into_iter().collect();
    ensure!(
        got == expected,
        "{id}: every acknowledged message once, in order: {} received, the first difference at {:?}",
        got.len(),
        got.iter().zip(&expected).position(|(a, b)| a != b)
    );
    Ok(())
}

/// Subscribes a persistent session on `node` and leaves it offline.
async fn offline_subscriber(
    cluster: &TestCluster,
    node: usize,
    id: &str,
    filter: &str,
    qos: QoS,
) -> anyhow::Result<()> {
    let (mut sub, _) = persistent(cluster.mqtt(node), id).await;
    sub.subscribe(1, filter, qos).await;
    common::disconnect(sub).await;
    Ok(())
}

/// Waits until node `from` holds nothing for node `peer` any more.
async fn handed_over(cluster: &TestCluster, from: usize, peer: u64) -> anyhow::Result<()> {
    cluster.nodes[from]
        .metric_until(
            &format!("tidemq_cluster_handoff_backlog{{peer=\"{peer}\"}}"),
            Duration::from_secs(20),
            "the hand-off log did not drain",
            |n| n == 0.0,
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_down_node_must_receive_is_handed_over_when_it_returns() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start()?;
    offline_subscriber(&cluster, 1, "down-q1", "down/q1", QoS::AtLeastOnce).await?;
    offline_subscriber(&cluster, 1, "down-q2", "down/q2", QoS::ExactlyOnce).await?;
    cluster.routes_everywhere(2.0).await?;

    // Down at once: the first messages meet a link that has not noticed.
    cluster.nodes[1].sigkill()?;
    let mut publisher = Raw::connect(cluster.mqtt(0), Protocol::V5, "down-pub").await;
    publish_all(&mut publisher, "down/q1", QoS::AtLeastOnce, 300).await?;
    publish_all(&mut publisher, "down/q2", QoS::ExactlyOnce, 100).await?;
    let kept = cluster.nodes[0].metric("tidemq_cluster_handoff_backlog{peer=\"2\"}")?;
    ensure!(kept > 0.0, "nothing was kept for the down node");
    // /health shows it too.
    let (_, health) = common::process::http_get(cluster.nodes[0].http, "/health")?;
    let health: serde_json::Value = serde_json::from_str(&health)?;
    let shown = health["cluster"]["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["id"] == 2))
        .and_then(|member| member["handoff"].as_f64());
    ensure!(
        shown == Some(kept),
        "/health shows {shown:?} kept for node 2, not {kept}"
    );

    cluster.nodes[1].restart()?;
    cluster.healthy(&cluster.nodes[1])?;
    handed_over(&cluster, 0, 2).await?;

    let (mut q1, present) = persistent(cluster.mqtt(1), "down-q1").await;
    ensure!(present, "the QoS 1 session survived");
    let got = received(&mut q1).await?;
    let mut distinct = got.clone();
    distinct.dedup();
    ensure!(
        distinct == (0..300).collect::<Vec<_>>(),
        "QoS 1: every acknowledged message, in order: {got:?}"
    );
    session_gets(&cluster, 1, "down-q2", 0..100).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hand_off_log_survives_its_own_nodes_crash() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start()?;
    offline_subscriber(&cluster, 2, "crash-sub", "crash/#", QoS::ExactlyOnce).await?;
    cluster.routes_everywhere(1.0).await?;

    cluster.nodes[2].sigkill()?;
    let mut publisher = Raw::connect(cluster.mqtt(0), Protocol::V5, "crash-pub").await;
    publish_all(&mut publisher, "crash/a", QoS::ExactlyOnce, 200).await?;
    drop(publisher);
    // Acknowledged: on node 1's disk, whatever happens to it now.
    cluster.nodes[0].sigkill()?;
    cluster.nodes[0].restart()?;
    cluster.healthy(&cluster.nodes[0])?;
    let kept = cluster.nodes[0].metric("tidemq_cluster_handoff_backlog{peer=\"3\"}")?;
    ensure!(
        kept == 200.0,
        "the restarted node holds {kept} messages for node 3"
    );

    cluster.nodes[2].restart()?;
    cluster.healthy(&cluster.nodes[2])?;
    handed_over(&cluster, 0, 3).await?;
    session_gets(&cluster, 2, "crash-sub", 0..200).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hand_off_log_refuses_rather_than_loses() -> anyhow::Result<()> {
    // About 40 messages' worth.
    let mut cluster = TestCluster::start_with(&[("TIDEMQ_CLUSTER__HANDOFF_MAX_BYTES", "4096")])?;
    offline_subscriber(&cluster, 1, "full-sub", "full/#", QoS::AtLeastOnce).await?;
    cluster.routes_everywhere(1.0).await?;
    cluster.nodes[1].sigkill()?;

    let mut publisher = Raw::connect(cluster.mqtt(0), Protocol::V5, "full-pub").await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for seq in 0..200u16 {
        let ack = publisher
            .publish(
                "full/a",
                &seq.to_be_bytes(),
                QoS::AtLeastOnce,
                false,
                seq + 1,
            )
            .await
            .context("PUBACK")?;
        match ack.reason {
            ReasonCode::Success => accepted.push(seq),
            ReasonCode::QuotaExceeded => refused += 1,
            other => anyhow::bail!("message {seq}: {other:?}"),
        }
    }
    ensure!(refused > 0, "the log never filled");
    ensure!(!accepted.is_empty(), "the log kept nothing");
    let counted = cluster.nodes[0].metric("tidemq_cluster_handoff_refused_total{peer=\"2\"}")?;
    ensure!(
        counted == f64::from(refused),
        "{counted} refusals counted, {refused} seen"
    );

    cluster.nodes[1].restart()?;
    cluster.healthy(&cluster.nodes[1])?;
    handed_over(&cluster, 0, 2).await?;
    let (mut sub, _) = persistent(cluster.mqtt(1), "full-sub").await;
    let got = received(&mut sub).await?;
    ensure!(
        got == accepted,
        "exactly the accepted messages: {got:?} vs {accepted:?}"
    );
    Ok(())
}

/// Sends `signal` (`STOP`, `CONT`) to `pid`.
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -{signal} {pid}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_is_handed_off_before_its_publishers_stop_waiting() -> anyhow::Result<()> {
    // The link gives a silent peer up after half of this.
    let mut cluster = TestCluster::start_with(&[("TIDEMQ_CLUSTER__FORWARD_WAIT_MS", "2000")])?;
    offline_subscriber(&cluster, 1, "hung-sub", "hung/#", QoS::ExactlyOnce).await?;
    cluster.routes_everywhere(1.0).await?;
    let hung = cluster.nodes[1].pid().context("node 2's pid")?;
    signal(hung, "STOP")?;

    let mut publisher = Raw::connect(cluster.mqtt(0), Protocol::V5, "hung-pub").await;
    publish_all(&mut publisher, "hung/a", QoS::ExactlyOnce, 50).await?;
    drop(publisher);
    let timeouts = cluster.nodes[0].metric("tidemq_cluster_forward_wait_timeouts_total")?;
    ensure!(
        timeouts == 0.0,
        "{timeouts} acknowledgements went out before the messages were kept"
    );
    // Acknowledged, so kept on node 1's disk: its crash loses nothing.
    cluster.nodes[0].sigkill()?;
    cluster.nodes[0].restart()?;
    cluster.healthy(&cluster.nodes[0])?;
    signal(hung, "CONT")?;
    handed_over(&cluster, 0, 2).await?;

    session_gets(&cluster, 1, "hung-sub", 0..50).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_published_during_a_replay_is_not_taken_for_a_copy() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start()?;
    offline_subscriber(&cluster, 1, "mix-sub", "mix/#", QoS::AtLeastOnce).await?;
    cluster.routes_everywhere(1.0).await?;
    cluster.nodes[1].sigkill()?;
    // A backlog long enough for its replay to take many batches.
    const BACKLOG: u16 = 20_000;
    let mut publisher = Raw::connect(cluster.mqtt(0), Protocol::V5, "mix-backlog").await;
    publish_pipelined(&mut publisher, "mix/a", QoS::AtLeastOnce, BACKLOG).await?;

    // While node 2 comes back and gets the backlog: QoS 0 and QoS 1
    // messages between each other (the QoS 0 ones ride ahead of the
    // QoS 1 ones that queue behind the log).
    let addr = cluster.mqtt(0);
    let during = tokio::spawn(async move {
        let mut publisher = Raw::connect(addr, Protocol::V5, "mix-during").await;
        let mut acked = Vec::new();
        let started = std::time::Instant::now();
        let mut seq = 0u16;
        while started.elapsed() < Duration::from_secs(4) {
            publisher
                .publish("mix/zero", &seq.to_be_bytes(), QoS::AtMostOnce, false, 0)
                .await;
            let ack = publisher
                .publish(
                    "mix/b",
                    &seq.to_be_bytes(),
                    QoS::AtLeastOnce,
                    false,
                    seq % 60_000 + 1,
                )
                .await;
            if ack.is_some_and(|a| !a.reason.is_error()) {
                acked.push(seq);
            }
            seq += 1;
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| cluster.nodes[1].restart())?;
    cluster.healthy(&cluster.nodes[1])?;
    let acked = during.await?;
    handed_over(&cluster, 0, 2).await?;

    let (mut sub, _) = persistent(cluster.mqtt(1), "mix-sub").await;
    let mut by_topic: std::collections::HashMap<String, Vec<u16>> = Default::default();
    while let Some(packet) = sub.recv_within(Duration::from_secs(2)).await {
        let Packet::Publish(p) = packet else { continue };
        sub.ack(&p).await;
        by_topic
            .entry(p.topic.to_string())
            .or_default()
            .push(u16::from_be_bytes(p.payload[..2].try_into()?));
    }
    let backlog = by_topic.remove("mix/a").unwrap_or_default();
    ensure!(
        backlog == (0..BACKLOG).collect::<Vec<_>>(),
        "the backlog, in order: {} messages",
        backlog.len()
    );
    let mut during = by_topic.remove("mix/b").unwrap_or_default();
    during.dedup();
    ensure!(
        during == acked,
        "every QoS 1 message acknowledged during the replay: {} of {}",
        during.len(),
        acked.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_its_replay_gets_each_qos2_message_once() -> anyhow::Result<()> {
    // Small batches: the replay takes long enough to be cut.
    let mut cluster = TestCluster::start_with(&[("TIDEMQ_CLUSTER__LINK_BATCH_MESSAGES", "8")])?;
    offline_subscriber(&cluster, 1, "cut-sub", "cut/#", QoS::ExactlyOnce).await?;
    cluster.routes_everywhere(1.0).await?;
    cluster.nodes[1].sigkill()?;
    const COUNT: u16 = 5000;
    let mut publisher = Raw::connect(cluster.mqtt(0), Protocol::V5, "cut-pub").await;
    publish_pipelined(&mut publisher, "cut/a", QoS::ExactlyOnce, COUNT).await?;

    // Back, and SIGKILLed again while node 1 replays to it: batches it
    // stored and had not acknowledged yet come again after its restart.
    let backlog = "tidemq_cluster_handoff_backlog{peer=\"2\"}";
    cluster.nodes[1].restart()?;
    let left = cluster.nodes[0]
        .metric_until(
            backlog,
            Duration::from_secs(20),
            "the replay never started",
            |n| n < f64::from(COUNT) - 500.0,
        )
        .await?;
    cluster.nodes[1].sigkill()?;
    ensure!(left > 0.0, "the replay was over before the kill");
    cluster.nodes[1].restart()?;
    cluster.healthy(&cluster.nodes[1])?;
    handed_over(&cluster, 0, 2).await?;

    session_gets(&cluster, 1, "cut-sub", 0..COUNT).await
}
