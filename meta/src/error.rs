//! Typed errors: [`StoreError`] for the RocksDB storage layer, [`MetaError`]
//! for the meta service as a whole.

use std::io;
use std::path::PathBuf;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::types::NodeId;

/// Errors of the RocksDB storage layer (log store, state machine, pool).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A RocksDB call failed.
    #[error("rocksdb {op} failed")]
    Rocks {
        /// The operation, as named in the `rocksdb_operation_ms` metric.
        op: &'static str,
        /// The RocksDB error.
        #[source]
        source: rocksdb::Error,
    },
    /// A column family the store needs is not open.
    #[error("column family {name} is missing")]
    MissingColumnFamily {
        /// Its name, e.g. `g3_log`.
        name: String,
    },
    /// A value could not be serialized.
    #[error("cannot encode {what}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored value could not be deserialized.
    #[error("cannot decode {what} at key {key:?}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The key it was stored under, lossily printed.
        key: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A log entry is stored under a key that is not its index.
    #[error("log entry {index} is stored under key {key:?}")]
    CorruptLog {
        /// The key found.
        key: Vec<u8>,
        /// The index in the entry.
        index: u64,
    },
    /// Reading or writing a snapshot file failed.
    #[error("snapshot file {path:?}")]
    SnapshotIo {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A snapshot blob is malformed.
    #[error("corrupt snapshot: {reason}")]
    CorruptSnapshot {
        /// What is wrong with it.
        reason: String,
    },
    /// The `meta-rocksdb-*` pool has shut down.
    #[error("the rocksdb pool is shut down")]
    PoolClosed,
    /// A job on the pool panicked.
    #[error("a rocksdb pool job panicked during {op}")]
    JobPanicked {
        /// The operation.
        op: &'static str,
    },
    /// The log writer thread has stopped.
    #[error("the raft log writer has stopped")]
    WriterClosed,
    /// A log write failed; the writer refuses every later write rather than
    /// pretend the log is durable.
    #[error("the raft log writer failed earlier and refuses writes: {reason}")]
    WriterFailed {
        /// The first error.
        reason: String,
    },
    /// `open` was asked for zero groups.
    #[error("at least one raft group is required, got {groups}")]
    NoGroups {
        /// The number asked for.
        groups: u32,
    },
    /// A store thread could not be spawned.
    #[error("cannot spawn thread {name}")]
    Spawn {
        /// The thread name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Registering a metric in the prometheus registry failed.
    #[error("cannot register metric {name}")]
    Metrics {
        /// The metric name.
        name: &'static str,
        /// The prometheus error.
        #[source]
        source: prometheus::Error,
    },
}

impl StoreError {
    pub(crate) fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError {
        move |source| StoreError::Rocks { op, source }
    }

    pub(crate) fn encode(what: &'static str) -> impl FnOnce(serde_json::Error) -> StoreError {
        move |source| StoreError::Encode { what, source }
    }

    pub(crate) fn decode(
        what: &'static str,
        key: &[u8],
    ) -> impl FnOnce(serde_json::Error) -> StoreError {
        let key = String::from_utf8_lossy(key).into_owned();
        move |source| StoreError::Decode { what, key, source }
    }

    /// Converts into openraft's storage error, naming what was being done.
    pub(crate) fn into_raft(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> StorageError<NodeId> {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }

    /// Converts into an `io::Error`, the type openraft's log-flush callback takes.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}

/// Errors of the meta service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The storage layer failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A request names a Raft group this node does not have.
    #[error("unknown raft group {group} (this node has {groups})")]
    UnknownGroup {
        /// The group asked for.
        group: u32,
        /// How many groups exist.
        groups: u32,
    },
    /// A request is malformed; nothing was applied.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// This node does not lead the group; the leader, if known, is named.
    #[error("not the leader{}", leader_addr.as_deref().map(|a| format!("; the leader is at {a}")).unwrap_or_default())]
    NotLeader {
        /// The leader's id, if known.
        leader_id: Option<NodeId>,
        /// The leader's gRPC address, if known.
        leader_addr: Option<String>,
    },
    /// Raft refused or failed the operation.
    #[error("raft: {reason}")]
    Raft {
        /// What happened.
        reason: String,
    },
    /// The leader could not hear from a quorum in time to confirm it still
    /// leads (a member just died, an election is near): worth retrying.
    #[error("no quorum answered: {reason}")]
    NoQuorum {
        /// What Raft reported.
        reason: String,
    },
    /// The node (or a part of it) is shutting down.
    #[error("the meta service is shut down")]
    Closed,
    /// A gRPC call to another node failed.
    #[error("gRPC call to {addr} failed: {status}")]
    Rpc {
        /// The address called.
        addr: String,
        /// The status it answered (or the transport error).
        status: Box<tonic::Status>,
    },
    /// The gRPC server could not bind its address.
    #[error("cannot bind {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Registering a metric failed.
    #[error("cannot register metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// A runtime or thread could not be started.
    #[error("cannot start {name}")]
    Runtime {
        /// The runtime or thread.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A session write that went out in one request with others
    /// ([`crate::MetaClient::put_session`]) failed with this error.
    #[error(transparent)]
    Coalesced(std::sync::Arc<MetaError>),
    /// The node at `addr` requires the cluster secret, and the call did not
    /// carry it (or carried another).
    #[error("{addr} refused the call: the cluster secret is missing or wrong")]
    Unauthenticated {
        /// The address called.
        addr: String,
    },
    /// Joining a running cluster failed.
    #[error("cannot join the cluster at {addrs:?}: {reason}")]
    Join {
        /// The addresses tried.
        addrs: Vec<String>,
        /// Why.
        reason: String,
    },
}

/// Metadata header naming the leader's gRPC address on a `FAILED_PRECONDITION` answer.
pub const LEADER_HEADER: &str = "x-tidemq-leader";

impl MetaError {
    /// Maps a failed Raft call (`client_write`, `ensure_linearizable`):
    /// "forward to leader" becomes [`MetaError::NotLeader`], the rest
    /// [`MetaError::Raft`].
    pub(crate) fn from_raft<E>(e: &openraft::error::RaftError<NodeId, E>) -> MetaError
    where
        E: std::error::Error
            + openraft::TryAsRef<openraft::error::ForwardToLeader<NodeId, crate::types::MetaNode>>,
    {
        match e.forward_to_leader::<crate::types::MetaNode>() {
            Some(forward) => MetaError::NotLeader {
                leader_id: forward.leader_id,
                leader_addr: forward.leader_node.as_ref().map(|n| n.addr.clone()),
            },
            None => MetaError::Raft {
                reason: e.to_string(),
            },
        }
    }

    /// The gRPC status a server answers this error with.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            MetaError::InvalidArgument { .. } | MetaError::UnknownGroup { .. } => {
                tonic::Status::invalid_argument(self.to_string())
            }
            MetaError::NotLeader { leader_addr, .. } => {
                let mut status = tonic::Status::failed_precondition(self.to_string());
                if let Some(addr) = leader_addr
                    && let Ok(value) = addr.parse()
                {
                    status.metadata_mut().insert(LEADER_HEADER, value);
                }
                status
            }
            MetaError::Closed | MetaError::NoQuorum { .. } => {
                tonic::Status::unavailable(self.to_string())
            }
            MetaError::Rpc { status, .. } => (**status).clone(),
            MetaError::Unauthenticated { .. } => tonic::Status::unauthenticated(self.to_string()),
            MetaError::Coalesced(e) => e.to_status(),
            _ => tonic::Status::internal(self.to_string()),
        }
    }

    /// The error for a status a server answered.
    pub(crate) fn from_status(addr: &str, status: tonic::Status) -> MetaError {
        match status.code() {
            tonic::Code::InvalidArgument => MetaError::InvalidArgument {
                reason: status.message().to_string(),
            },
            tonic::Code::Unauthenticated => MetaError::Unauthenticated {
                addr: addr.to_string(),
            },
            _ => MetaError::Rpc {
                addr: addr.to_string(),
                status: Box::new(status),
            },
        }
    }
}

/// Refuses an empty `value` for the required `field`.
pub(crate) fn require(field: &str, value: &str) -> Result<(), MetaError> {
    if value.is_empty() {
        return Err(MetaError::InvalidArgument {
            reason: format!("{field} must not be empty"),
        });
    }
    Ok(())
}
