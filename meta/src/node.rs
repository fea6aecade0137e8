//! A running meta node: the store, one Raft instance per group, the
//! batchers, and the gRPC server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, Raft, RaftMetrics, SnapshotPolicy};
use prometheus::{HistogramOpts, HistogramVec, IntGaugeVec, Opts, Registry, exponential_buckets};
use tidemq_proto::grpc::v1::meta_service_server::MetaServiceServer;
use tidemq_proto::grpc::v1::raft_service_server::RaftServiceServer;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::auth::{ClusterSecret, RequireSecret};
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
    /// How long a follower hears nothing from its leader before it stands
    /// for election: a random point in `[min, max)`.
    ///
    /// openraft 0.9 makes a follower wait out the leader's lease
    /// (`election_timeout_max`) and then its own random election timeout
    /// (`election_timeout_min..election_timeout_max`), so openraft is given
    /// half of each bound: `(1 s, 2 s)` becomes openraft's `(500 ms, 1 s)`,
    /// and a follower stands 1.5 to 2 s after the last heartbeat. See
    /// [`MetaConfig::openraft_election_timeout`].
    pub election_timeout: (Duration, Duration),
    /// gRPC addresses of a running cluster to join. When set, a brand-new
    /// node does not bootstrap: it asks the cluster to add it to every group
    /// (as a learner until caught up, then as a voter).
    pub join: Vec<String>,
    /// Entries since the last snapshot that trigger a new one.
    pub snapshot_after_entries: u64,
    /// Log entries kept behind a snapshot (a follower lagging further than
    /// this catches up by snapshot).
    pub snapshot_keep_logs: u64,
    /// Application-level batching.
    pub batch: BatchLimits,
    /// gRPC requests slower than this are logged at WARN.
    pub slow_request: Duration,
    /// The secret every gRPC call must carry (see [`crate::auth`]); `None`
    /// trusts whoever reaches the port.
    pub secret: Option<ClusterSecret>,
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
            join: Vec::new(),
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_after_entries: 20_000,
            snapshot_keep_logs: 1000,
            batch: BatchLimits::default(),
            slow_request: Duration::from_millis(200),
            secret: None,
        }
    }

    /// openraft's `(election_timeout_min, election_timeout_max)` in
    /// milliseconds for [`MetaConfig::election_timeout`]: half of each
    /// bound, because an openraft follower waits `max` (the leader lease)
    /// plus a random timeout in `[min, max)`. Together that is
    /// `[min/2 + max/2, max)` of the configured range.
    pub fn openraft_election_timeout(&self) -> (u64, u64) {
        let half = |d: Duration| (d.as_millis() / 2) as u64;
        (half(self.election_timeout.0), half(self.election_timeout.1))
    }
}

/// The runtimes a meta node runs on: Raft (every group's core, replication
/// and the batchers) and gRPC serving. Separate runtimes keep a flood of
/// client requests from delaying heartbeats and appends.
#[derive(Debug, Clone)]
pub struct MetaRuntimes {
    /// Where the `Raft` instances are created and run.
    pub raft: Handle,
    /// Where the gRPC server accepts and serves requests.
    pub grpc: Handle,
}

impl MetaRuntimes {
    /// Both roles on the runtime of the calling task.
    pub fn current() -> MetaRuntimes {
        let handle = Handle::current();
        MetaRuntimes {
            raft: handle.clone(),
            grpc: handle,
        }
    }
}

/// gRPC services the node's server carries besides its own (the broker's
/// link between nodes), under the same cluster secret: given the routes so
/// far and the secret check, it adds its services, each wrapped in that
/// check (`InterceptedService::new(service, require)`).
pub struct ExtraServices(Box<dyn FnOnce(Routes, RequireSecret) -> Routes + Send>);

impl ExtraServices {
    /// Services added by `add`.
    pub fn new(add: impl FnOnce(Routes, RequireSecret) -> Routes + Send + 'static) -> Self {
        ExtraServices(Box::new(add))
    }
}

impl std::fmt::Debug for ExtraServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExtraServices(..)")
    }
}

/// A running meta node. Dropping it leaves the tasks running until the
/// runtime stops; call [`MetaNodeHandle::shutdown`].
pub struct MetaNodeHandle {
    rafts: Arc<Vec<Raft<TypeConfig>>>,
    /// The metadata group's state, for the route watcher.
    metadata: crate::store::MetaState,
    tasks: Vec<JoinHandle<()>>,
    closed: Option<crate::store::StoreClosed>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

/// Largest request a `MetaService` call may carry.
const MAX_META_MESSAGE: usize = 4 * 1024 * 1024;
/// Largest Raft message (`AppendEntries` batches, `InstallSnapshot` chunks).
const MAX_RAFT_MESSAGE: usize = 64 * 1024 * 1024;

/// The gRPC server's limits: calls in progress per connection, a deadline
/// for each call, and HTTP/2 keep-alive so dead peers are noticed.
fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(1024)
        .timeout(Duration::from_secs(60))
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(1024)
}

/// What the Raft runtime hands back once every group is running.
struct Groups {
    channels: ChannelPool,
    rafts: Vec<Raft<TypeConfig>>,
    states: Vec<crate::store::MetaState>,
    batchers: Vec<Batcher>,
    tasks: Vec<JoinHandle<()>>,
    closed: Option<crate::store::StoreClosed>,
}

impl MetaNodeHandle {
    /// Starts a node with Raft and gRPC on the calling task's runtime. See
    /// [`MetaNodeHandle::start_on`].
    pub async fn start(
        config: MetaConfig,
        registry: &Registry,
    ) -> Result<MetaNodeHandle, MetaError> {
        Self::start_on(config, registry, MetaRuntimes::current()).await
    }

    /// [`MetaNodeHandle::start_serving`] with no extra services.
    pub async fn start_on(
        config: MetaConfig,
        registry: &Registry,
        runtimes: MetaRuntimes,
    ) -> Result<MetaNodeHandle, MetaError> {
        Self::start_serving(config, registry, runtimes, None).await
    }

    /// Opens the store, starts every group's Raft on `runtimes.raft`
    /// (bootstrapping a new cluster when the store is empty), serves gRPC on
    /// `runtimes.grpc`, and, when [`MetaConfig::join`] is set, joins the
    /// running cluster before returning. `extra` services are served beside
    /// the meta service's own.
    pub async fn start_serving(
        config: MetaConfig,
        registry: &Registry,
        runtimes: MetaRuntimes,
        extra: Option<ExtraServices>,
    ) -> Result<MetaNodeHandle, MetaError> {
        let groups = 1 + config.data_raft_group_num;
        // Bound inside the gRPC runtime so its reactor owns the listener.
        let grpc_addr = config.grpc_addr;
        let incoming = runtimes
            .grpc
            .spawn(async move { TcpIncoming::bind(grpc_addr) })
            .await
            .map_err(|_| MetaError::Closed)?
            .map_err(|source| MetaError::Bind {
                addr: grpc_addr,
                source,
            })?
            .with_nodelay(Some(true));
        let local_addr = incoming.local_addr().map_err(|source| MetaError::Bind {
            addr: grpc_addr,
            source,
        })?;
        let advertise = config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| local_addr.to_string());

        let started = {
            let config = config.clone();
            let registry = registry.clone();
            let advertise = advertise.clone();
            runtimes
                .raft
                .spawn(async move { start_groups(&config, &registry, &advertise).await })
                .await
                .map_err(|_| MetaError::Closed)??
        };
        let Groups {
            channels,
            rafts,
            states,
            batchers,
            tasks,
            closed,
        } = started;

        let rafts = Arc::new(rafts);
        let grpc_metrics =
            GrpcMetrics::register(registry, config.slow_request).map_err(MetaError::Metrics)?;
        let require = RequireSecret {
            secret: config.secret.clone(),
            refused: grpc_metrics.unauthenticated.clone(),
        };
        let metadata = states[crate::GroupRouter::METADATA_GROUP as usize].clone();
        let meta = MetaServer::new(Arc::clone(&rafts), states, batchers, grpc_metrics, channels);
        let raft = RaftServer::new(Arc::clone(&rafts));
        let mut routes = Routes::new(InterceptedService::new(
            RaftServiceServer::new(raft).max_decoding_message_size(MAX_RAFT_MESSAGE),
            require.clone(),
        ))
        .add_service(InterceptedService::new(
            MetaServiceServer::new(meta).max_decoding_message_size(MAX_META_MESSAGE),
            require.clone(),
        ));
        if let Some(ExtraServices(add)) = extra {
            routes = add(routes, require);
        }
        let (stop, mut stopped) = watch::channel(false);
        let server = runtimes.grpc.spawn(async move {
            let result = grpc_server()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "meta gRPC server failed");
            }
        });
        info!(node_id = config.node_id, %local_addr, groups, "meta node started");
        let handle = MetaNodeHandle {
            rafts,
            metadata,
            tasks,
            closed,
            local_addr,
            stop,
            server,
        };
        if !config.join.is_empty()
            && let Err(e) = join(&handle.rafts, &config, &advertise).await
        {
            handle.shutdown().await;
            return Err(e);
        }
        Ok(handle)
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Raft instance of each group.
    pub fn rafts(&self) -> &Arc<Vec<Raft<TypeConfig>>> {
        &self.rafts
    }

    /// The metadata group's state as this node has applied it.
    pub fn metadata(&self) -> &crate::store::MetaState {
        &self.metadata
    }

    /// Registers this node's route watcher (one per node; a second call
    /// replaces the first) and reads the route table: see
    /// [`crate::MetaState::watch_metadata`].
    pub async fn watch_metadata(&self) -> Result<crate::MetadataWatch, MetaError> {
        Ok(self.metadata.watch_metadata().await?)
    }

    /// Stops serving, shuts every group's Raft down cleanly and waits until
    /// the store has closed (so the directory can be opened again).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
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

/// Opens the store and starts every group's Raft, batcher and metrics
/// watcher. Runs on the Raft runtime, so that everything openraft spawns
/// lives there.
async fn start_groups(
    config: &MetaConfig,
    registry: &Registry,
    advertise: &str,
) -> Result<Groups, MetaError> {
    let groups = 1 + config.data_raft_group_num;
    let raft_config = Arc::new(
        Config {
            cluster_name: "tidemq-meta".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.openraft_election_timeout().0,
            election_timeout_max: config.openraft_election_timeout().1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
            max_in_snapshot_log_to_keep: config.snapshot_keep_logs,
            ..Default::default()
        }
        .validate()
        .map_err(|e| MetaError::InvalidArgument {
            reason: format!("raft configuration: {e}"),
        })?,
    );
    let stores = crate::store::open(&config.data_dir, groups, registry).await?;
    let channels = ChannelPool::new(config.secret.clone());
    let batch_metrics = BatchMetricsVec::register(registry)?;
    let gauges = RaftGauges::register(registry)?;
    let mut out = Groups {
        channels: channels.clone(),
        rafts: Vec::with_capacity(groups as usize),
        states: Vec::with_capacity(groups as usize),
        batchers: Vec::with_capacity(groups as usize),
        tasks: Vec::with_capacity(2 * groups as usize),
        closed: stores.first().map(|(_, sm)| sm.closed()),
    };
    for (group, (log, sm)) in stores.into_iter().enumerate() {
        out.states.push(sm.state());
        let network = GrpcNetworkFactory::new(group as u32, channels.clone());
        let raft = Raft::new(config.node_id, Arc::clone(&raft_config), network, log, sm)
            .await
            .map_err(|e| MetaError::Raft {
                reason: format!("group {group} failed to start: {e}"),
            })?;
        let (batcher, task) =
            Batcher::spawn(raft.clone(), config.batch, batch_metrics.group(group));
        out.batchers.push(batcher);
        out.tasks.push(task);
        out.tasks
            .push(tokio::spawn(gauges.clone().watch(group, raft.metrics())));
        out.rafts.push(raft);
    }
    if config.join.is_empty() {
        bootstrap(&out.rafts, config, advertise).await?;
    }
    Ok(out)
}

/// Asks the running cluster to add this node to every group it is not yet a
/// voter of. Each group's leader adds it as a learner, waits until it has
/// caught up (by log or snapshot), then promotes it.
async fn join(
    rafts: &[Raft<TypeConfig>],
    config: &MetaConfig,
    advertise: &str,
) -> Result<(), MetaError> {
    let client = crate::MetaClient::with_secret(
        config.join.clone(),
        Duration::from_secs(120),
        config.secret.clone(),
    )?;
    for (group, raft) in rafts.iter().enumerate() {
        let is_voter = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == config.node_id);
        if is_voter {
            continue;
        }
        client
            .add_member(group as u32, config.node_id, advertise)
            .await
            .map_err(|e| MetaError::Join {
                addrs: config.join.clone(),
                reason: format!("group {group}: {e}"),
            })?;
        info!(group, "joined the cluster");
    }
    Ok(())
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

/// `raft_write_duration_ms{group}` and `raft_write_batch_requests{group}`.
struct BatchMetricsVec {
    write_ms: HistogramVec,
    batch_size: HistogramVec,
}

impl BatchMetricsVec {
    fn register(registry: &Registry) -> Result<Self, MetaError> {
        let write_ms = HistogramVec::new(
            HistogramOpts::new(
                "raft_write_duration_ms",
                "Time from a batch's submission to Raft until it is committed and applied",
            )
            .buckets(exponential_buckets(0.1, 2.0, 16).map_err(MetaError::Metrics)?),
            &["group"],
        )
        .map_err(MetaError::Metrics)?;
        let batch_size = HistogramVec::new(
            HistogramOpts::new(
                "raft_write_batch_requests",
                "Requests coalesced into one Raft entry",
            )
            .buckets(exponential_buckets(1.0, 2.0, 14).map_err(MetaError::Metrics)?),
            &["group"],
        )
        .map_err(MetaError::Metrics)?;
        registry
            .register(Box::new(write_ms.clone()))
            .map_err(MetaError::Metrics)?;
        registry
            .register(Box::new(batch_size.clone()))
            .map_err(MetaError::Metrics)?;
        Ok(BatchMetricsVec {
            write_ms,
            batch_size,
        })
    }

    fn group(&self, group: usize) -> BatchMetrics {
        let label = [group.to_string()];
        BatchMetrics {
            write_ms: self.write_ms.with_label_values(&label),
            batch_size: self.batch_size.with_label_values(&label),
        }
    }
}

/// Per-group gauges, updated from openraft's metrics channel whenever it
/// changes: `raft_last_log_index`, `raft_last_applied`, `raft_apply_lag`
/// (entries in the log not yet applied), `raft_term` and `raft_is_leader`.
#[derive(Clone)]
struct RaftGauges {
    last_log_index: IntGaugeVec,
    last_applied: IntGaugeVec,
    apply_lag: IntGaugeVec,
    term: IntGaugeVec,
    is_leader: IntGaugeVec,
}

impl RaftGauges {
    fn register(registry: &Registry) -> Result<Self, MetaError> {
        let gauge = |name: &str, help: &str| -> Result<IntGaugeVec, MetaError> {
            let gauge =
                IntGaugeVec::new(Opts::new(name, help), &["group"]).map_err(MetaError::Metrics)?;
            registry
                .register(Box::new(gauge.clone()))
                .map_err(MetaError::Metrics)?;
            Ok(gauge)
        };
        Ok(RaftGauges {
            last_log_index: gauge("raft_last_log_index", "Index of the last entry in the log")?,
            last_applied: gauge("raft_last_applied", "Index of the last applied entry")?,
            apply_lag: gauge(
                "raft_apply_lag",
                "Entries in the log not yet applied to the state machine",
            )?,
            term: gauge("raft_term", "Current Raft term")?,
            is_leader: gauge("raft_is_leader", "1 when this node leads the group")?,
        })
    }

    /// Follows one group's metrics until its Raft shuts down.
    async fn watch(
        self,
        group: usize,
        mut metrics: watch::Receiver<RaftMetrics<NodeId, MetaNode>>,
    ) {
        let label = [group.to_string()];
        let last_log_index = self.last_log_index.with_label_values(&label);
        let last_applied = self.last_applied.with_label_values(&label);
        let apply_lag = self.apply_lag.with_label_values(&label);
        let term = self.term.with_label_values(&label);
        let is_leader = self.is_leader.with_label_values(&label);
        loop {
            {
                let m = metrics.borrow_and_update();
                let log = m.last_log_index.unwrap_or(0);
                let applied = m.last_applied.map_or(0, |id| id.index);
                last_log_index.set(log as i64);
                last_applied.set(applied as i64);
                apply_lag.set(log.saturating_sub(applied) as i64);
                term.set(m.current_term as i64);
                is_leader.set(i64::from(m.current_leader == Some(m.id)));
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }
}
