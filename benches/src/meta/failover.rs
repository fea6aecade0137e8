//! `tidemq-bench meta failover`: how long a 3-node meta cluster of real
//! `tidemq-meta` processes is without a leader after its leader is killed.
//!
//! Each round waits until every group has one leader that all live nodes
//! agree on, SIGKILLs the leader of the metadata group (with writers
//! creating sessions throughout when `--writers` is above 0), and measures
//! until both survivors agree on a new leader for every group. The killed
//! node is then restarted and caught up before the next round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use tidemq_meta::MetaClient;
use tidemq_proto::grpc::v1 as pb;

use crate::storage::Output;

/// Flags of `tidemq-bench meta failover`.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// The `tidemq-meta` binary (default: next to this one).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Leaders killed, one per round.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Data groups besides the metadata group.
    #[arg(long, default_value_t = 2)]
    pub data_groups: u32,
    /// Raft heartbeat (milliseconds).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Election timeout `MIN-MAX` (milliseconds), as `tidemq-meta` takes it.
    #[arg(long, default_value = "1000-2000")]
    pub election_timeout_ms: String,
    /// Closed-loop writers creating sessions throughout (0: idle cluster).
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Output format of the final report.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// What `meta failover` measured.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// Time without an agreed leader in every group, per round (ms).
    pub rounds_ms: Vec<f64>,
    /// Smallest of them.
    pub min_ms: f64,
    /// Median.
    pub median_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Sessions the writers created.
    pub writes: u64,
    /// Writes that failed (retried by the client for up to its deadline).
    pub write_errors: u64,
}

impl std::fmt::Display for FailoverReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rounds: Vec<String> = self.rounds_ms.iter().map(|r| format!("{r:.0}")).collect();
        write!(
            f,
            "failover: min={:.0}ms median={:.0}ms max={:.0}ms rounds=[{}] writes={} write_errors={}",
            self.min_ms,
            self.median_ms,
            self.max_ms,
            rounds.join(", "),
            self.writes,
            self.write_errors
        )
    }
}

struct Node {
    id: u64,
    addr: String,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self, bin: &Path) -> anyhow::Result<()> {
        let child = Command::new(bin)
            .args(&self.args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Addresses on free loopback ports, all held until every one is picked.
fn free_addrs(n: usize) -> anyhow::Result<Vec<String>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.to_string()))
        .collect()
}

/// The leader of every group, if every node in `addrs` answers and agrees.
async fn agreed(client: &MetaClient, addrs: &[&str]) -> Option<BTreeMap<u32, u64>> {
    let mut agreed: Option<BTreeMap<u32, u64>> = None;
    for addr in addrs {
        let groups: Vec<pb::GroupStatus> = client.raft_status(addr).await.ok()?;
        let leaders: BTreeMap<u32, u64> = groups
            .iter()
            .map(|g| Some((g.group, g.leader_id?)))
            .collect::<Option<_>>()?;
        match &agreed {
            Some(seen) if *seen != leaders => return None,
            _ => agreed = Some(leaders),
        }
    }
    agreed
}

/// Polls until `addrs` agree on a leader for every group that is one of
/// them (not `excluded`).
async fn wait_agreed(
    client: &MetaClient,
    addrs: &[&str],
    live: &[u64],
    wait: Duration,
) -> anyhow::Result<BTreeMap<u32, u64>> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(leaders) = agreed(client, addrs).await
            && leaders.values().all(|l| live.contains(l))
        {
            return Ok(leaders);
        }
        ensure!(
            Instant::now() < deadline,
            "no agreed leaders within {wait:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the rounds; see the [module docs](self).
pub async fn failover(args: &FailoverArgs) -> anyhow::Result<FailoverReport> {
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("tidemq-meta"),
    };
    ensure!(bin.exists(), "{} not found (--bin)", bin.display());
    let dir = tempfile::tempdir()?;
    let addrs = free_addrs(3)?;
    let peers: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("--peer={}={a}", i + 1))
        .collect();
    let mut nodes: Vec<Node> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let id = i as u64 + 1;
            let mut node_args = vec![
                format!("--node-id={id}"),
                format!("--grpc-addr={addr}"),
                format!(
                    "--data-dir={}",
                    dir.path().join(format!("node{id}")).display()
                ),
                format!("--data-groups={}", args.data_groups),
                format!("--heartbeat-ms={}", args.heartbeat_ms),
                format!("--election-timeout-ms={}", args.election_timeout_ms),
            ];
            node_args.extend(peers.iter().cloned());
            Node {
                id,
                addr: addr.clone(),
                args: node_args,
                child: None,
            }
        })
        .collect();
    for node in &mut nodes {
        node.spawn(&bin)?;
    }
    let status = MetaClient::with_deadline(addrs.clone(), Duration::from_secs(2))?;
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    wait_agreed(&status, &all, &[1, 2, 3], Duration::from_secs(30)).await?;

    // Writers: closed loops of CreateSessions through a client of all nodes.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let writer_client = MetaClient::with_deadline(addrs.clone(), Duration::from_secs(10))?;
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let (client, stop) = (writer_client.clone(), Arc::clone(&stop));
        let (writes, errors) = (Arc::clone(&writes), Arc::clone(&errors));
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let session = pb::Session {
                    client_key: format!("failover/w{w}-{n}"),
                    node_id: 1,
                    created_at_ms: 0,
                    expiry_secs: 60,
                    connected: true,
                    payload: Vec::new(),
                };
                match client.create_sessions(vec![session]).await {
                    Ok(_) => writes.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                n += 1;
            }
        }));
    }

    let mut rounds_ms = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let leaders = wait_agreed(&status, &all, &[1, 2, 3], Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let victim = *leaders.get(&0).context("no metadata group")?;
        let index = nodes
            .iter()
            .position(|n| n.id == victim)
            .context("unknown leader")?;
        nodes[index].kill()?;
        let killed = Instant::now();
        let survivors: Vec<&str> = nodes
            .iter()
            .filter(|n| n.id != victim)
            .map(|n| n.addr.as_str())
            .collect();
        let live: Vec<u64> = nodes
            .iter()
            .filter(|n| n.id != victim)
            .map(|n| n.id)
            .collect();
        wait_agreed(&status, &survivors, &live, Duration::from_secs(30)).await?;
        rounds_ms.push(killed.elapsed().as_secs_f64() * 1e3);
        nodes[index].spawn(&bin)?;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await?;
    }
    if rounds_ms.is_empty() {
        bail!("no rounds run");
    }
    let mut sorted = rounds_ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(FailoverReport {
        min_ms: sorted[0],
        median_ms: sorted[sorted.len() / 2],
        max_ms: sorted[sorted.len() - 1],
        rounds_ms,
        writes: writes.load(Ordering::Relaxed),
        write_errors: errors.load(Ordering::Relaxed),
    })
}
