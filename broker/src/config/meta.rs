//! `[meta]`: the meta service run inside the node, and the secret its gRPC
//! calls carry.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use tidemq_meta::ClusterSecret;

use super::ConfigError;

/// `[meta]`: the meta service run inside the node. The keys mean what the
/// `tidemq-meta` flags of the same names mean.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetaServiceConfig {
    /// This node's id in every Raft group (unique in the cluster, not 0).
    pub node_id: u64,
    /// Address the gRPC server (`MetaService`, `RaftService`) binds.
    pub grpc_addr: SocketAddr,
    /// Address other nodes reach this one at; the bound address when unset.
    pub advertise_addr: Option<String>,
    /// Data Raft groups besides the metadata group 0.
    pub data_groups: u32,
    /// Members of a new cluster as `"ID=HOST:PORT"`, this node included.
    /// Empty: a single-node cluster, bootstrapped on first start.
    pub peers: Vec<String>,
    /// gRPC addresses of a running cluster to join on first start.
    pub join: Vec<String>,
    /// Raft heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// Raft election timeout range `[min, max]`, in milliseconds.
    pub election_timeout_ms: [u64; 2],
    /// Log entries since the last snapshot that trigger a new one.
    pub snapshot_after: u64,
    /// Log entries kept behind a snapshot.
    pub snapshot_keep_logs: u64,
    /// gRPC requests slower than this are logged at WARN, in milliseconds.
    pub slow_request_ms: u64,
    /// Longest the broker waits for one call to the meta service (a
    /// persistent session's write, a route write), retries after a leader
    /// change included, in milliseconds. Past it the call fails: a CONNECT
    /// that needed it gets CONNACK 0x88 (3.1.1: 0x03), for example when
    /// this node is cut off from the majority.
    pub client_timeout_ms: u64,
    /// Requests coalesced into one Raft entry, at most.
    pub batch_max_requests: usize,
    /// Approximate bytes of one coalesced Raft entry, at most.
    pub batch_max_bytes: usize,
    /// Coalesced entries of one group in flight at once.
    pub batch_max_inflight: usize,
    /// File holding the cluster secret (16 or more printable characters,
    /// the same on every node): every gRPC call to this node must carry it
    /// (`authorization: Bearer ...`), and its own calls do.
    pub cluster_secret_file: Option<PathBuf>,
    /// Serve a non-loopback `grpc_addr` without a cluster secret: anyone
    /// who reaches it can change the cluster's membership and data.
    pub allow_unauthenticated_on_public_address: bool,
}

impl Default for MetaServiceConfig {
    fn default() -> Self {
        // The meta crate's own defaults, so that `tidemq` and `tidemq-meta`
        // agree; the example file test notices when they change.
        let grpc_addr = SocketAddr::from(([127, 0, 0, 1], 1228));
        let meta = tidemq_meta::MetaConfig::new(1, grpc_addr, PathBuf::new());
        Self {
            node_id: meta.node_id,
            grpc_addr,
            advertise_addr: None,
            data_groups: meta.data_raft_group_num,
            peers: Vec::new(),
            join: Vec::new(),
            heartbeat_ms: millis(meta.heartbeat),
            election_timeout_ms: [
                millis(meta.election_timeout.0),
                millis(meta.election_timeout.1),
            ],
            snapshot_after: meta.snapshot_after_entries,
            snapshot_keep_logs: meta.snapshot_keep_logs,
            slow_request_ms: millis(meta.slow_request),
            client_timeout_ms: 10_000,
            batch_max_requests: meta.batch.max_requests,
            batch_max_bytes: meta.batch.max_bytes,
            batch_max_inflight: meta.batch.max_inflight,
            cluster_secret_file: None,
            allow_unauthenticated_on_public_address: false,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl MetaServiceConfig {
    /// [`MetaServiceConfig::client_timeout_ms`] as a duration.
    pub fn client_timeout(&self) -> Duration {
        Duration::from_millis(self.client_timeout_ms)
    }

    /// The members listed in `peers`, parsed.
    pub fn members(&self) -> Result<Vec<(u64, String)>, ConfigError> {
        self.peers
            .iter()
            .map(|peer| {
                parse_peer(peer).map_err(|message| ConfigError::Invalid {
                    origin: None,
                    message: format!("meta.peers: {message}"),
                })
            })
            .collect()
    }

    /// The meta service's own configuration, with its data under `dir`.
    pub fn to_meta_config(&self, dir: &Path) -> Result<tidemq_meta::MetaConfig, ConfigError> {
        let mut config = tidemq_meta::MetaConfig::new(self.node_id, self.grpc_addr, dir);
        config.advertise_addr = self.advertise_addr.clone();
        config.data_raft_group_num = self.data_groups;
        config.initial_members = self.members()?;
        config.join = self.join.clone();
        config.heartbeat = Duration::from_millis(self.heartbeat_ms);
        config.election_timeout = (
            Duration::from_millis(self.election_timeout_ms[0]),
            Duration::from_millis(self.election_timeout_ms[1]),
        );
        config.snapshot_after_entries = self.snapshot_after;
        config.snapshot_keep_logs = self.snapshot_keep_logs;
        config.slow_request = Duration::from_millis(self.slow_request_ms);
        config.batch = tidemq_meta::BatchLimits {
            max_requests: self.batch_max_requests,
            max_bytes: self.batch_max_bytes,
            max_inflight: self.batch_max_inflight,
        };
        config.secret = self.secret()?;
        Ok(config)
    }

    /// The cluster secret read from `cluster_secret_file`, if one is set.
    pub fn secret(&self) -> Result<Option<ClusterSecret>, ConfigError> {
        let Some(path) = &self.cluster_secret_file else {
            return Ok(None);
        };
        let text = super::read_secret(path)?;
        ClusterSecret::new(&text)
            .map(Some)
            .map_err(|e| ConfigError::Invalid {
                origin: Some(path.display().to_string()),
                message: e.to_string(),
            })
    }

    /// Refuses a non-loopback `grpc_addr` that anyone could call.
    pub(super) fn check_exposure(&self) -> Result<(), ConfigError> {
        super::check_guarded(
            self.grpc_addr,
            self.cluster_secret_file.is_some() || self.allow_unauthenticated_on_public_address,
            "the meta service",
            "set meta.cluster_secret_file (the same secret on every node), or set \
             meta.allow_unauthenticated_on_public_address = true if only trusted hosts can reach it",
        )
    }
}

/// `"ID=HOST:PORT"`, as in `tidemq-meta --peer`.
fn parse_peer(text: &str) -> Result<(u64, String), String> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("expected \"ID=HOST:PORT\", got {text:?}"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("bad node id in {text:?}: {e}"))?;
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(format!("no address in {text:?}"));
    }
    Ok((id, addr.to_string()))
}
