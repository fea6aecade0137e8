//! A running meta node: the store, one Raft instance per group, the
//! batchers, and the gRPC server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, Raft, SnapshotPolicy};
use prometheus::{Histogram, HistogramOpts, Registry, exponential_buckets};
use tidemq_proto::grpc::v1::meta_service_server::MetaServiceServer;
use tidemq_proto::grpc::v1::raft_service_server::RaftServiceServer;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::batcher::{BatchLimits, BatchMetrics, Batcher};
use crate::channels::ChannelPool;
use crate::error::MetaError;
use crate::grpc::{GrpcMetrics, MetaServer, RaftServer};
use crate::network::GrpcNetworkFactory;
use crate::types::{MetaNode, NodeId, TypeConfig};

/// Everything a meta node needs to start.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// This node's id in every group.
    pub node_id: NodeId,
    /// Address the gRPC server binds (port 0 picks one).
    pub grpc_addr: SocketAddr,
    /// Address other nodes use to reach this one; defaults to the bound address.
    pub advertise_addr: Option<String>,
    /// Directory of the RocksDB and snapshots.
    pub data_dir: PathBuf,
    /// Data groups besides the metadata group.
    pub data_raft_group_num: u32,
    /// Members of a new cluster, `(id, gRPC address)`, this node included.
    /// Empty: a single-node cluster of this node.
    pub initial_members: Vec<(NodeId, String)>,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Raft election timeout range.
    pub election_timeout: (Duration, Duration),
    /// Entries since the last snapshot that trigger a new one.
    pub snapshot_after_entries: u64,
    /// Application-level batching.
    pub batch: BatchLimits,
    /// gRPC requests slower than this are logged at WARN.
    pub slow_request: Duration,
}

impl MetaConfig {
    /// A single-node configuration with the defaults: heartbeat 100 ms,
    /// election timeout 1–2 s, one data group.
    pub fn new(node_id: NodeId, grpc_addr: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            grpc_addr,
            advertise_addr: None,
            data_dir: data_dir.into(),
            data_raft_group_num: 1,
            initial_members: Vec::new(),
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_after_entries: 20_000,
            batch: BatchLimits::default(),
            slow_request: Duration::from_millis(200),
        }
    }
}

/// A running meta node. Dropping it leaves the tasks running until the
/// runtime stops; call [`MetaNodeHandle::shutdown`].
pub struct MetaNodeHandle {
    rafts: Arc<Vec<Raft<TypeConfig>>>,
    batchers: Vec<tokio::task::JoinHandle<()>>,
    closed: Option<crate::store::StoreClosed>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl MetaNodeHandle {
    /// Opens the store, starts every group's Raft (bootstrapping a new
    /// cluster when the store is empty) and serves gRPC. Call it inside the
    /// runtime that should own Raft.
    pub async fn start(
        config: MetaConfig,
        registry: &Registry,
    ) -> Result<MetaNodeHandle, MetaError> {
        let groups = 1 + config.data_raft_group_num;
        let incoming = TcpIncoming::bind(config.grpc_addr)
            .map_err(|source| MetaError::Bind {
                addr: config.grpc_addr,
                source,
            })?
            .with_nodelay(Some(true));
        let local_addr = incoming.local_addr().map_err(|source| MetaError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
        let advertise = config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| local_addr.to_string());

        let raft_config = Arc::new(
            Config {
                cluster_name: "tidemq-meta".into(),
                heartbeat_interval: config.heartbeat.as_millis() as u64,
                election_timeout_min: config.election_timeout.0.as_millis() as u64,
                election_timeout_max: config.election_timeout.1.as_millis() as u64,
                snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
                max_in_snapshot_log_to_keep: 1000,
                ..Default::default()
            }
            .validate()
            .map_err(|e| MetaError::InvalidArgument {
                reason: format!("raft configuration: {e}"),
            })?,
        );
        let stores = crate::store::open(&config.data_dir, groups, registry).await?;
        let channels = ChannelPool::default();
        let batch_metrics = batch_metrics(registry)?;
        let mut rafts = Vec::with_capacity(groups as usize);
        let mut states = Vec::with_capacity(groups as usize);
        let mut batchers = Vec::with_capacity(groups as usize);
        let mut batcher_tasks = Vec::with_capacity(groups as usize);
        let closed = stores.first().map(|(_, sm)| sm.closed());
        for (group, (log, sm)) in stores.into_iter().enumerate() {
            states.push(sm.state());
            let network = GrpcNetworkFactory::new(group as u32, channels.clone());
            let raft = Raft::new(config.node_id, Arc::clone(&raft_config), network, log, sm)
                .await
                .map_err(|e| MetaError::Raft {
                    reason: format!("group {group} failed to start: {e}"),
                })?;
            let (batcher, task) = Batcher::spawn(raft.clone(), config.batch, batch_metrics.clone());
            batchers.push(batcher);
            batcher_tasks.push(task);
            rafts.push(raft);
        }
        bootstrap(&rafts, &config, &advertise).await?;

        let rafts = Arc::new(rafts);
        let grpc_metrics =
            GrpcMetrics::register(registry, config.slow_request).map_err(MetaError::Metrics)?;
        let meta = MetaServer::new(Arc::clone(&rafts), states, batchers, grpc_metrics);
        let raft = RaftServer::new(Arc::clone(&rafts));
        let (stop, mut stopped) = watch::channel(false);
        let server = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(RaftServiceServer::new(raft))
                .add_service(MetaServiceServer::new(meta))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "meta gRPC server failed");
            }
        });
        info!(node_id = config.node_id, %local_addr, groups, "meta node started");
        Ok(MetaNodeHandle {
            rafts,
            batchers: batcher_tasks,
            closed,
            local_addr,
            stop,
            server,
        })
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Raft instance of each group.
    pub fn rafts(&self) -> &Arc<Vec<Raft<TypeConfig>>> {
        &self.rafts
    }

    /// Stops serving, shuts every group's Raft down cleanly and waits until
    /// the store has closed (so the directory can be opened again).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        for task in &self.batchers {
            task.abort();
        }
        for task in self.batchers {
            let _ = task.await;
        }
        for raft in self.rafts.iter() {
            let _ = raft.shutdown().await;
        }
        drop(self.rafts);
        if let Some(closed) = self.closed
            && tokio::time::timeout(std::time::Duration::from_secs(10), closed.wait())
                .await
                .is_err()
        {
            tracing::warn!("meta store still open 10 s after shutdown");
        }
        info!("meta node stopped");
    }
}

/// Initializes every group of a brand-new store. A node with no members
/// configured becomes a single-node cluster; with members, the node with
/// the lowest id initializes the cluster and the others wait to be contacted.
async fn bootstrap(
    rafts: &[Raft<TypeConfig>],
    config: &MetaConfig,
    advertise: &str,
) -> Result<(), MetaError> {
    let members: std::collections::BTreeMap<NodeId, MetaNode> = if config.initial_members.is_empty()
    {
        [(
            config.node_id,
            MetaNode {
                addr: advertise.to_string(),
            },
        )]
        .into()
    } else {
        config
            .initial_members
            .iter()
            .map(|(id, addr)| (*id, MetaNode { addr: addr.clone() }))
            .collect()
    };
    let lowest = members.keys().next().copied();
    if lowest != Some(config.node_id) {
        return Ok(());
    }
    for (group, raft) in rafts.iter().enumerate() {
        let initialized = raft.is_initialized().await.map_err(|e| MetaError::Raft {
            reason: e.to_string(),
        })?;
        if !initialized {
            raft.initialize(members.clone())
                .await
                .map_err(|e| MetaError::Raft {
                    reason: format!("group {group} failed to initialize: {e}"),
                })?;
            info!(group, members = members.len(), "raft group initialized");
        }
    }
    Ok(())
}

fn batch_metrics(registry: &Registry) -> Result<BatchMetrics, MetaError> {
    let write_ms = Histogram::with_opts(
        HistogramOpts::new(
            "raft_write_duration_ms",
            "Time from a batch's submission to Raft until it is committed and applied",
        )
        .buckets(exponential_buckets(0.1, 2.0, 16).map_err(MetaError::Metrics)?),
    )
    .map_err(MetaError::Metrics)?;
    let batch_size = Histogram::with_opts(
        HistogramOpts::new(
            "raft_write_batch_requests",
            "Requests coalesced into one Raft entry",
        )
        .buckets(exponential_buckets(1.0, 2.0, 14).map_err(MetaError::Metrics)?),
    )
    .map_err(MetaError::Metrics)?;
    registry
        .register(Box::new(write_ms.clone()))
        .map_err(MetaError::Metrics)?;
    registry
        .register(Box::new(batch_size.clone()))
        .map_err(MetaError::Metrics)?;
    Ok(BatchMetrics {
        write_ms,
        batch_size,
    })
}
