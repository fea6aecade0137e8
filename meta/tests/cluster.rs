//! Meta clusters of real `tidemq-meta` processes on 127.0.0.1.
//!
//! - Three nodes under write load: the leader is killed with SIGKILL, a new
//!   leader takes every group within 5 seconds, no acknowledged write is
//!   lost, and the killed node, restarted after the others purged the log it
//!   missed, catches up by snapshot. A fourth node then joins the running
//!   cluster and serves writes.
//!   The three run with a cluster secret: every call between them, and
//!   every client call, carries it.
//! - One node restarted (after SIGTERM and after SIGKILL) keeps its data.
//! - A node refuses to serve a non-loopback address without a secret.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tidemq_meta::{ClusterSecret, MetaClient};
use tidemq_proto::grpc::v1 as pb;

const BIN: &str = env!("CARGO_BIN_EXE_tidemq-meta");

/// The secret of the three-node cluster.
const SECRET: &str = "three-node-cluster-secret";

/// A client carrying the cluster secret.
fn secured(addrs: &[String], deadline: Duration) -> anyhow::Result<MetaClient> {
    Ok(MetaClient::with_secret(
        addrs.to_vec(),
        deadline,
        Some(ClusterSecret::new(SECRET)?),
    )?)
}

/// One `tidemq-meta` process. Killed (SIGKILL) when dropped.
struct Node {
    id: u64,
    addr: String,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// Starts a node and waits until it serves gRPC (and, with `--join`,
    /// until it has joined).
    fn start(id: u64, addr: &str, dir: &Path, extra: &[String]) -> anyhow::Result<Node> {
        let mut args = vec![
            format!("--node-id={id}"),
            format!("--grpc-addr={addr}"),
            format!("--data-dir={}", dir.join(format!("node{id}")).display()),
        ];
        args.extend_from_slice(extra);
        let mut node = Node {
            id,
            addr: addr.to_string(),
            args,
            child: None,
        };
        node.restart()?;
        Ok(node)
    }

    /// (Re)starts the process with the same arguments and data directory.
    fn restart(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(BIN)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("TIDEMQ_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning tidemq-meta")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("serving gRPC") {
                    let _ = ready_tx.send(());
                }
            }
        });
        self.child = Some(child);
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .with_context(|| format!("node {} did not start", self.id))
    }

    fn sigkill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit.
    fn sigterm(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = i32::try_from(child.id())?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                ensure!(status.success(), "node {} exited with {status}", self.id);
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "node {} ignored SIGTERM",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.sigkill();
    }
}

/// `n` distinct free addresses: the listeners are held until all are
/// picked, so the kernel cannot hand out one port twice.
fn free_addrs(n: usize) -> anyhow::Result<Vec<String>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.to_string()))
        .collect()
}

fn session(key: &str) -> pb::Session {
    pb::Session {
        client_key: key.to_string(),
        node_id: 1,
        created_at_ms: 0,
        expiry_secs: 3600,
        connected: false,
        payload: vec![7; 64],
    }
}

/// Every group's status as each of `nodes` sees it, once all of them agree
/// on a leader for every group (none of them in `excluded`).
async fn agreed_leaders(
    client: &MetaClient,
    nodes: &[&Node],
    excluded: Option<u64>,
    within: Duration,
) -> anyhow::Result<BTreeMap<u32, u64>> {
    let deadline = Instant::now() + within;
    loop {
        let mut seen: BTreeMap<u32, HashSet<Option<u64>>> = BTreeMap::new();
        let mut all_answered = true;
        for node in nodes {
            match client.raft_status(&node.addr).await {
                Ok(groups) => {
                    for g in groups {
                        seen.entry(g.group).or_default().insert(g.leader_id);
                    }
                }
                Err(_) => all_answered = false,
            }
        }
        let leaders: BTreeMap<u32, u64> = seen
            .iter()
            .filter_map(
                |(group, leaders)| match leaders.iter().collect::<Vec<_>>()[..] {
                    [Some(leader)] if Some(*leader) != excluded => Some((*group, *leader)),
                    _ => None,
                },
            )
            .collect();
        if all_answered && !seen.is_empty() && leaders.len() == seen.len() {
            return Ok(leaders);
        }
        if Instant::now() >= deadline {
            bail!("no agreed leader within {within:?}: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn status(client: &MetaClient, node: &Node) -> anyhow::Result<Vec<pb::GroupStatus>> {
    Ok(client.raft_status(&node.addr).await?)
}

/// Writers creating sessions through every node until stopped; keys of
/// acknowledged writes are collected.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addrs: &[String], writers: usize) -> anyhow::Result<Load> {
        let client = secured(addrs, Duration::from_secs(10))?;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..writers)
            .map(|w| {
                let (client, stop, acked, failed) = (
                    client.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&acked),
                    Arc::clone(&failed),
                );
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("load/w{w}-{n}");
                        n += 1;
                        match client.create_sessions(vec![session(&key)]).await {
                            Ok(1) => acked.lock().expect("acked keys").push(key),
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Ok(Load {
            stop,
            acked,
            failed,
            tasks,
        })
    }

    async fn finish(self) -> (Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let acked = std::mem::take(&mut *self.acked.lock().expect("acked keys"));
        (acked, self.failed.load(Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_fail_over_catch_up_by_snapshot_and_admit_a_fourth() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let addrs = free_addrs(4)?;
    let peers: Vec<String> = (0..3)
        .map(|i| format!("--peer={}={}", i + 1, addrs[i]))
        .collect();
    let mut common = vec![
        "--data-groups=2".to_string(),
        // Snapshot often and keep little log, so a node that misses a few
        // hundred entries can only catch up by snapshot.
        "--snapshot-after=100".to_string(),
        "--snapshot-keep-logs=10".to_string(),
    ];
    common.extend(peers);
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET)?;
    common.push(format!("--secret-file={}", secret_file.display()));
    let mut nodes = Vec::new();
    for (i, addr) in addrs[..3].iter().enumerate() {
        nodes.push(Node::start(i as u64 + 1, addr, dir.path(), &common)?);
    }
    let client = secured(&addrs[..3], Duration::from_secs(20))?;
    ensure!(
        MetaClient::with_deadline(addrs[..1].to_vec(), Duration::ZERO)?
            .list_nodes()
            .await
            .is_err(),
        "a client without the secret is refused"
    );
    let leaders = agreed_leaders(
        &client,
        &nodes.iter().collect::<Vec<_>>(),
        None,
        Duration::from_secs(20),
    )
    .await?;

    // Kill the node leading the metadata group while writers run.
    let load = Load::start(&addrs[..3], 4)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim_id = leaders[&0];
    let victim = (victim_id - 1) as usize;
    let before_kill: u64 = status(&client, &nodes[victim])
        .await?
        .iter()
        .filter_map(|g| g.last_log_index)
        .max()
        .unwrap_or(0);
    nodes[victim].sigkill()?;
    let killed_at = Instant::now();
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.id != victim_id).collect();
    let new_leaders = agreed_leaders(
        &client,
        &survivors,
        Some(victim_id),
        Duration::from_secs(10),
    )
    .await?;
    let failover = killed_at.elapsed();
    // A follower stands 1.5-2 s after the last heartbeat with the default
    // election timeout. The bound here only catches a cluster that does not
    // recover; how fast it recovers is measured by benches/meta-bench.sh.
    eprintln!("failover took {failover:?}");
    assert!(
        failover < Duration::from_secs(8),
        "new leaders {new_leaders:?} after {failover:?}"
    );
    // Writes go on after the failover until enough were acknowledged for
    // the check below to mean something (a loaded machine needs longer).
    let enough = Instant::now() + Duration::from_secs(15);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    while load.acked.lock().map_or(0, |a| a.len()) <= 100 && Instant::now() < enough {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (acked, failed) = load.finish().await;
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );

    // Every acknowledged write survived the leader's death.
    let stored: HashSet<String> = client
        .list_sessions("load/", 0)
        .await?
        .into_iter()
        .map(|s| s.client_key)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !stored.contains(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost ({failed} failed), e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );

    // Write on until every group's log is purged well past where the killed
    // node stopped, so only a snapshot can bring it back.
    let purge_past = before_kill + 50;
    let survivor_addr = survivors[0].addr.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        let groups = client.raft_status(&survivor_addr).await?;
        if groups
            .iter()
            .all(|g| g.purged_index.is_some_and(|p| p > purge_past))
        {
            break;
        }
        ensure!(Instant::now() < deadline, "logs never purged: {groups:?}");
        let batch: Vec<_> = (0..8).map(|i| session(&format!("more/{n}-{i}"))).collect();
        client.create_sessions(batch).await?;
        client.set_cluster_config("filler", &n.to_string()).await?;
        n += 1;
    }
    let target: BTreeMap<u32, u64> = client
        .raft_status(&survivor_addr)
        .await?
        .iter()
        .map(|g| (g.group, g.last_applied.unwrap_or(0)))
        .collect();

    nodes[victim].restart()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = status(&client, &nodes[victim]).await?;
        let caught_up = groups.iter().all(|g| {
            g.last_applied.unwrap_or(0) >= target[&g.group]
                && g.snapshot_index.is_some_and(|s| s > purge_past)
        });
        if caught_up {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "restarted node did not catch up to {target:?} by snapshot: {groups:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A fourth node joins through one member and becomes a voter everywhere.
    let joining = vec![
        "--data-groups=2".to_string(),
        format!("--join={}", addrs[0]),
        format!("--secret-file={}", secret_file.display()),
    ];
    let fourth = Node::start(4, &addrs[3], dir.path(), &joining)?;
    // Its own view of the membership trails the leaders' by a replication
    // round.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let groups = status(&client, &fourth).await?;
        if groups
            .iter()
            .all(|g| g.voters.len() == 4 && g.voters.contains(&4))
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "node 4 never saw itself a voter: {groups:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Writes through the new node are followed to the leaders.
    let via_fourth = secured(std::slice::from_ref(&fourth.addr), Duration::from_secs(10))?;
    assert_eq!(
        via_fourth
            .create_sessions(vec![session("joined/a")])
            .await?,
        1
    );
    assert!(via_fourth.get_session("joined/a").await?.is_some());
    assert!(via_fourth.get_session(&acked[0]).await?.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_restarts_with_its_data() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let addr = free_addrs(1)?.remove(0);
    let mut node = Node::start(1, &addr, dir.path(), &["--data-groups=2".to_string()])?;
    let client = MetaClient::with_deadline([addr.clone()], Duration::from_secs(20))?;

    let sessions: Vec<_> = (0..50).map(|i| session(&format!("t/c{i}"))).collect();
    assert_eq!(client.create_sessions(sessions).await?, 50);
    client
        .add_subscription(pb::Subscription {
            client_key: "t/c1".into(),
            filter: "a/+/b".into(),
            options: 1,
            identifier: 0,
        })
        .await?;
    client.set_cluster_config("max_qos", "1").await?;

    // A clean stop, then a crash: both keep everything acknowledged.
    node.sigterm()?;
    node.restart()?;
    assert_eq!(client.list_sessions("t/", 0).await?.len(), 50);
    assert_eq!(client.create_sessions(vec![session("t/late")]).await?, 1);
    node.sigkill()?;
    node.restart()?;
    assert_eq!(client.list_sessions("t/", 0).await?.len(), 51);
    let subs = client.list_subscriptions("t/c1").await?;
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].filter, "a/+/b");
    assert_eq!(
        client
            .refresh_cluster_config()
            .await?
            .get("max_qos")
            .map(String::as_str),
        Some("1")
    );
    let groups = status(&client, &node).await?;
    assert_eq!(groups.len(), 3);
    assert!(
        groups
            .iter()
            .all(|g| g.state == "Leader" && g.voters == [1])
    );
    Ok(())
}

#[test]
fn a_public_address_needs_a_secret() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(BIN)
        .args(["--grpc-addr=0.0.0.0:0"])
        .arg(format!("--data-dir={}", dir.path().display()))
        .output()?;
    ensure!(!out.status.success(), "started unauthenticated on 0.0.0.0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("--secret-file"), "{stderr}");
    Ok(())
}
