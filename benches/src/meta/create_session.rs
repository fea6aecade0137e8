//! `tidemq-bench meta create-session`: `--concurrency` workers creating
//! sessions through [`MetaClient::create_sessions`], the call a broker makes
//! when a client connects, with the client's channel pool and leader
//! following.
//!
//! By default each worker is a closed loop: it takes the next `--batch`
//! session numbers, sends them and waits for the answer (at most
//! `--timeout-ms`, after which the call is cancelled and counted as a
//! timeout) before sending the next. With `--rate` the workers are an open
//! loop: each sends on a fixed schedule, and latency counts from when a
//! request was due. With `--batch 1` a session goes through
//! `MetaClient::put_session`, which coalesces the writes of all workers
//! waiting at the same time into one request, as a broker's CONNECTs are;
//! `--no-coalesce` sends each in a request of its own. The run stops after `--count` sessions
//! were handed out, after `--duration-secs`, or when told to stop, and ends
//! when every worker's last request is answered.
//!
//! Before the load each client is asked for the node list until the service
//! answers (at most [`READY_WITHIN`]), which waits out an election, teaches
//! the client the leader and opens its channels, so neither counts against
//! the first requests.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tidemq_meta::MetaClient;
use tidemq_proto::grpc::v1 as pb;
use tokio::task::JoinSet;

use super::args::{CreateSessionArgs, default_run_id};
use super::note_error;
use super::stats::{CreateSessionReport, Stats};
use crate::recorder::spawn_ticker;

/// How long the service may take to answer the first call.
pub const READY_WITHIN: Duration = Duration::from_secs(10);
/// Calls per client before the load: `MetaClient` opens 4 channels per
/// address and picks one per call, round-robin.
const WARM_UP_CALLS: usize = 4;

/// Runs the load, printing a line per second, until it is done or `stop` is
/// set, and returns the final report.
pub async fn create_session(
    args: &CreateSessionArgs,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<CreateSessionReport> {
    args.validate()?;
    let run_id = args.run_id.clone().unwrap_or_else(default_run_id);
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let client = MetaClient::with_deadline([args.addr()], args.timeout())?;
        wait_ready(&client, &args.addr()).await?;
        for _ in 1..WARM_UP_CALLS {
            client.list_nodes().await?;
        }
        clients.push(client);
    }

    let plan = Arc::new(Plan {
        key_prefix: args.key_prefix(&run_id),
        count: args.count_limit(),
        deadline: args
            .duration_secs
            .map(|secs| Instant::now() + Duration::from_secs(secs)),
        batch: u64::from(args.batch),
        next: AtomicU64::new(0),
        stop,
        template: pb::Session {
            client_key: String::new(),
            node_id: 1,
            created_at_ms: 0,
            expiry_secs: args.session_expiry_secs,
            connected: true,
            payload: vec![0xA5; args.payload_size],
        },
    });
    let stats = Arc::new(Stats::new(args.batch));
    let ticker = {
        let stats = Arc::clone(&stats);
        spawn_ticker(args.output, move || stats.tick())
    };
    let mut workers = JoinSet::new();
    for i in 0..args.concurrency {
        let client = clients[i % clients.len()].clone();
        let (plan, stats, timeout) = (Arc::clone(&plan), Arc::clone(&stats), args.timeout());
        let pace = Pace::new(args, i);
        workers.spawn(worker(client, plan, stats, timeout, pace));
    }
    while workers.join_next().await.is_some() {}
    ticker.abort();
    Ok(stats.report(plan.key_prefix.clone()))
}

/// Calls the service until it answers, or fails after [`READY_WITHIN`].
async fn wait_ready(client: &MetaClient, addr: &str) -> anyhow::Result<()> {
    let give_up = Instant::now() + READY_WITHIN;
    loop {
        match client.list_nodes().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= give_up => {
                return Err(e).with_context(|| {
                    format!("the meta service at {addr} did not answer in {READY_WITHIN:?}")
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What the workers share: which sessions are left and how to build them.
struct Plan {
    key_prefix: String,
    count: Option<u64>,
    deadline: Option<Instant>,
    batch: u64,
    next: AtomicU64,
    stop: Arc<AtomicBool>,
    template: pb::Session,
}

impl Plan {
    /// The numbers of the next request's sessions, or `None` when the run is over.
    fn next_batch(&self) -> Option<Range<u64>> {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let start = self.next.fetch_add(self.batch, Ordering::Relaxed);
        let end = start.saturating_add(self.batch);
        let end = self.count.map_or(end, |count| end.min(count));
        (start < end).then_some(start..end)
    }

    fn sessions(&self, numbers: Range<u64>) -> Vec<pb::Session> {
        numbers
            .map(|n| pb::Session {
                client_key: format!("{}{n}", self.key_prefix),
                ..self.template.clone()
            })
            .collect()
    }
}

/// How a worker sends its requests.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Open loop: the time between one worker's requests, and this
    /// worker's offset in it (workers spread evenly over the period).
    schedule: Option<(Duration, Duration)>,
    /// One session per call through `MetaClient::put_session`.
    coalesce: bool,
}

impl Pace {
    fn new(args: &CreateSessionArgs, worker: usize) -> Pace {
        let schedule = args.rate.map(|rate| {
            let per_worker = rate as f64 / (args.concurrency as f64 * f64::from(args.batch));
            let period = Duration::from_secs_f64(1.0 / per_worker);
            (
                period,
                period.mul_f64(worker as f64 / args.concurrency as f64),
            )
        });
        Pace {
            schedule,
            coalesce: args.batch == 1 && !args.no_coalesce,
        }
    }
}

/// One worker. Closed loop: a request, its answer, the next request. Open
/// loop: a request each period, its latency counted from when it was due.
async fn worker(
    client: MetaClient,
    plan: Arc<Plan>,
    stats: Arc<Stats>,
    timeout: Duration,
    pace: Pace,
) {
    let mut due = Instant::now() + pace.schedule.map_or(Duration::ZERO, |(_, offset)| offset);
    while let Some(numbers) = plan.next_batch() {
        if pace.schedule.is_some() {
            tokio::time::sleep_until(due.into()).await;
        } else {
            due = Instant::now();
        }
        let mut sessions = plan.sessions(numbers);
        let asked = sessions.len();
        let call = async {
            match sessions.pop() {
                Some(session) if pace.coalesce => client.put_session(session).await.map(|()| 1),
                Some(session) => {
                    sessions.push(session);
                    client.create_sessions(sessions).await
                }
                None => Ok(0),
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(created)) => stats.created(due.elapsed(), asked, created),
            Ok(Err(e)) => {
                note_error("create_sessions failed", &e);
                stats.error(&e);
            }
            Err(_) => stats.timeout(),
        }
        if let Some((period, _)) = pace.schedule {
            due += period;
        }
    }
}
