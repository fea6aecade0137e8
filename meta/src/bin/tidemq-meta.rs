//! `tidemq-meta`: one meta node as a process.
//!
//! With no arguments it bootstraps a single-node cluster serving gRPC on
//! 127.0.0.1:1228 with its data under `./data/meta`. A cluster names every
//! member on each node (`--peer 1=127.0.0.1:1228 --peer 2=... --peer 3=...`;
//! the lowest id initializes it), and a new node joins a running cluster with
//! `--join <any member's address>`. SIGINT or SIGTERM shuts it down cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use prometheus::Registry;
use tidemq_meta::runtime::{RuntimeMonitor, build_runtime};
use tidemq_meta::{ClusterSecret, MetaConfig, MetaNodeHandle, MetaRuntimes, NodeId};

#[derive(Debug, Parser)]
#[command(name = "tidemq-meta", version, about = "A TideMQ meta service node")]
struct Args {
    /// This node's id (unique in the cluster, not 0).
    #[arg(long, default_value_t = 1)]
    node_id: NodeId,
    /// Address the gRPC server binds.
    #[arg(long, default_value = "127.0.0.1:1228")]
    grpc_addr: SocketAddr,
    /// Address other nodes reach this one at (default: the bound address).
    #[arg(long)]
    advertise_addr: Option<String>,
    /// Directory of the RocksDB and snapshots.
    #[arg(long, default_value = "./data/meta")]
    data_dir: PathBuf,
    /// A member of a new cluster, `ID=HOST:PORT`; repeat for each member,
    /// this node included. None: a single-node cluster.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(NodeId, String)>,
    /// gRPC address of a running cluster's member to join through (repeatable).
    #[arg(long)]
    join: Vec<String>,
    /// Data Raft groups besides the metadata group.
    #[arg(long, default_value_t = 1)]
    data_groups: u32,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// How long a follower hears no leader before it stands for election,
    /// in milliseconds, `MIN-MAX` (a random point in the range).
    #[arg(long, default_value = "1000-2000", value_parser = parse_range)]
    election_timeout_ms: (u64, u64),
    /// Log entries since the last snapshot that trigger a new one.
    #[arg(long, default_value_t = 20_000)]
    snapshot_after: u64,
    /// Log entries kept behind a snapshot.
    #[arg(long, default_value_t = 1000)]
    snapshot_keep_logs: u64,
    /// Worker threads of the Raft runtime.
    #[arg(long, default_value_t = 1)]
    raft_workers: usize,
    /// Worker threads of the gRPC runtime.
    #[arg(long, default_value_t = 1)]
    grpc_workers: usize,
    /// gRPC requests slower than this are logged at WARN (milliseconds).
    #[arg(long, default_value_t = 200)]
    slow_request_ms: u64,
    /// File holding the cluster secret (16 or more printable characters):
    /// every gRPC call to this node must carry it, and its own calls do.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Serve a non-loopback address without a cluster secret (anyone who
    /// reaches it can change the cluster's membership).
    #[arg(long)]
    allow_unauthenticated: bool,
}

fn parse_peer(text: &str) -> Result<(NodeId, String), String> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("expected ID=HOST:PORT, got {text:?}"))?;
    let id = id.parse().map_err(|e| format!("bad node id {id:?}: {e}"))?;
    Ok((id, addr.to_string()))
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (min, max) = text
        .split_once('-')
        .ok_or_else(|| format!("expected MIN-MAX, got {text:?}"))?;
    let min: u64 = min.parse().map_err(|e| format!("bad minimum: {e}"))?;
    let max: u64 = max.parse().map_err(|e| format!("bad maximum: {e}"))?;
    if min >= max {
        return Err(format!("the minimum {min} must be below the maximum {max}"));
    }
    Ok((min, max))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if args.node_id == 0 {
        bail!("--node-id must not be 0");
    }
    if !args.peers.is_empty() && !args.peers.iter().any(|(id, _)| *id == args.node_id) {
        bail!("--peer must list this node ({}) too", args.node_id);
    }

    let mut config = MetaConfig::new(args.node_id, args.grpc_addr, &args.data_dir);
    config.advertise_addr = args.advertise_addr;
    config.initial_members = args.peers;
    config.join = args.join;
    config.data_raft_group_num = args.data_groups;
    config.heartbeat = Duration::from_millis(args.heartbeat_ms);
    config.election_timeout = (
        Duration::from_millis(args.election_timeout_ms.0),
        Duration::from_millis(args.election_timeout_ms.1),
    );
    config.snapshot_after_entries = args.snapshot_after;
    config.snapshot_keep_logs = args.snapshot_keep_logs;
    config.slow_request = Duration::from_millis(args.slow_request_ms);
    if let Some(path) = &args.secret_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the cluster secret {}", path.display()))?;
        config.secret = Some(ClusterSecret::new(&text)?);
    }
    if config.secret.is_none() && !args.grpc_addr.ip().is_loopback() && !args.allow_unauthenticated
    {
        bail!(
            "--grpc-addr {} is not a loopback address: give --secret-file, or \
             --allow-unauthenticated if only trusted hosts can reach it",
            args.grpc_addr
        );
    }

    let registry = Registry::new();
    let raft = build_runtime("meta-raft", args.raft_workers)?;
    let grpc = build_runtime("meta-grpc", args.grpc_workers)?;
    let _monitor = RuntimeMonitor::start(
        &registry,
        Duration::from_secs(5),
        [
            ("meta-raft".to_string(), raft.handle().clone()),
            ("meta-grpc".to_string(), grpc.handle().clone()),
        ],
    )?;
    let runtimes = MetaRuntimes {
        raft: raft.handle().clone(),
        grpc: grpc.handle().clone(),
    };
    grpc.block_on(async move {
        let node = MetaNodeHandle::start_on(config, &registry, runtimes)
            .await
            .context("starting the meta node")?;
        // Tests and scripts wait for this line.
        println!(
            "tidemq-meta node {} serving gRPC on {}",
            args.node_id,
            node.local_addr()
        );
        shutdown_signal().await?;
        node.shutdown().await;
        anyhow::Ok(())
    })?;
    raft.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}
