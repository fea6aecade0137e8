//! The openraft type configuration and the application data replicated by
//! every group: [`MetaRequest`] in, [`MetaResponse`] out.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's id in every Raft group it takes part in.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration shared by all meta Raft groups.
    pub TypeConfig:
        D = MetaRequest,
        R = MetaResponse,
        NodeId = NodeId,
        Node = MetaNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::store::MetaSnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry of a meta Raft group.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id of a meta Raft group.
pub type LogId = openraft::LogId<NodeId>;
/// A vote of a meta Raft group.
pub type Vote = openraft::Vote<NodeId>;
/// The membership as stored with the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, MetaNode>;
/// Snapshot metadata of a meta Raft group.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MetaNode>;
/// openraft's storage error, as returned by the storage traits.
pub type StorageError = openraft::StorageError<NodeId>;

/// How a Raft member is reached: the address of its gRPC endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaNode {
    /// `host:port` of the node's gRPC server.
    pub addr: String,
}

impl fmt::Display for MetaNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// A client session as the meta service stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// `"{tenant}/{client_id}"`: one flat key, no nesting.
    pub client_key: String,
    /// The broker node the client is connected to (or was, last).
    pub node_id: NodeId,
    /// When the session was created, in Unix milliseconds.
    pub created_at_ms: u64,
    /// MQTT session expiry interval in seconds.
    pub expiry_secs: u32,
    /// Whether a client is currently connected to it.
    pub connected: bool,
    /// Broker-owned state, opaque to the meta service.
    pub payload: Vec<u8>,
}

/// A subscription of a session to a topic filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The owning session.
    pub client_key: String,
    /// The MQTT topic filter.
    pub filter: String,
    /// Maximum QoS granted.
    pub qos: u8,
    /// Broker-owned subscription options (MQTT 5 options byte, identifier...).
    pub options: Vec<u8>,
}

/// A broker node registered with the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id.
    pub node_id: NodeId,
    /// `host:port` of its gRPC endpoint.
    pub addr: String,
    /// When it registered, in Unix milliseconds.
    pub registered_at_ms: u64,
    /// Its last heartbeat, in Unix milliseconds.
    pub last_heartbeat_ms: u64,
    /// Free-form labels (zone, version...), opaque to the meta service.
    pub labels: Vec<(String, String)>,
}

/// A write to the meta state: the application data of a Raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRequest {
    /// Create or replace sessions, all or none.
    CreateSessions(Vec<Session>),
    /// Delete a session and all its subscriptions.
    DeleteSession {
        /// The session's key.
        client_key: String,
    },
    /// Add or replace a subscription.
    AddSubscription {
        /// The owning session.
        client_key: String,
        /// The topic filter.
        filter: String,
        /// Maximum QoS granted.
        qos: u8,
        /// Broker-owned options.
        options: Vec<u8>,
    },
    /// Remove a subscription.
    RemoveSubscription {
        /// The owning session.
        client_key: String,
        /// The topic filter.
        filter: String,
    },
    /// Register (or re-register) a broker node.
    RegisterNode {
        /// Its id.
        node_id: NodeId,
        /// `host:port` of its gRPC endpoint.
        addr: String,
        /// When it registered, in Unix milliseconds.
        at_ms: u64,
        /// Free-form labels.
        labels: Vec<(String, String)>,
    },
    /// Record a node's heartbeat.
    NodeHeartbeat {
        /// Its id.
        node_id: NodeId,
        /// When, in Unix milliseconds.
        at_ms: u64,
    },
    /// Set one cluster configuration key.
    SetClusterConfig {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Add and remove routes of one broker node (metadata group only):
    /// `add` are filters the node now has local subscribers of, `remove`
    /// filters it no longer has any of.
    SetRoutes {
        /// The broker node.
        node_id: NodeId,
        /// Filters to route to it.
        add: Vec<String>,
        /// Filters no longer routed to it.
        remove: Vec<String>,
    },
    /// Set or clear retained messages (metadata group only), in order: an
    /// entry with an empty `message` clears its topic.
    SetRetained(Vec<RetainedEntry>),
    /// Independent requests coalesced into one Raft entry; each gets its own
    /// outcome in [`MetaResponse::Batch`].
    Batch(Vec<MetaRequest>),
}

/// The outcome of one [`MetaRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// A blank or membership entry: nothing to report.
    Empty,
    /// The write was applied.
    Ok,
    /// `CreateSessions` wrote this many sessions.
    Sessions {
        /// How many.
        written: u32,
    },
    /// A delete; `existed` says whether there was anything to delete.
    Deleted {
        /// Whether the key existed.
        existed: bool,
    },
    /// The request targets something that does not exist (a heartbeat from
    /// an unregistered node); nothing changed.
    NotFound,
    /// The request is invalid; nothing changed.
    Rejected {
        /// Why.
        reason: String,
    },
    /// `SetRoutes` was applied at this log index of the metadata group.
    Routes {
        /// The index of its entry.
        index: u64,
    },
    /// `SetRetained` was applied at this log index of the metadata group.
    Retained {
        /// The index of its entry.
        index: u64,
    },
    /// One outcome per request of a [`MetaRequest::Batch`], in order.
    Batch(Vec<MetaResponse>),
}

/// A route of the cluster: broker node `node_id` has local subscribers of
/// `filter`. One per node and filter, however many clients share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    /// The topic filter (for a shared subscription, its inner filter).
    pub filter: String,
    /// The node.
    pub node_id: NodeId,
}

/// One route written by an applied `SetRoutes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    /// The route.
    pub route: Route,
    /// Whether it now exists (added) or not (removed).
    pub present: bool,
}

/// The retained message of one topic as the metadata group holds it. The
/// broker owns `message` (its bytes are opaque here); `origin` and `seq`
/// say which write it is: each node numbers its own writes in the order it
/// sends them, so a node never replaces a newer write of an origin by an
/// older one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedEntry {
    /// The topic name.
    pub topic: String,
    /// The broker node that wrote it.
    pub origin: NodeId,
    /// That node's number for the write, increasing across its restarts.
    pub seq: u64,
    /// The message, encoded by the broker; empty clears the topic.
    pub message: Vec<u8>,
}

/// What the metadata group applied, as a node's watcher sees it
/// ([`crate::MetaNodeHandle::watch_metadata`]), in apply order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataUpdate {
    /// Entries up to log index `applied` are applied; `changes` are the
    /// route writes among them and `retained` the retained messages set or
    /// cleared, each in order (often none).
    Applied {
        /// The last applied index.
        applied: u64,
        /// The routes written.
        changes: Vec<RouteChange>,
        /// The retained messages written.
        retained: Vec<RetainedEntry>,
    },
    /// A snapshot replaced the whole state at `applied`: read the routes
    /// and retained messages again.
    Reload {
        /// The snapshot's last index.
        applied: u64,
    },
}
