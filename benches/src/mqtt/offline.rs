//! `tidemq-bench mqtt offline`: QoS 1 messages stored for persistent
//! sessions that are away.
//!
//! 1. `--sessions` subscribers connect with persistent sessions (clean
//!    session 0, or a 5.0 session expiry of 3600 s), at most
//!    `--concurrency` at a time. Each subscribes at QoS 1 to its own topic
//!    `{prefix}/{i}`, sends DISCONNECT and waits for the broker to close
//!    the connection. A success is a session left offline; its latency runs
//!    from the TCP connect to the SUBACK.
//! 2. `--publishers` connections publish `--messages` QoS 1 messages to
//!    each of those topics: publisher j takes the topics of sessions
//!    j, j + publishers, j + 2 × publishers, ... and sends one message to
//!    each in turn, keeping `--inflight` unacknowledged, until every message
//!    is answered. The broker acknowledges a message once it is stored for
//!    its offline session. A success is a PUBACK, its latency runs from
//!    encoding the PUBLISH; the rate is over the phase's time, from the
//!    first publish to the last answer (connecting the publishers is not
//!    counted).
//!
//! `--phases park|publish` runs one of them (sessions parked on one node of
//! a cluster, their messages published on another, say); `--phases
//! resume` brings parked sessions back (`resume.rs`). Each phase prints
//! a line per second. The sessions and their messages
//! stay on the broker after the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemq_proto::mqtt::QoS;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::args::Phases;
use super::client::{Client, SessionKind};
use super::publish::Publisher;
use super::resume::{ResumeReport, resume_sessions};
use super::target::Target;
use super::{CommonArgs, KEEP_ALIVE_SECS, OfflineArgs, connect_clients, note_error};
use crate::recorder::{FinalReport, Recorder, spawn_ticker};

/// The figures of the phases run (empty for those not run).
#[derive(Debug, Clone)]
pub struct OfflineReport {
    /// Phase 1: sessions subscribed and left offline.
    pub sessions: FinalReport,
    /// Phase 2: messages acknowledged.
    pub messages: FinalReport,
    /// `--phases resume`: the sessions back.
    pub resume: Option<ResumeReport>,
}

/// Runs both phases, printing a line per second, and returns their reports.
pub async fn offline(args: &OfflineArgs) -> anyhow::Result<OfflineReport> {
    args.common.validate()?;
    anyhow::ensure!(
        args.publishers > 0 && args.messages > 0,
        "--publishers and --messages must be above zero"
    );
    if args.phases == Phases::Resume {
        let resume = resume_sessions(args).await?;
        eprintln!(
            "resume: {}/{} sessions back in {:.2}s ({:.0}/s, failed {}, timeout {}, \
             CONNACK p99 {}us); {} drained (failed {}, timeout {}, last message p99 {}us)",
            resume.resumed.success,
            args.common.count,
            resume.resumed.seconds,
            resume.resumed.avg_ops_per_sec,
            resume.resumed.failed,
            resume.resumed.timeout,
            resume.resumed.p99_us,
            resume.drained.success,
            resume.drained.failed,
            resume.drained.timeout,
            resume.drained.p99_us
        );
        return Ok(OfflineReport {
            sessions: FinalReport::default(),
            messages: FinalReport::default(),
            resume: Some(resume),
        });
    }
    let sessions = match args.phases {
        Phases::Both | Phases::Park => {
            let sessions = park_sessions(args).await?;
            eprintln!(
                "phase 1: {}/{} sessions subscribed and offline in {:.2}s \
                 ({:.0}/s, failed {}, timeout {}, subscribe p99 {}us)",
                sessions.success,
                args.common.count,
                sessions.seconds,
                sessions.avg_ops_per_sec,
                sessions.failed,
                sessions.timeout,
                sessions.p99_us
            );
            anyhow::ensure!(sessions.success > 0, "no session could subscribe");
            sessions
        }
        Phases::Publish | Phases::Resume => FinalReport::default(),
    };
    let messages = match args.phases {
        Phases::Both | Phases::Publish => {
            let messages = publish_to_sessions(args).await?;
            eprintln!(
                "phase 2: {}/{} messages acknowledged in {:.2}s \
                 ({:.0}/s, failed {}, timeout {}, PUBACK p99 {}us)",
                messages.success,
                args.expected(),
                messages.seconds,
                messages.avg_ops_per_sec,
                messages.failed,
                messages.timeout,
                messages.p99_us
            );
            messages
        }
        Phases::Park | Phases::Resume => FinalReport::default(),
    };
    Ok(OfflineReport {
        sessions,
        messages,
        resume: None,
    })
}

/// Phase 1: every session connects, subscribes and goes away, at most
/// `--concurrency` at a time.
async fn park_sessions(args: &OfflineArgs) -> anyhow::Result<FinalReport> {
    let common = &args.common;
    let recorder = Arc::new(Recorder::new(0));
    let ticker = {
        let recorder = Arc::clone(&recorder);
        spawn_ticker(common.output, move || recorder.tick())
    };
    let permits = Arc::new(Semaphore::new(common.concurrency));
    let mut tasks = JoinSet::new();
    let target = Arc::new(common.target()?);
    for index in 0..common.count {
        // Taken before spawning: at most `concurrency` tasks exist at once.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let recorder = Arc::clone(&recorder);
        let (target, id, topic) = (
            Arc::clone(&target),
            common.client_id('o', index),
            args.topic(index),
        );
        let (protocol, timeout) = (common.protocol(), common.timeout());
        tasks.spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, park(&target, id, topic, protocol, timeout)).await {
                Ok(Ok(subscribed)) => recorder.success(subscribed),
                Ok(Err(e)) => {
                    recorder.failure();
                    note_error("session failed", &e);
                }
                Err(_) => recorder.timeout(),
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    ticker.abort();
    Ok(recorder.report())
}

/// Connects one persistent session, subscribes it at QoS 1 to `topic` and
/// disconnects it; returns the time from the TCP connect to the SUBACK.
async fn park(
    target: &Target,
    id: String,
    topic: String,
    protocol: tidemq_proto::mqtt::Protocol,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut client = Client::connect(
        target,
        id,
        protocol,
        KEEP_ALIVE_SECS,
        SessionKind::Persistent,
    )
    .await?;
    client.subscribe(topic, QoS::AtLeastOnce, timeout).await?;
    let subscribed = started.elapsed();
    client.disconnect_and_wait(timeout).await?;
    Ok(subscribed)
}

/// Phase 2: the publishers send `--messages` to every session's topic.
async fn publish_to_sessions(args: &OfflineArgs) -> anyhow::Result<FinalReport> {
    let sessions = args.common.count;
    let publishers = args.publishers.min(sessions);
    let common = CommonArgs {
        count: publishers,
        ..args.common.clone()
    };
    let clients = connect_clients(&common, 'p', SessionKind::Clean, "publishers").await?;
    let recorder = Arc::new(Recorder::new(args.payload_size.max(8) as u64));
    let ticker = {
        let recorder = Arc::clone(&recorder);
        spawn_ticker(common.output, move || recorder.tick())
    };
    let mut tasks = JoinSet::new();
    let mut assigned = 0u64;
    for (index, client) in clients {
        let topics: Vec<String> = (index..sessions)
            .step_by(publishers)
            .map(|session| args.topic(session))
            .collect();
        let messages = args.messages.saturating_mul(topics.len() as u64);
        assigned += messages;
        let publisher = Publisher::new(
            client,
            topics,
            QoS::AtLeastOnce,
            args.payload_size,
            Arc::clone(&recorder),
        );
        tasks.spawn(publisher.run_acked(args.inflight, common.timeout(), None, messages));
    }
    // Messages of publishers that could not connect, or lost their
    // connection before sending them, failed.
    let mut unsent = args.expected().saturating_sub(assigned);
    while let Some(joined) = tasks.join_next().await {
        unsent += joined.unwrap_or(0);
    }
    let report = recorder.report();
    ticker.abort();
    Ok(FinalReport {
        failed: report.failed + unsent,
        ..report
    })
}
