//! The hostile-client suite: the real `tidemq` binary on 127.0.0.1, one
//! node per case, attacked while a well-behaved publisher and subscriber
//! ([`bystander`]) measure that service goes on. Each case asserts what the
//! attacker gets (a reason code or a disconnect), that the node's RSS stays
//! under [`bystander::MAX_RSS_KIB`], that the bystanders lost nothing, and
//! that `/health` still answers. Counts and sizes are bounded so the suite
//! runs in about a minute.

mod bystander;
#[path = "../common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bystander::{Bystander, Login, still_serving};
use bytes::BytesMut;
use common::process::NodeProcess;
use common::{Raw, cheap_hash};
use tidemq_proto::mqtt::{
    self, Packet, Protocol, PubResponse, QoS, ReasonCode, Subscribe, SubscribeFilter,
    SubscribeProperties, SubscriptionOptions,
};

/// A node with its data in `dir` and these settings.
fn node(dir: &tempfile::TempDir, env: &[(&str, &str)]) -> anyhow::Result<NodeProcess> {
    NodeProcess::start(dir.path(), env)
}

/// A node that takes only the users `alice`, `bob` and `calm` (password =
/// user name + "-pw"), with a short failed-login delay.
fn node_with_passwords(dir: &tempfile::TempDir) -> anyhow::Result<NodeProcess> {
    let file = dir.path().join("passwords");
    let lines: String = ["alice", "bob", "calm"]
        .iter()
        .map(|u| format!("{u}:{}\n", cheap_hash(&format!("{u}-pw"))))
        .collect();
    std::fs::write(&file, lines)?;
    let path = file.to_str().context("path")?.to_string();
    NodeProcess::start(
        &dir.path().join("data"),
        &[
            ("TIDEMQ_AUTH__PASSWORD_FILE", path.as_str()),
            ("TIDEMQ_LISTENER__ALLOW_ANONYMOUS", "false"),
            ("TIDEMQ_AUTH__FAILURE_DELAY_MS", "50"),
            ("TIDEMQ_AUTH__FAILURE_DELAY_MAX_MS", "500"),
        ],
    )
}

const CALM: Login = Some(("calm", "calm-pw"));

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn encode(packets: &[Packet], protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    for packet in packets {
        mqtt::encode(packet, protocol, &mut out).expect("encodable");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_truncated_packets_of_every_type() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(&dir, &[])?;
    let bystander = Bystander::start(node.mqtt, None).await?;
    let mut rng = Lcg(0x7E1D_E5EED);
    for packet_type in 0u8..16 {
        for round in 0..6u8 {
            let protocol = if round % 2 == 0 {
                Protocol::V5
            } else {
                Protocol::V3_1_1
            };
            // Half after a good CONNECT, half as the first packet.
            let mut raw = if round < 3 {
                Raw::connect(node.mqtt, protocol, &format!("bad-{packet_type}-{round}")).await
            } else {
                Raw::tcp(node.mqtt, protocol).await
            };
            let mut junk = vec![packet_type << 4 | (rng.next() as u8 & 0x0F)];
            match round % 3 {
                // A remaining length that never ends, or claims too much.
                0 => junk.extend([0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
                1 => junk.extend([0xFF, 0xFF, 0x7F]),
                _ => {
                    let len = (rng.next() % 100) as usize;
                    junk.push(len as u8 + 20); // more than is sent: truncated
                    junk.extend(rng.bytes(len));
                }
            }
            let _ = raw.try_send_bytes(&junk).await;
            raw.shutdown_write().await;
            // The node answers or closes; it never hangs on the stream.
            let closed = tokio::time::timeout(Duration::from_secs(10), async {
                while raw.recv_within(Duration::from_secs(10)).await.is_some() {}
            })
            .await;
            ensure!(
                closed.is_ok(),
                "type {packet_type} round {round}: not closed"
            );
        }
    }
    still_serving(&node, bystander).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_trickled_a_byte_at_a_time_are_served() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(&dir, &[])?;
    let bystander = Bystander::start(node.mqtt, None).await?;
    let clients = (0..10).map(|i| {
        let addr = node.mqtt;
        tokio::spawn(async move {
            let connect =
                Packet::Connect(common::connect_packet(Protocol::V5, &format!("slow-{i}")));
            let publish = Packet::Publish(common::publish(
                "slow/x",
                b"drip",
                QoS::AtLeastOnce,
                false,
                1,
            ));
            let bytes = encode(&[connect, publish, Packet::PingReq], Protocol::V5);
            let mut raw = Raw::tcp(addr, Protocol::V5).await;
            for byte in bytes.iter() {
                raw.send_bytes(&[*byte]).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            let mut seen = Vec::new();
            while seen.len() < 3 {
                match raw.recv().await {
                    Some(packet) => seen.push(packet),
                    None => break,
                }
            }
            matches!(
                seen.as_slice(),
                [Packet::ConnAck(_), Packet::PubAck(_), Packet::PingResp]
            )
        })
    });
    for client in clients.collect::<Vec<_>>() {
        ensure!(client.await?, "a trickling client was not answered in full");
    }
    still_serving(&node, bystander).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_size_packets_pass_and_larger_ones_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(&dir, &[])?;
    let bystander = Bystander::start(node.mqtt, None).await?;
    let max = tidemq_broker::Config::default().mqtt.max_packet_size as usize;
    let mut raw = Raw::connect(node.mqtt, Protocol::V5, "big").await;
    let header = encode(
        &[Packet::Publish(common::publish(
            "big/x",
            b"",
            QoS::AtLeastOnce,
            false,
            1,
        ))],
        Protocol::V5,
    )
    .len();
    // The remaining length grows by two bytes (2 → 4) for a big payload.
    let payload = vec![b'x'; max - header - 2];
    for _ in 0..4 {
        let reason = raw
            .publish("big/x", &payload, QoS::AtLeastOnce, false, 1)
            .await;
        ensure!(
            reason.as_ref().is_some_and(|r| !r.reason.is_error()),
            "{reason:?}"
        );
    }
    let over = vec![b'x'; max - header - 1];
    raw.send(&Packet::Publish(common::publish(
        "big/x",
        &over,
        QoS::AtLeastOnce,
        false,
        2,
    )))
    .await;
    let closing = raw.until_closed().await;
    ensure!(
        matches!(closing.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::PacketTooLarge),
        "{closing:?}"
    );
    still_serving(&node, bystander).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_floods_are_refused_and_not_routed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(&dir, &[])?;
    let bystander = Bystander::start(node.mqtt, None).await?;
    let mut sub = Raw::connect(node.mqtt, Protocol::V5, "props-sub").await;
    sub.subscribe(1, "props/#", QoS::AtLeastOnce).await;
    let floods = (0..8).map(|i| {
        let addr = node.mqtt;
        tokio::spawn(async move {
            let mut raw = Raw::connect(addr, Protocol::V5, &format!("flood-{i}")).await;
            let mut answers = Vec::new();
            for id in 1..=5u16 {
                // ~200,000 empty user properties: 1 MB on the wire.
                let mut p = common::publish("props/x", b"p", QoS::AtLeastOnce, false, id);
                p.properties.user_properties = vec![(String::new(), String::new()); 200_000].into();
                answers.push(raw.publish_packet(p).await);
            }
            answers
        })
    });
    for flood in floods.collect::<Vec<_>>() {
        for answer in flood.await? {
            ensure!(
                answer
                    .as_ref()
                    .is_some_and(|a| a.reason == ReasonCode::QuotaExceeded),
                "{answer:?}"
            );
        }
    }
    sub.expect_silence().await;
    still_serving(&node, bystander).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_floods_are_capped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(&dir, &[])?;
    let bystander = Bystander::start(node.mqtt, None).await?;
    // Retained messages the flood would multiply.
    let mut publisher = Raw::connect(node.mqtt, Protocol::V5, "retainer").await;
    for i in 0..200u16 {
        publisher
            .publish(&format!("mine/{i}"), b"r", QoS::AtLeastOnce, true, i + 1)
            .await;
    }
    let mut raw = Raw::connect(node.mqtt, Protocol::V5, "greedy").await;
    // 45,000 copies of one filter, then 20,000 different ones.
    for filters in [
        vec!["mine/#".to_string(); 45_000],
        (0..20_000).map(|i| format!("f/{i}")).collect(),
    ] {
        let count = filters.len();
        raw.send(&Packet::Subscribe(Subscribe {
            packet_id: 9,
            filters: filters
                .into_iter()
                .map(|filter| SubscribeFilter {
                    filter,
                    options: SubscriptionOptions {
                        qos: QoS::AtMostOnce,
                        ..Default::default()
                    },
                })
                .collect(),
            properties: SubscribeProperties::default(),
        }))
        .await;
        let mut retained = 0;
        loop {
            match raw.recv().await {
                Some(Packet::SubAck(ack)) => {
                    ensure!(ack.reasons.len() == count);
                    let granted = ack.reasons.iter().filter(|r| !r.is_error()).count();
                    ensure!(granted <= 256, "{granted} filters granted");
                    ensure!(ack.reasons.contains(&ReasonCode::QuotaExceeded));
                    break;
                }
                Some(Packet::Publish(_)) => retained += 1,
                other => anyhow::bail!("expected SUBACK, got {other:?}"),
            }
        }
        while let Some(Packet::Publish(_)) = raw.recv_within(Duration::from_millis(300)).await {
            retained += 1;
        }
        ensure!(
            retained <= 1_000,
            "{retained} retained deliveries for one SUBSCRIBE"
        );
    }
    still_serving(&node, bystander).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_disconnected() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(&dir, &[("TIDEMQ_MQTT__WRITE_TIMEOUT_SECS", "2")])?;
    let bystander = Bystander::start(node.mqtt, None).await?;
    let mut stuck = Raw::connect(node.mqtt, Protocol::V5, "stuck").await;
    stuck.subscribe(1, "flood/#", QoS::AtMostOnce).await;
    let mut publisher = Raw::connect(node.mqtt, Protocol::V5, "firehose").await;
    let payload = vec![b'f'; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.metric("tidemq_disconnects_total{reason=\"write_timeout\"}")? < 1.0 {
        ensure!(
            Instant::now() < deadline,
            "the stuck subscriber was never dropped"
        );
        for _ in 0..100 {
            publisher
                .publish("flood/x", &payload, QoS::AtMostOnce, false, 0)
                .await;
        }
        ensure!(bystander::rss_kib(&node)? < bystander::MAX_RSS_KIB);
    }
    drop(stuck);
    still_serving(&node, bystander).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_far_faster_than_the_disk_are_held_back_not_dropped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(&dir, &[])?;
    for i in 0..4 {
        let mut sub = bystander::connect(node.mqtt, &format!("slow-disk-{i}"), None).await?;
        sub.subscribe(1, "fast/#", QoS::AtLeastOnce).await;
        common::disconnect(sub).await;
    }
    let bystander = Bystander::start(node.mqtt, None).await?;
    let publishers = (0..20).map(|i| {
        let addr = node.mqtt;
        tokio::spawn(async move {
            let mut raw = Raw::connect(addr, Protocol::V5, &format!("fast-{i}")).await;
            // 500 QoS 1 messages sent without waiting, then every answer.
            let packets: Vec<Packet> = (1..=500u16)
                .map(|id| {
                    Packet::Publish(common::publish(
                        "fast/x",
                        &[0u8; 256],
                        QoS::AtLeastOnce,
                        false,
                        id,
                    ))
                })
                .collect();
            raw.send_bytes(&encode(&packets, Protocol::V5)).await;
            let mut acked = 0;
            while acked < 500 {
                match raw.recv().await {
                    Some(Packet::PubAck(PubResponse { reason, .. })) if !reason.is_error() => {
                        acked += 1
                    }
                    other => return Err(anyhow::anyhow!("publisher {i}: {other:?}")),
                }
            }
            Ok(())
        })
    });
    for publisher in publishers.collect::<Vec<_>>() {
        publisher.await??;
    }
    still_serving(&node, bystander).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_refused_and_slowed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node_with_passwords(&dir)?;
    let bystander = Bystander::start(node.mqtt, CALM).await?;
    // Waves of guesses: those after the first meet the earlier failures.
    for wave in 0..4 {
        let guesses = (0..10).map(|i| {
            let addr = node.mqtt;
            tokio::spawn(async move {
                let id = format!("guess-{wave}-{i}");
                let (_, ack) = Raw::connect_with(addr, Protocol::V5, &id, |c| {
                    c.username = Some("alice".into());
                    c.password = Some(id.clone().into_bytes().into());
                })
                .await;
                ack.reason
            })
        });
        for guess in guesses.collect::<Vec<_>>() {
            ensure!(guess.await? == ReasonCode::BadUserNameOrPassword);
        }
    }
    ensure!(
        node.metric("tidemq_logins_delayed_total")? > 0.0,
        "repeated failures are slowed"
    );
    still_serving(&node, bystander).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_take_a_session_over() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node_with_passwords(&dir)?;
    let bystander = Bystander::start(node.mqtt, CALM).await?;
    let alice = Some(("alice", "alice-pw"));
    let mut owner = bystander::connect(node.mqtt, "dev-1", alice).await?;
    owner.subscribe(1, "alice/#", QoS::AtLeastOnce).await;
    common::disconnect(owner).await;
    let mut sender = bystander::connect(node.mqtt, "alice-sender", alice).await?;
    for id in 1..=3u16 {
        sender
            .publish("alice/inbox", &[id as u8], QoS::AtLeastOnce, false, id)
            .await;
    }
    for (protocol, want) in [
        (Protocol::V5, ReasonCode::NotAuthorized),
        (Protocol::V3_1_1, ReasonCode::NotAuthorized),
    ] {
        let (_, ack) = Raw::connect_with(node.mqtt, protocol, "dev-1", |c| {
            c.clean_start = false;
            c.username = Some("bob".into());
            c.password = Some(b"bob-pw".to_vec().into());
        })
        .await;
        ensure!(ack.reason == want, "{protocol:?}: {ack:?}");
    }
    let mut owner = bystander::connect(node.mqtt, "dev-1", alice).await?;
    for id in 1..=3u8 {
        ensure!(owner.expect_publish().await.payload.as_ref() == [id]);
    }
    still_serving(&node, bystander).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_opened_and_dropped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(&dir, &[])?;
    let bystander = Bystander::start(node.mqtt, None).await?;
    for batch in 0..15 {
        let conns = (0..200).map(|i| {
            let addr = node.mqtt;
            tokio::spawn(async move {
                if i % 2 == 0 {
                    let raw =
                        Raw::connect(addr, Protocol::V3_1_1, &format!("churn-{batch}-{i}")).await;
                    drop(raw); // no DISCONNECT
                } else {
                    drop(tokio::net::TcpStream::connect(addr).await);
                }
            })
        });
        for conn in conns.collect::<Vec<_>>() {
            conn.await?;
        }
    }
    node.metric_until(
        "tidemq_connections",
        Duration::from_secs(15),
        "connections were not released",
        |open| open <= 2.0,
    )
    .await?;
    still_serving(&node, bystander).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = node(&dir, &[])?;
    let mut sub = bystander::connect(node.mqtt, "calm-sub", None).await?;
    sub.subscribe(1, "calm/#", QoS::AtLeastOnce).await;
    common::disconnect(sub).await;
    let mut publisher = bystander::connect(node.mqtt, "calm-pub", None).await?;
    let killer = {
        let pid = node.pid().context("pid")?;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        })
    };
    // Publish until the node dies; what was acknowledged must survive.
    let mut acked = Vec::new();
    for seq in 1..=u32::MAX {
        let id = u16::try_from(seq % 60_000 + 1)?;
        publisher
            .send(&Packet::Publish(common::publish(
                "calm/seq",
                &seq.to_be_bytes(),
                QoS::AtLeastOnce,
                false,
                id,
            )))
            .await;
        match publisher.recv_within(Duration::from_secs(5)).await {
            Some(Packet::PubAck(a)) if a.packet_id == id && !a.reason.is_error() => acked.push(seq),
            _ => break,
        }
    }
    killer.await?;
    ensure!(
        acked.len() > 10,
        "only {} acknowledged before the kill",
        acked.len()
    );
    node.sigkill()?;
    node.restart()?;
    let mut sub = bystander::connect(node.mqtt, "calm-sub", None).await?;
    let mut received = Vec::new();
    while let Some(Packet::Publish(p)) = sub.recv_within(Duration::from_secs(5)).await {
        sub.ack(&p).await;
        let seq: [u8; 4] = p.payload.as_ref().try_into()?;
        received.push(u32::from_be_bytes(seq));
    }
    // Every acknowledged message, in order; an unacknowledged last one may follow.
    ensure!(
        received.len() >= acked.len(),
        "{} of {} survived",
        received.len(),
        acked.len()
    );
    ensure!(received[..acked.len()] == acked[..], "lost or reordered");
    let bystander = Bystander::start(node.mqtt, None).await?;
    still_serving(&node, bystander).await
}
