//! `tidemq-bench mqtt sub`: `--count` subscribers measuring deliveries and
//! end-to-end latency (arrival time minus the send time stamped in the
//! payload, so publishers must run on the same machine).
//!
//! Once every SUBACK is in, `ready: N subscribers` goes to stderr: a script
//! starts its publishers after that line. The run stops after
//! `--duration-secs`, after `--expect` messages, or after `--idle-secs`
//! without a message, whichever comes first; the average rate is over the
//! time from the first message to the last.
//!
//! With `--persistent` the subscribers ask for persistent sessions (clean
//! session 0, or a 5.0 session expiry of 3600 s): the broker then stores
//! their QoS 1/2 messages before it acknowledges them to the publisher, and
//! keeps the sessions after the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use tidemq_proto::mqtt::{Packet, PubResponse, QoS};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::args::topic_for;
use super::client::Client;
use super::{SubArgs, connect_clients, note_error, now_nanos, sent_at};
use crate::recorder::{FinalReport, Recorder, spawn_ticker};

/// How often the stop conditions are checked.
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// PINGREQ interval: half the keep alive.
const PING_EVERY: Duration = Duration::from_secs(super::KEEP_ALIVE_SECS as u64 / 2);

/// Runs the load, printing a line per second, and returns the final report.
pub async fn subscribe(args: &SubArgs) -> anyhow::Result<FinalReport> {
    args.common.validate()?;
    let clients = connect_clients(&args.common, 's', args.session(), "subscribers").await?;
    let clients = subscribe_all(args, clients).await?;
    eprintln!("ready: {} subscribers", clients.len());

    let recorder = Arc::new(Recorder::new(0));
    let progress = Arc::new(Progress::new(recorder.started()));
    let ticker = {
        let recorder = Arc::clone(&recorder);
        spawn_ticker(args.common.output, move || recorder.tick())
    };
    let (stop, stopped) = watch::channel(false);
    let mut subscribers = JoinSet::new();
    for client in clients {
        let (recorder, progress) = (Arc::clone(&recorder), Arc::clone(&progress));
        subscribers.spawn(receive(client, recorder, progress, stopped.clone()));
    }

    let duration = Duration::from_secs(args.duration_secs);
    let idle = Duration::from_secs(args.idle_secs);
    let mut check = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            joined = subscribers.join_next() => if joined.is_none() {
                break; // every connection is gone
            },
            _ = check.tick() => {
                let elapsed = recorder.started().elapsed();
                let received = progress.received.load(Ordering::Relaxed);
                let idle_for = progress.last().map(|last| elapsed.saturating_sub(last));
                if elapsed >= duration
                    || (args.expect > 0 && received >= args.expect)
                    || (!idle.is_zero() && idle_for.is_some_and(|i| i >= idle))
                {
                    break;
                }
            }
        }
    }
    let _ = stop.send(true);
    while subscribers.join_next().await.is_some() {}
    ticker.abort();
    let seconds = match (progress.first(), progress.last()) {
        (Some(first), Some(last)) if last > first => (last - first).as_secs_f64(),
        _ => recorder.started().elapsed().as_secs_f64(),
    };
    Ok(recorder.report_over(seconds))
}

/// Subscribes every client to its filter, all at once; the ones refused
/// are dropped.
async fn subscribe_all(
    args: &SubArgs,
    clients: Vec<(usize, Client)>,
) -> anyhow::Result<Vec<Client>> {
    let acks = Arc::new(Recorder::new(0));
    let mut tasks = JoinSet::new();
    for (index, mut client) in clients {
        let (base, qos, timeout) = (
            topic_for(&args.topic, index),
            args.qos(),
            args.common.timeout(),
        );
        let (filters, acks) = (args.filters_per_client, Arc::clone(&acks));
        tasks.spawn(async move {
            for j in 0..filters {
                let filter = if j == 0 {
                    base.clone()
                } else {
                    format!("{base}/f{j}")
                };
                let sent = Instant::now();
                if let Err(e) = client.subscribe(filter, qos, timeout).await {
                    acks.failure();
                    note_error("subscribe failed", &e);
                    return None;
                }
                acks.success(sent.elapsed());
            }
            Some(client)
        });
    }
    let mut subscribed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        subscribed.extend(joined.ok().flatten());
    }
    anyhow::ensure!(!subscribed.is_empty(), "no subscription was acknowledged");
    let report = acks.report();
    eprintln!(
        "subscribed: {} filters in {:.2} s, {:.0}/s, SUBACK p50={}us p99={}us max={}us, {} failed",
        report.success,
        report.seconds,
        report.avg_ops_per_sec,
        report.p50_us,
        report.p99_us,
        report.max_us,
        report.failed
    );
    Ok(subscribed)
}

/// Messages received by all subscribers, and when the first and last came.
struct Progress {
    started: Instant,
    received: AtomicU64,
    /// Microseconds since `started`; `u64::MAX` until a message came.
    first_us: AtomicU64,
    last_us: AtomicU64,
}

impl Progress {
    fn new(started: Instant) -> Self {
        Self {
            started,
            received: AtomicU64::new(0),
            first_us: AtomicU64::new(u64::MAX),
            last_us: AtomicU64::new(0),
        }
    }

    fn message(&self) {
        let at = self.started.elapsed().as_micros() as u64;
        self.received.fetch_add(1, Ordering::Relaxed);
        self.first_us.fetch_min(at, Ordering::Relaxed);
        self.last_us.fetch_max(at, Ordering::Relaxed);
    }

    fn first(&self) -> Option<Duration> {
        match self.first_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn last(&self) -> Option<Duration> {
        self.first()?;
        Some(Duration::from_micros(self.last_us.load(Ordering::Relaxed)))
    }
}

/// One subscriber: records every PUBLISH and acknowledges it as its QoS
/// asks, until told to stop or the connection fails.
async fn receive(
    mut client: Client,
    recorder: Arc<Recorder>,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        let result = tokio::select! {
            read = client.fill() => match read {
                Ok(()) => handle_incoming(&mut client, &recorder, &progress),
                Err(e) => Err(e),
            },
            _ = ping.tick() => client.send(&Packet::PingReq),
            _ = stop.changed() => break,
        };
        let flushed = match result {
            Ok(()) => client.flush().await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = flushed {
            note_error("subscriber failed", &e);
            recorder.failure();
            return;
        }
    }
    client.disconnect().await;
}

/// Handles every whole packet read.
fn handle_incoming(
    client: &mut Client,
    recorder: &Recorder,
    progress: &Progress,
) -> anyhow::Result<()> {
    while let Some(packet) = client.next_buffered()? {
        match packet {
            Packet::Publish(publish) => {
                match sent_at(&publish.payload) {
                    Some(sent) => {
                        recorder.success(Duration::from_nanos(now_nanos().saturating_sub(sent)))
                    }
                    None => recorder.failure(),
                }
                progress.message();
                match (publish.qos, publish.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        client.send(&Packet::PubAck(PubResponse::success(id)))?
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        client.send(&Packet::PubRec(PubResponse::success(id)))?
                    }
                    _ => {}
                }
            }
            Packet::PubRel(rel) => {
                client.send(&Packet::PubComp(PubResponse::success(rel.packet_id)))?
            }
            Packet::Disconnect(d) => bail!("DISCONNECT from the broker: {:?}", d.reason),
            _ => {}
        }
    }
    Ok(())
}
