//! The well-behaved pair that measures whether service goes on while a
//! hostile client attacks the node, and the checks every case ends with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::task::JoinHandle;

use crate::common::Raw;
use crate::common::process::{NodeProcess, http_get};
use tidemq_proto::mqtt::{Packet, Protocol, PubResponse, QoS, ReasonCode};

/// How long a bystander waits for one answer before calling service lost.
const ANSWER: Duration = Duration::from_secs(15);

/// The node's RSS must stay under this whatever a case throws at it.
pub const MAX_RSS_KIB: u64 = 512 * 1024;

/// Credentials the bystanders use on a node with a password file.
pub type Login = Option<(&'static str, &'static str)>;

/// A persistent QoS 1 subscriber to `calm/#` and a publisher numbering its
/// messages, publishing one at a time until stopped.
pub struct Bystander {
    stop: Arc<AtomicBool>,
    publisher: JoinHandle<anyhow::Result<Vec<u32>>>,
    subscriber: Raw,
}

/// Connects with `login`, clean start off, session expiry 300 s (5.0).
pub async fn connect(addr: SocketAddr, client_id: &str, login: Login) -> anyhow::Result<Raw> {
    let (raw, ack) = Raw::connect_with(addr, Protocol::V5, client_id, |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(300);
        if let Some((user, password)) = login {
            c.username = Some(user.into());
            c.password = Some(password.as_bytes().to_vec().into());
        }
    })
    .await;
    ensure!(ack.reason == ReasonCode::Success, "{client_id}: {ack:?}");
    Ok(raw)
}

impl Bystander {
    /// Subscribes, then starts publishing.
    pub async fn start(addr: SocketAddr, login: Login) -> anyhow::Result<Bystander> {
        let mut subscriber = connect(addr, "calm-sub", login).await?;
        subscriber.subscribe(1, "calm/#", QoS::AtLeastOnce).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut publisher = connect(addr, "calm-pub", login).await?;
        let stopping = Arc::clone(&stop);
        let publisher = tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut seq = 0u32;
            // At least a few, however soon it is stopped.
            while seq < 3 || !stopping.load(Ordering::Relaxed) {
                seq += 1;
                let packet_id = u16::try_from(seq % 60_000 + 1)?;
                let publish = crate::common::publish(
                    "calm/seq",
                    &seq.to_be_bytes(),
                    QoS::AtLeastOnce,
                    false,
                    packet_id,
                );
                publisher.send(&Packet::Publish(publish)).await;
                match tokio::time::timeout(ANSWER, publisher.recv_within(ANSWER)).await {
                    Ok(Some(Packet::PubAck(PubResponse {
                        packet_id: id,
                        reason,
                        ..
                    }))) if id == packet_id && !reason.is_error() => {
                        acked.push(seq);
                    }
                    other => bail!("message {seq} not acknowledged: {other:?}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(acked)
        });
        Ok(Bystander {
            stop,
            publisher,
            subscriber,
        })
    }

    /// Stops publishing and checks the subscriber received every message
    /// the publisher was told was stored, in order. Returns how many.
    pub async fn finish(mut self) -> anyhow::Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        let acked = self.publisher.await.context("publisher task")??;
        ensure!(!acked.is_empty(), "the bystander published nothing");
        let mut received = Vec::with_capacity(acked.len());
        while received.len() < acked.len() {
            match self.subscriber.recv_within(ANSWER).await {
                Some(Packet::Publish(p)) => {
                    self.subscriber.ack(&p).await;
                    let seq: [u8; 4] = p.payload.as_ref().try_into()?;
                    received.push(u32::from_be_bytes(seq));
                }
                Some(_) => {}
                None => bail!(
                    "the subscriber got {} of {} acknowledged messages",
                    received.len(),
                    acked.len()
                ),
            }
        }
        ensure!(
            received == acked,
            "lost or reordered: {received:?} vs {acked:?}"
        );
        Ok(acked.len())
    }
}

/// The node's resident set, in KiB.
pub fn rss_kib(node: &NodeProcess) -> anyhow::Result<u64> {
    let pid = node.pid().context("running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

/// What every case ends with: the node answers `/health`, its RSS is
/// bounded, and the bystanders lost nothing.
pub async fn still_serving(node: &NodeProcess, bystander: Bystander) -> anyhow::Result<()> {
    let rss = rss_kib(node)?;
    ensure!(rss < MAX_RSS_KIB, "RSS {rss} KiB");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(node.http, "/health")?;
        if status == 200 {
            break;
        }
        ensure!(Instant::now() < deadline, "/health: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = bystander.finish().await?;
    eprintln!(
        "bystanders: {delivered} messages, node RSS {} MiB",
        rss / 1024
    );
    Ok(())
}
