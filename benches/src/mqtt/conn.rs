//! `tidemq-bench mqtt conn`: opens `--count` connections with at most
//! `--concurrency` handshakes in flight, optionally subscribes each to a
//! filter, holds every one until the last has connected (and `--hold-secs`
//! more), then closes them all.
//!
//! A success is a CONNACK that accepts; its latency is TCP connect plus
//! CONNECT → CONNACK. The report's average rate is successes over the wall
//! time of the opening phase, which ends when the last handshake finished.
//!
//! With `--broker-pid`, the broker's resident memory is read before the
//! first connection and again once all are held and the broker has had
//! `--settle-secs` to settle: the difference over the connections held is the
//! memory one idle connection costs it.
//!
//! The CPU time the tool and (with `--broker-pid`) the broker spent during
//! the opening phase, per connection, is reported too: on one machine the
//! two share the cores, so the tool's share bounds the rate any broker can
//! be measured at.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tidemq_proto::mqtt::QoS;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::{Client, SessionKind};
use super::{ConnArgs, connect_all};
use crate::recorder::{FinalReport, Recorder, spawn_ticker};

/// What a `conn` load found.
#[derive(Debug)]
pub struct ConnOutcome {
    /// The connect report.
    pub report: FinalReport,
    /// Connections held open (and subscribed, with `--subscribe`).
    pub held: usize,
    /// The broker's memory, with `--broker-pid`.
    pub memory: Option<BrokerMemory>,
    /// CPU time spent while the connections were opened.
    pub cpu: OpeningCpu,
}

/// CPU time (user + system) per connection opened, over the opening phase.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct OpeningCpu {
    /// This process's, microseconds.
    pub tool_us_per_connect: f64,
    /// The broker's, with `--broker-pid`, microseconds.
    pub broker_us_per_connect: Option<f64>,
}

/// The broker's resident memory before and with the connections.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BrokerMemory {
    /// VmRSS before the first connection, bytes.
    pub rss_before: u64,
    /// VmRSS with every connection held, bytes.
    pub rss_held: u64,
    /// `(rss_held - rss_before) / held`.
    pub bytes_per_connection: u64,
}

/// Runs the load, printing a line per second.
pub async fn conn(args: &ConnArgs) -> anyhow::Result<ConnOutcome> {
    args.common.validate()?;
    let rss_before = args.broker_pid.map(rss_bytes).transpose()?;
    let recorder = Arc::new(Recorder::new(0));
    let ticker = {
        let recorder = Arc::clone(&recorder);
        spawn_ticker(args.common.output, move || recorder.tick())
    };
    // Keep alive 0: held connections send nothing, however long opening the
    // last of them takes.
    let session = if args.persistent {
        SessionKind::Persistent
    } else {
        SessionKind::Clean
    };
    let tool_before = cpu_seconds(None)?;
    let broker_before = args
        .broker_pid
        .map(|pid| cpu_seconds(Some(pid)))
        .transpose()?;
    let clients = connect_all(&args.common, 'c', 0, session, &recorder).await?;
    let report = recorder.report();
    let per_connect = |spent: f64| spent * 1e6 / (clients.len().max(1) as f64);
    let cpu = OpeningCpu {
        tool_us_per_connect: per_connect(cpu_seconds(None)? - tool_before),
        broker_us_per_connect: match (args.broker_pid, broker_before) {
            (Some(pid), Some(before)) => Some(per_connect(cpu_seconds(Some(pid))? - before)),
            _ => None,
        },
    };
    ticker.abort();
    let clients = match &args.subscribe {
        Some(filter) => subscribe_each(args, filter, clients).await,
        None => clients,
    };
    let held = clients.len();
    let memory = match (args.broker_pid, rss_before) {
        (Some(pid), Some(rss_before)) => {
            tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
            let rss_held = rss_bytes(pid)?;
            let grown = rss_held.saturating_sub(rss_before);
            Some(BrokerMemory {
                rss_before,
                rss_held,
                bytes_per_connection: grown / (held.max(1) as u64),
            })
        }
        _ => None,
    };
    if let Some(memory) = &memory {
        eprintln!(
            "broker memory: {} MiB before, {} MiB with {held} connections held: {} bytes each",
            memory.rss_before >> 20,
            memory.rss_held >> 20,
            memory.bytes_per_connection
        );
    }
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let mut closing = JoinSet::new();
    for (_, client) in clients {
        closing.spawn(client.disconnect());
    }
    while closing.join_next().await.is_some() {}
    Ok(ConnOutcome {
        report,
        held,
        memory,
        cpu,
    })
}

/// Subscribes every client to `filter` (`%i`: its index), at most
/// `--concurrency` at a time; a client whose SUBACK does not come is
/// closed and left out.
async fn subscribe_each(
    args: &ConnArgs,
    filter: &str,
    clients: Vec<(usize, Client)>,
) -> Vec<(usize, Client)> {
    let permits = Arc::new(Semaphore::new(args.common.concurrency));
    let timeout = args.common.timeout();
    let mut tasks = JoinSet::new();
    for (index, mut client) in clients {
        let permits = Arc::clone(&permits);
        let filter = filter.replace("%i", &index.to_string());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            match client.subscribe(filter, QoS::AtMostOnce, timeout).await {
                Ok(()) => Some((index, client)),
                Err(e) => {
                    super::note_error("subscribe failed", &e);
                    None
                }
            }
        });
    }
    let mut subscribed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Some(client)) = joined {
            subscribed.push(client);
        }
    }
    subscribed
}

/// A process's resident memory (VmRSS), bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("no VmRSS in {path}"))?
        .parse()?;
    Ok(kib * 1024)
}

/// The CPU time (user + system) a process has used, seconds; this one's
/// with `None`.
pub fn cpu_seconds(pid: Option<u32>) -> anyhow::Result<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name is in parentheses and may hold spaces, so fields are
    // counted after its last parenthesis, from 3 (the state); utime and
    // stime are 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("no command name in {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| -> anyhow::Result<f64> {
        let field = fields
            .get(n - 3)
            .with_context(|| format!("{path} has no field {n}"))?;
        Ok(field.parse::<f64>()?)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(14)? + ticks(15)?) / per_second)
}
