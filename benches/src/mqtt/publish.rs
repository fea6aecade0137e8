//! `tidemq-bench mqtt pub`: `--count` publishers, each on its own topic,
//! for `--duration-secs`.
//!
//! - QoS 0 publishers send `--rate-per-client` messages a second, the ones
//!   due every 10 ms in one write. A success is a message written; there is
//!   no latency to measure.
//! - QoS 1 and 2 publishers keep `--inflight` messages unacknowledged: every
//!   acknowledgement releases the next message. A success is a PUBACK
//!   (QoS 1) or PUBCOMP (QoS 2); its latency runs from encoding the PUBLISH.
//!   A message unacknowledged after `--timeout-ms` counts as a timeout.
//!
//! After the deadline publishers wait for their last acknowledgements (at
//! most `--timeout-ms`); the average rate is over `--duration-secs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tidemq_proto::mqtt::{Packet, PubResponse, Publish, PublishProperties, QoS, ReasonCode};
use tokio::task::JoinSet;

use super::args::topic_for;
use super::client::{Client, SessionKind};
use super::{PubArgs, connect_clients, note_error, stamped_payload};
use crate::recorder::{FinalReport, Recorder, spawn_ticker};

/// How often QoS 0 publishers send what is due.
const SEND_EVERY: Duration = Duration::from_millis(10);
/// How often QoS 1/2 publishers look for timed-out messages.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(100);
/// PINGREQ interval: half the keep alive.
const PING_EVERY: Duration = Duration::from_secs(super::KEEP_ALIVE_SECS as u64 / 2);

/// Runs the load, printing a line per second, and returns the final report.
pub async fn publish(args: &PubArgs) -> anyhow::Result<FinalReport> {
    args.common.validate()?;
    anyhow::ensure!(
        args.qos() != QoS::AtMostOnce || args.rate_per_client > 0,
        "--rate-per-client must be above zero"
    );
    let clients = connect_clients(&args.common, 'p', SessionKind::Clean, "publishers").await?;
    let recorder = Arc::new(Recorder::new(args.payload_size.max(8) as u64));
    let deadline = recorder.started() + Duration::from_secs(args.duration_secs);
    let ticker = {
        let recorder = Arc::clone(&recorder);
        spawn_ticker(args.common.output, move || recorder.tick())
    };
    let mut publishers = JoinSet::new();
    for (index, client) in clients {
        let publisher = Publisher::new(
            client,
            vec![topic_for(&args.topic, index)],
            args.qos(),
            args.payload_size,
            Arc::clone(&recorder),
        )
        .retaining(args.retain);
        let (rate, inflight, timeout) =
            (args.rate_per_client, args.inflight, args.common.timeout());
        publishers.spawn(async move {
            match publisher.qos {
                QoS::AtMostOnce => publisher.run_qos0(rate, deadline).await,
                _ => {
                    publisher
                        .run_acked(inflight, timeout, Some(deadline), u64::MAX)
                        .await;
                }
            }
        });
    }
    while publishers.join_next().await.is_some() {}
    ticker.abort();
    Ok(recorder.report_over(args.duration_secs as f64))
}

/// One publisher's connection and bookkeeping.
pub(super) struct Publisher {
    client: Client,
    /// Topics published to in turn, one message each.
    topics: Vec<String>,
    next_topic: usize,
    qos: QoS,
    /// Whether its messages are retained.
    retain: bool,
    payload_size: usize,
    recorder: Arc<Recorder>,
    /// QoS 1/2 messages awaiting PUBACK/PUBCOMP: packet id → encoding time.
    pending: HashMap<u16, Instant>,
    next_id: u16,
    last_ping: Instant,
}

impl Publisher {
    /// A publisher on `client` sending to `topics` in turn (at least one),
    /// recording into `recorder`.
    pub(super) fn new(
        client: Client,
        topics: Vec<String>,
        qos: QoS,
        payload_size: usize,
        recorder: Arc<Recorder>,
    ) -> Self {
        Self {
            client,
            topics,
            next_topic: 0,
            qos,
            retain: false,
            payload_size,
            recorder,
            pending: HashMap::new(),
            next_id: 0,
            last_ping: Instant::now(),
        }
    }

    /// The same publisher, sending its messages retained or not.
    pub(super) fn retaining(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Publishes at `rate` messages a second until `deadline`.
    async fn run_qos0(mut self, rate: u64, deadline: Instant) {
        let started = Instant::now();
        // Catching up after a stall sends at most 100 ms worth per round.
        let max_burst = (rate / 10).max(1);
        let mut sent = 0u64;
        let mut send = tokio::time::interval(SEND_EVERY);
        let result: anyhow::Result<()> = async {
            loop {
                tokio::select! {
                    read = self.client.fill() => {
                        read?;
                        self.handle_incoming()?;
                    }
                    _ = send.tick() => {
                        let now = Instant::now();
                        if now >= deadline {
                            return Ok(());
                        }
                        let elapsed = now.duration_since(started).as_secs_f64();
                        let due = (elapsed * rate as f64) as u64 + 1;
                        for _ in 0..due.saturating_sub(sent).min(max_burst) {
                            let publish = self.publish(None);
                            self.client.send(&publish)?;
                            self.recorder.success_untimed();
                            sent += 1;
                        }
                        self.ping_if_due(now)?;
                        self.client.flush().await?;
                    }
                }
            }
        }
        .await;
        self.finish(result).await;
    }

    /// Keeps `inflight` messages unacknowledged until `deadline` (if any)
    /// or until `messages` were sent, then waits for the last
    /// acknowledgements. Returns the messages it did not send because the
    /// connection failed.
    pub(super) async fn run_acked(
        mut self,
        inflight: u16,
        timeout: Duration,
        deadline: Option<Instant>,
        messages: u64,
    ) -> u64 {
        let mut left = messages;
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
        let result: anyhow::Result<()> = async {
            loop {
                let now = Instant::now();
                let sending = left > 0 && deadline.is_none_or(|deadline| now < deadline);
                if !sending && self.pending.is_empty() {
                    return Ok(());
                }
                if sending {
                    while self.pending.len() < usize::from(inflight) && left > 0 {
                        let id = self.next_packet_id();
                        let publish = self.publish(Some(id));
                        self.client.send(&publish)?;
                        self.pending.insert(id, Instant::now());
                        left -= 1;
                    }
                }
                self.client.flush().await?;
                tokio::select! {
                    read = self.client.fill() => {
                        read?;
                        self.handle_incoming()?;
                    }
                    _ = housekeeping.tick() => {
                        let now = Instant::now();
                        let before = self.pending.len();
                        self.pending.retain(|_, sent| now.duration_since(*sent) < timeout);
                        for _ in self.pending.len()..before {
                            self.recorder.timeout();
                        }
                        self.ping_if_due(now)?;
                    }
                }
            }
        }
        .await;
        let failed = result.is_err();
        self.finish(result).await;
        if failed { left } else { 0 }
    }

    /// A PUBLISH to the next topic, stamped with the current time.
    fn publish(&mut self, packet_id: Option<u16>) -> Packet {
        let topic = self
            .topics
            .get(self.next_topic)
            .cloned()
            .unwrap_or_default();
        self.next_topic = (self.next_topic + 1) % self.topics.len().max(1);
        Packet::Publish(Publish {
            dup: false,
            qos: self.qos,
            retain: self.retain,
            topic,
            packet_id,
            properties: PublishProperties::default(),
            payload: stamped_payload(self.payload_size),
        })
    }

    /// The next packet id (1..=65535) not in flight.
    fn next_packet_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.pending.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// Handles every whole packet read: acknowledgements and PINGRESP.
    fn handle_incoming(&mut self) -> anyhow::Result<()> {
        while let Some(packet) = self.client.next_buffered()? {
            match packet {
                Packet::PubAck(ack) | Packet::PubComp(ack) => {
                    self.acknowledged(ack.packet_id, ack.reason)
                }
                Packet::PubRec(rec) if rec.reason.is_error() => {
                    self.acknowledged(rec.packet_id, rec.reason)
                }
                Packet::PubRec(rec) => self
                    .client
                    .send(&Packet::PubRel(PubResponse::success(rec.packet_id)))?,
                Packet::Disconnect(d) => bail!("DISCONNECT from the broker: {:?}", d.reason),
                _ => {}
            }
        }
        Ok(())
    }

    /// Ends a message's flow; a late answer to a timed-out one is ignored.
    fn acknowledged(&mut self, packet_id: u16, reason: ReasonCode) {
        if let Some(sent) = self.pending.remove(&packet_id) {
            if reason.is_error() {
                self.recorder.failure();
            } else {
                self.recorder.success(sent.elapsed());
            }
        }
    }

    fn ping_if_due(&mut self, now: Instant) -> anyhow::Result<()> {
        if now.duration_since(self.last_ping) >= PING_EVERY {
            self.client.send(&Packet::PingReq)?;
            self.last_ping = now;
        }
        Ok(())
    }

    /// Counts a lost connection (its unacknowledged messages failed) and
    /// disconnects.
    async fn finish(mut self, result: anyhow::Result<()>) {
        if let Err(e) = result {
            note_error("publisher failed", &e);
            for _ in 0..self.pending.len().max(1) {
                self.recorder.failure();
            }
            return;
        }
        let _ = self.client.flush().await;
        self.client.disconnect().await;
    }
}
