//! Brokers clustered through the meta service's Raft groups, as three real
//! `tidemq` processes: a message published on any node reaches the
//! subscribers on every node, once per subscriber and in publish order; a
//! message published right after a SUBACK on another node is never missed;
//! a restarted node removes the routes its clean sessions left and keeps
//! those of its persistent sessions, which receive what other nodes
//! published while they were offline; a QoS 1 PUBACK means every node
//! the message went to has stored it for its persistent sessions; a shared
//! subscription group with members on every node gets each message once,
//! and a dead node's share goes to the others until it returns; a node
//! without a majority grants no subscription that needs a new route and no
//! new persistent session, and serves the rest. Mosquitto's clients see
//! the cluster as one broker.

mod common;

use std::time::Duration;

use anyhow::{Context, ensure};
use common::cluster::TestCluster;
use common::{Raw, persistent};
use tidemq_proto::mqtt::{
    Packet, Protocol, QoS, ReasonCode, Subscribe, SubscribeFilter, SubscribeProperties,
    SubscriptionOptions, Unsubscribe, UnsubscribeProperties,
};

async fn unsubscribe(raw: &mut Raw, packet_id: u16, filter: &str) -> anyhow::Result<()> {
    raw.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id,
        filters: vec![filter.to_string()],
        properties: UnsubscribeProperties::default(),
    }))
    .await;
    match raw.recv().await {
        Some(Packet::UnsubAck(ack)) if ack.packet_id == packet_id => Ok(()),
        other => anyhow::bail!("expected UNSUBACK, got {other:?}"),
    }
}

/// The next PUBLISH's topic and payload, acknowledged.
async fn next_message(raw: &mut Raw) -> (String, Vec<u8>) {
    let publish = raw.expect_publish().await;
    (publish.topic.to_string(), publish.payload.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_node_reaches_subscribers_on_every_node_once_and_in_order()
-> anyhow::Result<()> {
    let cluster = TestCluster::start()?;
    let mut subscribers = Vec::new();
    for node in 0..3 {
        let mut sub = Raw::connect(cluster.mqtt(node), Protocol::V5, &format!("sub-{node}")).await;
        sub.subscribe(1, "fan/#", QoS::AtLeastOnce).await;
        // A second filter of the same subscriber matching the same topic:
        // one route per node and filter, one copy per node.
        sub.subscribe(2, "fan/+/x", QoS::AtLeastOnce).await;
        subscribers.push(sub);
    }
    cluster.routes_everywhere(6.0).await?;

    let mut publisher = Raw::connect(cluster.mqtt(0), Protocol::V5, "pub").await;
    const COUNT: u32 = 200;
    for seq in 0..COUNT {
        let qos = if seq % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let packet_id = u16::try_from(seq % 60_000 + 1)?;
        publisher
            .publish("fan/a/x", &seq.to_be_bytes(), qos, false, packet_id)
            .await;
    }
    for (node, sub) in subscribers.iter_mut().enumerate() {
        for seq in 0..COUNT {
            // Overlapping subscriptions of one client get one copy.
            let (topic, payload) = next_message(sub).await;
            ensure!(topic == "fan/a/x", "node {node}: topic {topic}");
            ensure!(
                payload == seq.to_be_bytes(),
                "node {node}: expected {seq}, got {payload:?}"
            );
        }
        sub.expect_silence().await;
    }
    let forwarded = cluster.nodes[0]
        .metric("tidemq_cluster_forwarded_messages_total{peer=\"2\"}")
        .context("metrics")?;
    ensure!(
        forwarded == f64::from(COUNT),
        "one copy per message to node 2, not one per route: {forwarded}"
    );
    let timed = cluster.nodes[0].metric("tidemq_cluster_forward_seconds_count{peer=\"2\"}")?;
    let batches = cluster.nodes[0].metric("tidemq_cluster_forwarded_batches_total{peer=\"2\"}")?;
    ensure!(
        timed > 0.0 && timed <= batches,
        "every acknowledged batch timed: {timed} of {batches}"
    );

    // /health: the members as node 1 sees them, its links up.
    let (_, body) = common::process::http_get(cluster.nodes[0].http, "/health")?;
    let health: serde_json::Value = serde_json::from_str(&body)?;
    let view = &health["cluster"];
    ensure!(view["caught_up"] == true && view["routes"] == 6, "{body}");
    let members = view["members"].as_array().context("members")?;
    ensure!(members.len() == 3, "{body}");
    for member in members.iter().filter(|m| m["id"] != 1) {
        ensure!(member["voter"] == true && member["link"] == "up", "{body}");
        ensure!(member["queued"] == 0, "{body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_on_another_node_right_after_suback_is_never_missed()
-> anyhow::Result<()> {
    let cluster = TestCluster::start()?;
    let mut sub = Raw::connect(cluster.mqtt(1), Protocol::V5, "rounds-sub").await;
    let mut publisher = Raw::connect(cluster.mqtt(2), Protocol::V5, "rounds-pub").await;
    const ROUNDS: u16 = 1000;
    for round in 0..ROUNDS {
        // A new filter every round: each SUBACK waits for a new route.
        let filter = format!("round/{round}");
        let ack = sub.subscribe(1, &filter, QoS::AtLeastOnce).await;
        ensure!(ack.reasons.len() == 1, "{ack:?}");
        publisher
            .publish(&filter, &round.to_be_bytes(), QoS::AtLeastOnce, false, 1)
            .await;
        let got = tokio::time::timeout(Duration::from_secs(3), sub.expect_publish())
            .await
            .with_context(|| format!("round {round}: the publish after SUBACK was lost"))?;
        ensure!(got.topic == filter.as_str(), "round {round}: {}", got.topic);
        unsubscribe(&mut sub, 2, &filter).await?;
    }
    let timeouts = cluster.nodes[1].metric("tidemq_cluster_route_wait_timeouts_total")?;
    ensure!(
        timeouts == 0.0,
        "{timeouts} SUBACKs did not wait for their route"
    );
    cluster.routes_everywhere(0.0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_drops_its_clean_sessions_routes_and_keeps_its_persistent_ones()
-> anyhow::Result<()> {
    let mut cluster = TestCluster::start()?;
    let mut clean = Raw::connect(cluster.mqtt(1), Protocol::V5, "clean").await;
    clean.subscribe(1, "gone/#", QoS::AtMostOnce).await;
    let (mut kept, _) = persistent(cluster.mqtt(1), "kept").await;
    kept.subscribe(1, "kept/#", QoS::AtLeastOnce).await;
    cluster.routes_everywhere(2.0).await?;

    cluster.nodes[1].sigkill()?;
    drop((clean, kept));
    cluster.nodes[1].restart()?;
    cluster.healthy(&cluster.nodes[1])?;
    cluster.routes_everywhere(1.0).await?;

    // The persistent session is offline on node 2; a QoS 1 message from
    // node 1 is stored there and delivered when it comes back.
    let mut publisher = Raw::connect(cluster.mqtt(0), Protocol::V5, "pub").await;
    publisher
        .publish("kept/a", b"while offline", QoS::AtLeastOnce, false, 1)
        .await;
    publisher
        .publish("gone/a", b"nobody", QoS::AtLeastOnce, false, 2)
        .await;
    cluster.nodes[1]
        .metric_until(
            "tidemq_cluster_received_messages_total",
            Duration::from_secs(10),
            "node 2 did not receive the forwarded message",
            |n| n >= 1.0,
        )
        .await?;
    let (mut kept, present) = persistent(cluster.mqtt(1), "kept").await;
    ensure!(present, "the persistent session survived the restart");
    let (topic, payload) = next_message(&mut kept).await;
    ensure!(topic == "kept/a" && payload == b"while offline", "{topic}");
    kept.expect_silence().await;
    let received = cluster.nodes[1].metric("tidemq_cluster_received_messages_total")?;
    ensure!(received == 1.0, "gone/a was not forwarded: {received}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_puback_means_the_subscribers_node_stored_it_even_if_killed_right_after()
-> anyhow::Result<()> {
    let mut cluster = TestCluster::start()?;
    let (mut sub, _) = persistent(cluster.mqtt(1), "stored-sub").await;
    sub.subscribe(1, "stored/#", QoS::AtLeastOnce).await;
    common::disconnect(sub).await;
    cluster.routes_everywhere(1.0).await?;

    let mut publisher = Raw::connect(cluster.mqtt(0), Protocol::V5, "stored-pub").await;
    const COUNT: u16 = 300;
    for seq in 0..COUNT {
        let ack = publisher
            .publish(
                "stored/a",
                &seq.to_be_bytes(),
                QoS::AtLeastOnce,
                false,
                seq + 1,
            )
            .await
            .context("PUBACK")?;
        ensure!(!ack.reason.is_error(), "{ack:?}");
    }
    // Acknowledged: so on node 2's disk, whatever happens to it now.
    cluster.nodes[1].sigkill()?;
    cluster.nodes[1].restart()?;
    cluster.healthy(&cluster.nodes[1])?;

    let (mut sub, present) = persistent(cluster.mqtt(1), "stored-sub").await;
    ensure!(present, "the session survived");
    for seq in 0..COUNT {
        let (_, payload) = next_message(&mut sub).await;
        ensure!(
            payload == seq.to_be_bytes(),
            "expected {seq}, got {payload:?}"
        );
    }
    sub.expect_silence().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_with_members_on_every_node_gets_each_message_once() -> anyhow::Result<()> {
    let cluster = TestCluster::start()?;
    let mut members = Vec::new();
    for node in 0..3 {
        let mut member =
            Raw::connect(cluster.mqtt(node), Protocol::V5, &format!("member-{node}")).await;
        member
            .subscribe(1, "$share/g/work/#", QoS::AtLeastOnce)
            .await;
        members.push(member);
    }
    // A plain subscriber beside a member: it gets every message.
    let mut plain = Raw::connect(cluster.mqtt(2), Protocol::V5, "plain").await;
    plain.subscribe(1, "work/#", QoS::AtLeastOnce).await;
    cluster.routes_everywhere(4.0).await?;

    let mut publisher = Raw::connect(cluster.mqtt(0), Protocol::V5, "work-pub").await;
    const COUNT: u16 = 300;
    for seq in 0..COUNT {
        publisher
            .publish(
                "work/a",
                &seq.to_be_bytes(),
                QoS::AtLeastOnce,
                false,
                seq + 1,
            )
            .await;
    }
    for seq in 0..COUNT {
        let (_, payload) = next_message(&mut plain).await;
        ensure!(
            payload == seq.to_be_bytes(),
            "plain: expected {seq}, got {payload:?}"
        );
    }
    let mut seen = std::collections::BTreeMap::new();
    for (node, member) in members.iter_mut().enumerate() {
        let mut got = 0;
        while let Some(Packet::Publish(p)) = member.recv_within(Duration::from_millis(500)).await {
            member.ack(&p).await;
            let seq = u16::from_be_bytes(p.payload[..2].try_into()?);
            ensure!(
                seen.insert(seq, node).is_none(),
                "message {seq} reached the group twice"
            );
            got += 1;
        }
        ensure!(got > 0, "the member on node {} got no share", node + 1);
    }
    ensure!(
        seen.len() == usize::from(COUNT),
        "the group got {} of {COUNT}",
        seen.len()
    );
    Ok(())
}

/// Reads QoS 1 messages until none comes for a while; returns their
/// two-byte sequence numbers.
async fn drain(raw: &mut Raw) -> anyhow::Result<Vec<u16>> {
    let mut seqs = Vec::new();
    while let Some(Packet::Publish(p)) = raw.recv_within(Duration::from_millis(500)).await {
        raw.ack(&p).await;
        seqs.push(u16::from_be_bytes(p.payload[..2].try_into()?));
    }
    Ok(seqs)
}

/// Waits until node `from`'s `/health` says its link to node `to` is
/// `state`.
fn link_is(cluster: &TestCluster, from: usize, to: u64, state: &str) -> anyhow::Result<()> {
    let (_, body) =
        cluster.nodes[from].http_until("/health", Duration::from_secs(10), |_, body| {
            serde_json::from_str::<serde_json::Value>(body).is_ok_and(|health| {
                health["cluster"]["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["id"] == to && m["link"] == state))
            })
        })?;
    ensure!(
        body.contains(state),
        "node {} never saw its link to {to} {state}: {body}",
        from + 1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_share_goes_to_the_other_members_until_it_returns() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start()?;
    let mut m2 = Raw::connect(cluster.mqtt(1), Protocol::V5, "m2").await;
    m2.subscribe(1, "$share/g/job/#", QoS::AtLeastOnce).await;
    let (mut m3, _) = persistent(cluster.mqtt(2), "m3").await;
    m3.subscribe(1, "$share/g/job/#", QoS::AtLeastOnce).await;
    cluster.routes_everywhere(2.0).await?;
    let mut publisher = Raw::connect(cluster.mqtt(0), Protocol::V5, "job-pub").await;
    let mut publish = async |range: std::ops::Range<u16>| {
        for seq in range {
            publisher
                .publish(
                    "job/x",
                    &seq.to_be_bytes(),
                    QoS::AtLeastOnce,
                    false,
                    seq + 1,
                )
                .await;
        }
    };
    publish(0..10).await;
    ensure!(!drain(&mut m2).await?.is_empty() && !drain(&mut m3).await?.is_empty());

    // Node 3 dies: once node 1 sees its link down, node 2's member gets
    // every message of the group.
    cluster.nodes[2].sigkill()?;
    drop(m3);
    link_is(&cluster, 0, 3, "down")?;
    publish(100..200).await;
    ensure!(
        drain(&mut m2).await? == (100..200).collect::<Vec<_>>(),
        "node 2 took the whole share"
    );

    // Back: the persistent member resumes on node 3 and gets its share again.
    cluster.nodes[2].restart()?;
    cluster.healthy(&cluster.nodes[2])?;
    let (mut m3, present) = persistent(cluster.mqtt(2), "m3").await;
    ensure!(present);
    link_is(&cluster, 0, 3, "up")?;
    publish(200..300).await;
    let (on2, on3) = (drain(&mut m2).await?, drain(&mut m3).await?);
    ensure!(
        !on2.is_empty() && !on3.is_empty(),
        "both members served: {on2:?} {on3:?}"
    );
    let mut all: Vec<u16> = on2.into_iter().chain(on3).collect();
    all.sort_unstable();
    ensure!(
        all == (200..300).collect::<Vec<_>>(),
        "each message once: {all:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_a_new_route_is_not_granted_and_the_rest_goes_on() -> anyhow::Result<()>
{
    let mut cluster = TestCluster::start_with(&[
        ("TIDEMQ_CLUSTER__ROUTE_WAIT_MS", "1000"),
        ("TIDEMQ_META__CLIENT_TIMEOUT_MS", "1500"),
    ])?;
    let mut old = Raw::connect(cluster.mqtt(1), Protocol::V5, "old").await;
    old.subscribe(1, "old/#", QoS::AtLeastOnce).await;
    cluster.routes_everywhere(1.0).await?;

    // Node 2 alone: nodes 1 and 3 are gone.
    cluster.nodes[0].sigkill()?;
    cluster.nodes[2].sigkill()?;
    let mut late = Raw::connect(cluster.mqtt(1), Protocol::V5, "late").await;
    // An existing route needs no consensus: granted, and local traffic flows.
    let ack = late.subscribe(1, "old/#", QoS::AtLeastOnce).await;
    ensure!(
        ack.reasons == [ReasonCode::granted(QoS::AtLeastOnce)],
        "{ack:?}"
    );
    let mut local = Raw::connect(cluster.mqtt(1), Protocol::V5, "local-pub").await;
    local
        .publish("old/x", b"still", QoS::AtLeastOnce, false, 1)
        .await;
    ensure!(next_message(&mut old).await.1 == b"still");
    ensure!(next_message(&mut late).await.1 == b"still");
    // A new route needs the majority: no SUBACK, DISCONNECT 0x80.
    late.send(&Packet::Subscribe(Subscribe {
        packet_id: 2,
        filters: vec![SubscribeFilter {
            filter: "new/#".to_string(),
            options: SubscriptionOptions::default(),
        }],
        properties: SubscribeProperties::default(),
    }))
    .await;
    match late.until_closed().await.as_slice() {
        [Packet::Disconnect(d)] => ensure!(d.reason == ReasonCode::UnspecifiedError, "{d:?}"),
        other => anyhow::bail!("expected DISCONNECT without SUBACK, got {other:?}"),
    }
    let refused = cluster.nodes[1].metric("tidemq_cluster_route_write_timeouts_total")?;
    ensure!(refused == 1.0, "{refused}");
    // A new persistent session needs its meta write: CONNACK 0x03 (server
    // unavailable) once meta.client_timeout_ms has passed.
    let started = std::time::Instant::now();
    let (_, ack) = Raw::connect_with(cluster.mqtt(1), Protocol::V3_1_1, "new-persistent", |c| {
        c.clean_start = false;
    })
    .await;
    ensure!(ack.reason == ReasonCode::ServerUnavailable, "{ack:?}");
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "refused after {:?}",
        started.elapsed()
    );

    // Healed: the same SUBSCRIBE is granted and routed from another node.
    cluster.nodes[0].restart()?;
    cluster.nodes[2].restart()?;
    for node in &cluster.nodes {
        cluster.healthy(node)?;
    }
    let mut late = Raw::connect(cluster.mqtt(1), Protocol::V5, "late").await;
    late.subscribe(1, "new/#", QoS::AtLeastOnce).await;
    let mut remote = Raw::connect(cluster.mqtt(0), Protocol::V5, "remote-pub").await;
    remote
        .publish("new/x", b"healed", QoS::AtLeastOnce, false, 1)
        .await;
    ensure!(next_message(&mut late).await.1 == b"healed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_see_one_broker_across_the_nodes() -> anyhow::Result<()> {
    let cluster = TestCluster::start()?;
    let port = |node: usize| cluster.mqtt(node).port().to_string();
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port(2),
            "-t",
            "mosq/#",
            "-q",
            "1",
            "-v",
        ])
        .args(["-C", "2", "-W", "20", "-V", "mqttv5"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("mosquitto_sub (package mosquitto-clients) runs")?;
    // Its SUBACK, so its route, is in once every node holds the route.
    cluster.routes_everywhere(1.0).await?;
    for (node, version, payload) in [(0, "mqttv311", "from-1"), (1, "mqttv5", "from-2")] {
        let status = tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port(node), "-V", version])
            .args(["-t", &format!("mosq/{payload}"), "-m", payload, "-q", "1"])
            .status()
            .await?;
        ensure!(
            status.success(),
            "mosquitto_pub to node {}: {status}",
            node + 1
        );
    }
    let out = tokio::time::timeout(Duration::from_secs(25), sub.wait_with_output()).await??;
    let got = String::from_utf8_lossy(&out.stdout);
    ensure!(
        got == "mosq/from-1 from-1\nmosq/from-2 from-2\n",
        "mosquitto_sub printed {got:?}"
    );
    Ok(())
}
