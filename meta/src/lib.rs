//! # tidemq-meta
//!
//! The meta service of TideMQ: everything that needs strong consistency
//! (sessions, subscriptions, broker nodes, cluster configuration) held by
//! openraft groups over one shared RocksDB, served over tonic gRPC. The
//! `tidemq` node runs it in-process ([`MetaNodeHandle`]); the `tidemq-meta`
//! binary runs one node as a process.
//!
//! ## Layout
//!
//! - [`types`]: the openraft type configuration ([`TypeConfig`]) and the
//!   replicated data: [`MetaRequest`] in, [`MetaResponse`] out.
//! - [`store`]: the storage of all groups of a node.
//!   - [`RocksPool`]: the `meta-rocksdb-{i}` threads that run every RocksDB
//!     call, so none blocks a tokio worker.
//!   - `LogWriter` (internal): one `meta-raft-log` thread merging the log
//!     writes of all groups into one `WriteBatch` and one sync per round, so
//!     N groups appending together cost one fsync, not N.
//!   - [`MetaLogStore`] / [`MetaStateMachine`]: openraft's storage-v2
//!     `RaftLogStorage` and `RaftStateMachine` for one group, and
//!     [`MetaSnapshotBuilder`].
//!   - [`MetaState`]: cloneable read handle (get / list) for the services.
//! - [`MetaNodeHandle`]: a running node. One metadata group (0) plus
//!   [`MetaConfig::data_raft_group_num`] data groups; a client key picks its
//!   data group by a stable hash ([`GroupRouter`]). Raft runs on one runtime
//!   and gRPC on another ([`MetaRuntimes`]); each group's writes are
//!   coalesced into one Raft entry by a batcher ([`BatchLimits`]).
//! - [`grpc`]: the `MetaService` and `RaftService` servers. A follower
//!   answers writes with the leader's address (`x-tidemq-leader`), which
//!   [`MetaClient`] follows.
//! - [`MetaClient`]: channel pool, leader cache, retries with a deadline,
//!   cluster configuration cached in an `ArcSwap`; also membership
//!   (`add_member`, `remove_member`) and per-node `raft_status`.
//! - [`session_writer`]: concurrent `MetaClient::put_session` calls leave
//!   as one CreateSessions request (what a broker does on CONNECT).
//! - [`runtime`]: named runtimes and the [`runtime::RuntimeMonitor`].
//! - [`error`]: [`StoreError`] and [`MetaError`].
//!
//! ## Clusters
//!
//! A node with no members configured bootstraps a single-node cluster on its
//! first start and restarts from its persisted state afterwards. Nodes given
//! the same member list ([`MetaConfig::initial_members`]) form a cluster: the
//! lowest id initializes every group. A new node joins a running cluster
//! through any member ([`MetaConfig::join`]): each group's leader adds it as
//! a learner, waits until it has caught up (by log, or by snapshot when the
//! log it needs is purged), then promotes it to voter.
//!
//! The Raft clock defaults to a 100 ms heartbeat and a 1–2 s election
//! timeout. Idle groups cost no disk: heartbeats carry no entries, and
//! the committed index rides unsynced on the next log write. A follower
//! stands for election 1.5–2 s after it last heard its leader with the
//! defaults (openraft 0.9 waits its leader lease plus a random election
//! timeout, so it is given half of each bound: see
//! [`MetaConfig::openraft_election_timeout`]).
//!
//! ```text
//! tidemq-meta                                        # single node, 127.0.0.1:1228, ./data/meta
//! tidemq-meta --node-id 1 --grpc-addr 127.0.0.1:1228 --peer 1=127.0.0.1:1228 \
//!             --peer 2=127.0.0.1:1229 --peer 3=127.0.0.1:1230 --data-dir ./data/meta1
//! tidemq-meta --node-id 4 --grpc-addr 127.0.0.1:1231 --join 127.0.0.1:1228 --data-dir ./data/meta4
//! ```
//!
//! ## Quick start
//!
//! ```
//! use openraft::storage::RaftStateMachine;
//! use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
//! use tidemq_meta::{MetaRequest, MetaResponse, Session};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let registry = prometheus::Registry::new();
//! // One metadata group and one data group, sharing one RocksDB.
//! let mut groups = tidemq_meta::open(dir.path(), 2, &registry).await?;
//! let (_log, sm) = &mut groups[1];
//!
//! // openraft applies committed entries; done by hand here.
//! let session = Session { client_key: "acme/sensor-1".into(), ..Default::default() };
//! let entry = Entry {
//!     log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
//!     payload: EntryPayload::Normal(MetaRequest::CreateSessions(vec![session])),
//! };
//! let responses = sm.apply([entry]).await?;
//! assert_eq!(responses, [MetaResponse::Sessions { written: 1 }]);
//!
//! let state = sm.state();
//! assert!(state.get_session("acme/sensor-1").await?.is_some());
//! assert_eq!(state.list_sessions("acme/", None, 10).await?.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! ## On disk
//!
//! ```text
//! {dir}/rocksdb/                  one RocksDB for every group of the node
//!   g{n}_log   be_u64(index)              -> Entry (JSON)          synced
//!   g{n}_meta  "vote"                     -> Vote                  synced
//!              "committed"                -> Option<LogId>
//!              "last_purged"              -> LogId
//!   g{n}_sm    "!applied"                 -> Option<LogId>     \  one WriteBatch
//!              "!membership"              -> StoredMembership  |  per apply
//!              "s/{tenant}/{client_id}"   -> Session           |
//!              "u/{client_key}\0{filter}" -> Subscription      |  (\0: never in
//!              "n/{node_id:020}"          -> NodeInfo          |   MQTT strings)
//!              "c/{key}"                  -> UTF-8 value       /
//! {dir}/snapshots/g{n}.snap      current snapshot of group n: one snapshot blob
//!
//! snapshot blob = "TMQSNAP1" | meta_len u32 | meta (JSON SnapshotMeta) | record* | end
//! record        = key_len u32 | key | value_len u32 | value    one g{n}_sm data pair
//! end           = 0xFFFF_FFFF u32 | record count u64 | crc32c u32 (of the records)
//! ```
//!
//! Snapshot integers are big-endian. Log appends and votes are synced before
//! openraft hears they are durable; state machine batches are not synced (the
//! log is the durable record, and `!applied` travels in the same batch as the
//! data it covers, so a restart resumes from a consistent point and openraft
//! replays the rest).
//!
//! ## Metrics
//!
//! Registered into the [`prometheus::Registry`] given to [`open`] (one open
//! store per registry):
//!
//! | metric | what |
//! |---|---|
//! | `rocksdb_operation_ms{op}` | one RocksDB job; `op` = `open`, `load_state_machine`, `get`, `list`, `read_logs`, `get_log_state`, `apply`, `snapshot_build`, `snapshot_install`, `snapshot_read`, `log_write` |
//! | `raft_log_append_batch_duration_ms` | one merged, synced log write (all groups) |
//! | `raft_log_append_batch_entries` | log entries in one merged write |
//! | `raft_log_append_batch_requests` | log store writes (appends, votes...) merged into one |
//! | `raft_log_append_batch_groups` | distinct groups in one merged write |
//! | `raft_apply_batch_duration_ms{group}` | one state machine `apply` call |
//!
//! and by [`MetaNodeHandle::start`]:
//!
//! | metric | what |
//! |---|---|
//! | `raft_write_duration_ms{group}` | one coalesced write, from submission to applied |
//! | `raft_write_batch_requests{group}` | requests coalesced into one Raft entry |
//! | `raft_last_log_index{group}`, `raft_last_applied{group}` | from openraft's metrics |
//! | `raft_apply_lag{group}` | log entries not yet applied |
//! | `raft_term{group}`, `raft_is_leader{group}` | |
//! | `grpc_requests{service,method,status}`, `grpc_request_duration_ms{service,method,status}` | every served RPC; slower than [`MetaConfig::slow_request`] is logged at WARN |
//!
//! and by [`runtime::RuntimeMonitor`]: `runtime_busy_ratio`,
//! `runtime_global_queue_depth`, `runtime_alive_tasks`, `runtime_workers`
//! per runtime.

pub mod auth;
mod batcher;
pub mod channels;
mod client;
pub mod error;
pub mod grpc;
mod metrics;
mod network;
mod node;
mod routing;
pub mod runtime;
pub mod session_writer;
pub mod store;
pub mod types;

pub use openraft;

pub use crate::auth::{ClusterSecret, RequireSecret};
pub use crate::batcher::BatchLimits;
pub use crate::client::MetaClient;
pub use crate::error::{MetaError, StoreError};
pub use crate::node::{ExtraServices, MetaConfig, MetaNodeHandle, MetaRuntimes};
pub use crate::routing::GroupRouter;
pub use crate::store::{
    MetaLogStore, MetaSnapshotBuilder, MetaSnapshotData, MetaState, MetaStateMachine, MetadataRead,
    MetadataWatch, RocksPool, StoreOptions, open, open_with,
};
pub use crate::types::{
    MetaNode, MetaRequest, MetaResponse, MetadataUpdate, NodeId, NodeInfo, RetainedEntry, Route,
    RouteChange, Session, Subscription, TypeConfig,
};
