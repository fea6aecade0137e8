//! # tidemq-meta
//!
//! The meta service of TideMQ: everything that needs strong consistency
//! (sessions, subscriptions, broker nodes, cluster configuration) held by
//! openraft groups over one shared RocksDB. This crate currently provides the
//! storage layer; Raft wiring and gRPC come on top of it.
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
//! - [`error`]: [`StoreError`] and [`MetaError`].
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

mod batcher;
mod channels;
mod client;
pub mod error;
pub mod grpc;
mod metrics;
mod network;
mod node;
mod routing;
pub mod store;
pub mod types;

pub use openraft;

pub use crate::batcher::BatchLimits;
pub use crate::client::MetaClient;
pub use crate::error::{MetaError, StoreError};
pub use crate::node::{MetaConfig, MetaNodeHandle};
pub use crate::routing::GroupRouter;
pub use crate::store::{
    MetaLogStore, MetaSnapshotBuilder, MetaState, MetaStateMachine, RocksPool, StoreOptions, open,
    open_with,
};
pub use crate::types::{
    MetaNode, MetaRequest, MetaResponse, NodeId, NodeInfo, Session, Subscription, TypeConfig,
};
