//! Retained messages across a cluster of three real `tidemq` processes: a
//! retained message set, replaced or cleared on any node is served to new
//! subscribers on every node as soon as its publisher has the PUBACK; it
//! survives the loss of its own node and a restart of the others; and
//! writes racing on one topic from every node end the same everywhere
//! (the last in the metadata group's commit order); without a majority a
//! retained QoS 1 publish is refused (PUBACK 0x97) and its write, kept
//! queued, reaches every node after the heal.

mod common;

use std::time::Duration;

use anyhow::{Context, ensure};
use common::Raw;
use common::cluster::TestCluster;
use tidemq_proto::mqtt::{Protocol, Publish, QoS};

/// Publishes a retained QoS 1 message on `node` and waits for its PUBACK.
async fn retain(
    cluster: &TestCluster,
    node: usize,
    topic: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let mut publisher = Raw::connect(cluster.mqtt(node), Protocol::V5, "retainer").await;
    let ack = publisher
        .publish(topic, payload, QoS::AtLeastOnce, true, 1)
        .await
        .context("PUBACK")?;
    ensure!(!ack.reason.is_error(), "{ack:?}");
    Ok(())
}

/// What a new subscriber to `filter` on `node` is sent at once.
async fn retained_on(
    cluster: &TestCluster,
    node: usize,
    filter: &str,
) -> anyhow::Result<Vec<Publish>> {
    let id = format!("reader-{node}");
    common::retained_sent(cluster.mqtt(node), &id, filter)
        .await
        .map_err(anyhow::Error::msg)
}

/// The payloads of retained messages.
fn payloads(got: &[Publish]) -> Vec<&[u8]> {
    got.iter().map(|p| &p.payload[..]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_set_anywhere_is_served_everywhere_and_outlives_its_node()
-> anyhow::Result<()> {
    let mut cluster = TestCluster::start()?;
    // Subscribers that stay keep the routes of nodes 2 and 3, so that a
    // reader there needs no route write while node 1's death is elected
    // over.
    let mut holders = Vec::new();
    for node in [1, 2] {
        let id = format!("holder-{node}");
        let mut holder = Raw::connect(cluster.mqtt(node), Protocol::V5, &id).await;
        holder.subscribe(1, "ret/#", QoS::AtMostOnce).await;
        holders.push(holder);
    }

    // Set on node 1: right after the PUBACK, new subscribers on the other
    // nodes get it.
    retain(&cluster, 0, "ret/a", b"one").await?;
    for node in [1, 2] {
        let got = retained_on(&cluster, node, "ret/#").await?;
        ensure!(payloads(&got) == [b"one"], "node {}: {got:?}", node + 1);
    }
    // Replaced on node 3, cleared on node 2.
    retain(&cluster, 2, "ret/a", b"two").await?;
    let got = retained_on(&cluster, 0, "ret/#").await?;
    ensure!(payloads(&got) == [b"two"], "node 1: {got:?}");
    retain(&cluster, 1, "ret/a", b"").await?;
    for node in 0..3 {
        let got = retained_on(&cluster, node, "ret/#").await?;
        ensure!(got.is_empty(), "node {}: cleared, still {got:?}", node + 1);
    }

    // Set on node 1, which then dies: the others still serve it, and so
    // do they after a restart of their own, and so does node 1 back.
    retain(&cluster, 0, "ret/b", b"kept").await?;
    cluster.nodes[0].sigkill()?;
    let got = retained_on(&cluster, 1, "ret/#").await?;
    ensure!(payloads(&got) == [b"kept"], "node 2: {got:?}");
    cluster.nodes[2].sigkill()?;
    cluster.nodes[2].restart()?;
    cluster.healthy(&cluster.nodes[2])?;
    let got = retained_on(&cluster, 2, "ret/#").await?;
    ensure!(payloads(&got) == [b"kept"], "node 3 restarted: {got:?}");
    cluster.nodes[0].restart()?;
    cluster.healthy(&cluster.nodes[0])?;
    let got = retained_on(&cluster, 0, "ret/#").await?;
    ensure!(payloads(&got) == [b"kept"], "node 1 back: {got:?}");
    let count = cluster.nodes[0].metric("tidemq_retained_messages")?;
    ensure!(count == 1.0, "node 1 counts {count} retained messages");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_writes_racing_on_one_topic_from_every_node_end_the_same_everywhere()
-> anyhow::Result<()> {
    let cluster = TestCluster::start()?;
    const ROUNDS: u16 = 100;
    let publishers = (0..3).map(|node| {
        let addr = cluster.mqtt(node);
        async move {
            let id = format!("racer-{node}");
            let mut publisher = Raw::connect(addr, Protocol::V5, &id).await;
            for round in 0..ROUNDS {
                let payload = format!("{node}-{round}");
                let ack = publisher
                    .publish(
                        "race",
                        payload.as_bytes(),
                        QoS::AtLeastOnce,
                        true,
                        round + 1,
                    )
                    .await
                    .context("PUBACK")?;
                ensure!(!ack.reason.is_error(), "{ack:?}");
            }
            anyhow::Ok(())
        }
    });
    for raced in futures_util::future::join_all(publishers).await {
        raced?;
    }
    // Every write is acknowledged, so applied on every node.
    let mut seen = Vec::new();
    for node in 0..3 {
        let got = retained_on(&cluster, node, "race").await?;
        let payloads = payloads(&got);
        ensure!(payloads.len() == 1, "node {}: {got:?}", node + 1);
        seen.push(String::from_utf8_lossy(payloads[0]).into_owned());
    }
    ensure!(
        seen.iter().all(|s| *s == seen[0]),
        "the nodes disagree: {seen:?}"
    );
    ensure!(
        seen[0].ends_with(&format!("-{}", ROUNDS - 1)),
        "the last write is some node's last: {seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_a_retained_qos1_publish_is_refused_and_converges_after_the_heal()
-> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(&[
        ("TIDEMQ_CLUSTER__ROUTE_WAIT_MS", "1000"),
        ("TIDEMQ_META__CLIENT_TIMEOUT_MS", "1500"),
    ])?;
    // Node 2 alone: nodes 1 and 3 are gone.
    cluster.nodes[0].sigkill()?;
    cluster.nodes[2].sigkill()?;
    let mut publisher = Raw::connect(cluster.mqtt(1), Protocol::V5, "cut-off").await;
    let started = std::time::Instant::now();
    let ack = publisher
        .publish("alone/a", b"set alone", QoS::AtLeastOnce, true, 1)
        .await
        .context("PUBACK")?;
    ensure!(
        ack.reason == tidemq_proto::mqtt::ReasonCode::QuotaExceeded,
        "{ack:?}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let refused = cluster.nodes[1].metric("tidemq_cluster_retained_write_timeouts_total")?;
    ensure!(refused == 1.0, "{refused}");
    ensure!(cluster.nodes[1].metric("tidemq_cluster_retained_pending")? == 1.0);

    // Healed: the write still queued commits, and every node serves what
    // node 2 served all along.
    cluster.nodes[0].restart()?;
    cluster.nodes[2].restart()?;
    for node in &cluster.nodes {
        cluster.healthy(node)?;
    }
    cluster.nodes[1]
        .metric_until(
            "tidemq_cluster_retained_pending",
            Duration::from_secs(15),
            "the queued retained write did not commit after the heal",
            |n| n == 0.0,
        )
        .await?;
    for node in 0..3 {
        let got = retained_on(&cluster, node, "alone/#").await?;
        ensure!(
            payloads(&got) == [b"set alone"],
            "node {}: {got:?}",
            node + 1
        );
    }
    Ok(())
}
