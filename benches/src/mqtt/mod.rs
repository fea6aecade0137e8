//! `tidemq-bench mqtt conn|pub|sub|offline`: MQTT loads on any broker.
//!
//! | module | what it holds |
//! |---|---|
//! | [`args`] | the flags of the four loads |
//! | [`client`] | a minimal client on the `tidemq-proto` codec |
//! | [`conn`] | `conn`: open connections as fast as allowed, hold them, report the rate |
//! | [`publish`] | `pub`: publishers at a fixed rate (QoS 0) or a full inflight window (QoS 1/2) |
//! | [`subscribe`] | `sub`: subscribers measuring end-to-end latency, on clean or persistent sessions |
//! | [`offline`] | `offline`: persistent sessions that go away, then QoS 1 messages stored for them |
//!
//! Every payload starts with its send time, so a subscriber on the same
//! machine measures publish-to-delivery latency without any coordination
//! with the publishing process:
//!
//! ```text
//! | send time: u64 nanoseconds since the UNIX epoch, little-endian | filler up to --payload-size |
//! ```
//!
//! Every load prints a line per second and a final report through the
//! shared [`Recorder`].

pub mod args;
pub mod client;
pub mod conn;
pub mod offline;
pub mod publish;
pub mod resume;
pub mod subscribe;
pub mod target;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use self::args::{CommonArgs, ConnArgs, OfflineArgs, PubArgs, SubArgs};
use self::client::{Client, SessionKind};
use crate::recorder::{FinalReport, Recorder};
use crate::storage::Output;

/// Keep alive of publishers and subscribers; they ping at half of it.
const KEEP_ALIVE_SECS: u16 = 60;

/// The MQTT loads.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MqttCommand {
    /// Open connections as fast as allowed, hold them all, report the connect rate.
    Conn(ConnArgs),
    /// Publishers, each on its own topic.
    Pub(PubArgs),
    /// Subscribers measuring deliveries and end-to-end latency.
    Sub(SubArgs),
    /// Persistent sessions subscribe and disconnect, then publishers send
    /// QoS 1 messages the broker stores for them while they are away.
    Offline(OfflineArgs),
}

/// Runs one load and prints its final report.
pub async fn run(command: &MqttCommand) -> anyhow::Result<()> {
    match command {
        MqttCommand::Conn(args) => {
            let outcome = conn::conn(args).await?;
            let load = serde_json::json!({
                "load": "conn",
                "count": args.common.count,
                "concurrency": args.common.concurrency,
                "mqtt_version": args.common.mqtt_version,
                "subscribe": args.subscribe,
                "persistent": args.persistent,
                "held": outcome.held,
                "broker_memory": outcome.memory,
                "opening_cpu": outcome.cpu,
            });
            print_report(args.common.output, &load, &outcome.report);
        }
        MqttCommand::Pub(args) => {
            let report = publish::publish(args).await?;
            let load = serde_json::json!({
                "load": "pub",
                "count": args.common.count,
                "mqtt_version": args.common.mqtt_version,
                "topic": args.topic,
                "qos": args.qos,
                "payload_size": args.payload_size,
                "rate_per_client": args.rate_per_client,
                "inflight": args.inflight,
            });
            print_report(args.common.output, &load, &report);
        }
        MqttCommand::Sub(args) => {
            let report = subscribe::subscribe(args).await?;
            let load = serde_json::json!({
                "load": "sub",
                "count": args.common.count,
                "mqtt_version": args.common.mqtt_version,
                "topic": args.topic,
                "qos": args.qos,
                "persistent": args.persistent,
            });
            print_report(args.common.output, &load, &report);
        }
        MqttCommand::Offline(args) => {
            let report = offline::offline(args).await?;
            let load = serde_json::json!({
                "load": "offline",
                "sessions": args.common.count,
                "concurrency": args.common.concurrency,
                "mqtt_version": args.common.mqtt_version,
                "topic": args.topic(0),
                "messages": args.messages,
                "expected": args.expected(),
                "payload_size": args.payload_size,
                "publishers": args.publishers,
                "inflight": args.inflight,
            });
            match (args.common.output, &report.resume) {
                (Output::Table, Some(resume)) => println!(
                    "sessions back (CONNACK, session present):\n{}\n\
                     sessions drained (last of {} messages):\n{}",
                    resume.resumed, args.messages, resume.drained
                ),
                (Output::Table, None) => println!(
                    "phase 1, sessions subscribed and disconnected:\n{}\n\
                     phase 2, messages acknowledged ({} expected):\n{}",
                    report.sessions,
                    args.expected(),
                    report.messages
                ),
                (Output::Json, Some(resume)) => println!(
                    "{}",
                    serde_json::json!({
                        "load": load,
                        "report": resume.resumed,
                        "drained": resume.drained,
                    })
                ),
                // `report` is the phase the rate is about, as in every load.
                (Output::Json, None) => println!(
                    "{}",
                    serde_json::json!({
                        "load": load,
                        "sessions": report.sessions,
                        "report": report.messages,
                    })
                ),
            }
        }
    }
    Ok(())
}

/// Nanoseconds since the UNIX epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A payload of `size` bytes (at least 8) stamped with the current time.
pub fn stamped_payload(size: usize) -> Bytes {
    let mut payload = BytesMut::with_capacity(size.max(8));
    payload.put_u64_le(now_nanos());
    payload.resize(size.max(8), 0xA5);
    payload.freeze()
}

/// The send time stamped into a payload, if it is long enough to hold one.
pub fn sent_at(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Prints the first few errors of a run on stderr; a thousand identical
/// lines would hide the report.
fn note_error(what: &str, error: &dyn std::fmt::Display) {
    static SHOWN: AtomicU64 = AtomicU64::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("{what}: {error}");
    }
}

/// Connects `common.count` clients with sessions of kind `session` and at
/// most `common.concurrency` handshakes in flight, recording each
/// handshake's latency (TCP connect plus CONNECT → CONNACK), failure or
/// timeout. Returns the clients that connected, with their index, in index
/// order.
async fn connect_all(
    common: &CommonArgs,
    role: char,
    keep_alive: u16,
    session: SessionKind,
    recorder: &Arc<Recorder>,
) -> anyhow::Result<Vec<(usize, Client)>> {
    let target = &Arc::new(common.target()?);
    let permits = Arc::new(Semaphore::new(common.concurrency));
    let mut tasks = JoinSet::new();
    for index in 0..common.count {
        let (permits, recorder) = (Arc::clone(&permits), Arc::clone(recorder));
        let (target, id) = (Arc::clone(target), common.client_id(role, index));
        let (protocol, timeout) = (common.protocol(), common.timeout());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            let started = Instant::now();
            let connect = Client::connect(&target, id, protocol, keep_alive, session);
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(client)) => {
                    recorder.success(started.elapsed());
                    Some((index, client))
                }
                Ok(Err(e)) => {
                    recorder.failure();
                    note_error("connect failed", &e);
                    None
                }
                Err(_) => {
                    recorder.timeout();
                    None
                }
            }
        });
    }
    let mut clients = Vec::with_capacity(common.count);
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Some(client)) = joined {
            clients.push(client);
        }
    }
    clients.sort_unstable_by_key(|(index, _)| *index);
    Ok(clients)
}

/// Connects the clients of a pub or sub load, telling on stderr how that went.
async fn connect_clients(
    common: &CommonArgs,
    role: char,
    session: SessionKind,
    what: &str,
) -> anyhow::Result<Vec<(usize, Client)>> {
    let recorder = Arc::new(Recorder::new(0));
    let clients = connect_all(common, role, KEEP_ALIVE_SECS, session, &recorder).await?;
    let report = recorder.report();
    eprintln!(
        "connected {}/{} {what} in {:.2}s (failed {}, timeout {}, p99 {}us)",
        clients.len(),
        common.count,
        report.seconds,
        report.failed,
        report.timeout,
        report.p99_us
    );
    anyhow::ensure!(!clients.is_empty(), "no {what} could connect");
    Ok(clients)
}

/// Prints a load's final report: a table, or one JSON object holding the
/// load's parameters under `load` and the figures under `report`.
pub fn print_report(output: Output, load: &serde_json::Value, report: &FinalReport) {
    match output {
        Output::Table => println!("{report}"),
        Output::Json => println!("{}", serde_json::json!({ "load": load, "report": report })),
    }
}

#[cfg(test)]
mod tests;
