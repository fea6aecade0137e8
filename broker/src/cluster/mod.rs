//! The brokers of a cluster routing to each other (`docs/cluster.md`).
//!
//! - [`keeper`]: this node's routes (one per filter with local
//!   subscribers) written to the metadata Raft group.
//! - [`table`]: every node's routes as this node has applied them, matched
//!   on each publish.
//! - [`link`]: one batched gRPC stream per peer carrying the messages that
//!   peer's subscribers match; [`service`] is its receiving end.
//! - [`handoff`]: per peer, what it must receive while it cannot be
//!   reached, on this node's disk until the peer has it.
//! - [`retained`]: retained messages written to the metadata group and
//!   applied from it on every node.
//! - [`metrics`]: what all of them count.
//!
//! A SUBACK that made a route goes out once every other member of the
//! metadata group has applied it ([`Cluster::routes_ready`]), so a message
//! published anywhere after the SUBACK finds the route.

mod flush;
mod handoff;
mod keeper;
mod link;
mod metrics;
mod retained;
mod service;
mod table;
mod takeover;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use prometheus::{IntCounter, Registry};
use tidemq_meta::channels::ChannelPool;
use tidemq_meta::openraft::Raft;
use tidemq_meta::{ExtraServices, MetaClient, MetaError, MetaNodeHandle, NodeId, TypeConfig};
use tidemq_proto::grpc::v1 as pb;
use tidemq_proto::grpc::v1::broker_link_client::BrokerLinkClient;
use tidemq_proto::mqtt::{self, Packet, Protocol, Publish, QoS};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tracing::{info, warn};

pub use self::handoff::ForwardFailure;
use self::handoff::HandoffLog;
pub(crate) use self::handoff::HandoffSettings;
pub(crate) use self::keeper::LocalFilters;
use self::keeper::RouteKeeper;
use self::link::{LinkLimits, Links, NotQueued, Outgoing};
use self::metrics::ClusterMetrics;
use self::retained::{RetainedSink, RetainedWriter};
use self::service::LinkService;
use self::table::{RaftView, RouteTable};
pub(crate) use self::takeover::{Taken, TakeoverError, store_handed};
use crate::broker::Shared;
use crate::config::ClusterConfig;
use crate::log_every::LogEvery;
use crate::message::{Message, MessageId};
use crate::router::{RetainedStore, ShareId, Shares};

/// Per (sending node, message partition), the highest number of the
/// sender's messages the store held at start.
type StoredForwarded = Arc<DashMap<(NodeId, u32), u64>>;

/// The members of the metadata group, where their gRPC servers are.
pub(crate) struct Peers {
    me: NodeId,
    raft: Raft<TypeConfig>,
}

impl Peers {
    /// The gRPC address of member `node`.
    pub(crate) fn addr_of(&self, node: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let node = metrics.membership_config.membership().get_node(&node)?;
        Some(node.addr.clone())
    }

    /// Every member of the metadata group: id, address, and whether it
    /// votes (a learner does not).
    fn members(&self) -> Vec<(NodeId, String, bool)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone(), voters.contains(id)))
            .collect()
    }

    /// The metadata group's leader, as this node knows it.
    fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The last log index this node holds of the metadata group.
    fn last_log_index(&self) -> u64 {
        self.raft.metrics().borrow().last_log_index.unwrap_or(0)
    }

    /// Every member but this node, with its address.
    fn others(&self) -> Vec<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.me)
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect()
    }
}

/// What exists before the meta service starts: the route table, the
/// retained messages and the link service the meta gRPC server will carry.
pub struct ClusterParts {
    node_id: NodeId,
    table: Arc<RouteTable>,
    retained: Arc<RetainedStore>,
    stored: StoredForwarded,
    broker: Arc<OnceLock<Arc<Shared>>>,
    metrics: ClusterMetrics,
    config: ClusterConfig,
}

impl ClusterParts {
    /// Registers the cluster's metrics for node `node_id`; the returned
    /// services go to the meta service's gRPC server
    /// ([`MetaNodeHandle::start_serving`]).
    pub fn new(
        node_id: NodeId,
        config: &ClusterConfig,
        registry: &Registry,
    ) -> Result<(ClusterParts, ExtraServices), prometheus::Error> {
        let metrics = ClusterMetrics::register(registry)?;
        let table = Arc::new(RouteTable::new(
            node_id,
            metrics.routes.clone(),
            metrics.route_lag.clone(),
        ));
        let broker = Arc::new(OnceLock::new());
        let stored = Arc::new(DashMap::new());
        let service = LinkService {
            broker: Arc::clone(&broker),
            table: Arc::clone(&table),
            received: metrics.received.clone(),
            malformed: metrics.malformed.clone(),
            duplicates: metrics.duplicates.clone(),
            routed: Arc::default(),
            stored: Arc::clone(&stored),
        };
        let extra = ExtraServices::new(move |routes, require| {
            routes.add_service(InterceptedService::new(service.server(), require))
        });
        let parts = ClusterParts {
            node_id,
            table,
            retained: Arc::default(),
            stored,
            broker,
            metrics,
            config: config.clone(),
        };
        Ok((parts, extra))
    }

    /// Opens the hand-off logs, where what a peer cannot be sent now is
    /// kept for it.
    pub(crate) async fn open_handoff(
        &self,
        settings: &HandoffSettings,
    ) -> Result<Arc<HandoffLog>, tidemq_storage_engine::StorageError> {
        HandoffLog::open(settings, self.metrics.handoff.clone())
            .await
            .map(Arc::new)
    }

    /// Reads the route table and the retained messages and starts following
    /// them and writing this node's routes and retained messages through
    /// `client`, on the calling task's runtime. Without a hand-off log
    /// (storage off), forwarding to a peer that cannot be reached is at
    /// most once.
    pub(crate) async fn start(
        self,
        meta: &MetaNodeHandle,
        client: MetaClient,
        channels: ChannelPool,
        handoff: Option<Arc<HandoffLog>>,
    ) -> Result<Arc<Cluster>, MetaError> {
        let ClusterParts {
            node_id,
            table,
            retained,
            stored,
            broker,
            metrics,
            config,
        } = self;
        let mut watch = meta.watch_metadata().await?;
        let mine = watch
            .read
            .routes
            .iter()
            .filter(|r| r.node_id == node_id)
            .map(|r| (r.filter.clone(), watch.read.applied))
            .collect::<Vec<_>>();
        let raft = meta.rafts()[tidemq_meta::GroupRouter::METADATA_GROUP as usize].clone();
        let follow_table = Arc::clone(&table);
        let state = meta.metadata().clone();
        let view = RaftView(raft.clone());
        // The first read is in the store before the broker serves anyone.
        let sink = RetainedSink {
            store: Arc::clone(&retained),
            malformed: metrics.retained.malformed.clone(),
        };
        sink.load(std::mem::take(&mut watch.read.retained));
        tokio::spawn(async move { follow_table.follow(state, watch, view, sink).await });
        let keeper = Arc::new(RouteKeeper::new(node_id, mine, metrics.keeper()));
        let retained_writer = Arc::new(RetainedWriter::new(node_id, metrics.retained.clone()));
        let client_for_catch_up = client.clone();
        tokio::spawn(Arc::clone(&retained_writer).run(client.clone()));
        tokio::spawn(Arc::clone(&keeper).run(client));
        let peers = Arc::new(Peers { me: node_id, raft });
        let limits = LinkLimits {
            queue_messages: config.link_queue_messages,
            batch_messages: config.link_batch_messages,
            batch_bytes: config.link_batch_bytes,
            // A peer that answers nothing for this long is treated as down,
            // so what it has not acknowledged is kept before its
            // publishers' wait is over.
            stall: (config.forward_wait() / 2).max(Duration::from_millis(100)),
        };
        let links = Links::new(
            node_id,
            Arc::clone(&peers),
            channels.clone(),
            limits,
            metrics.link.clone(),
            handoff,
        )
        .await;
        let cluster = Arc::new(Cluster {
            me: node_id,
            table,
            retained,
            stored,
            retained_writer,
            keeper,
            links,
            peers,
            channels,
            route_wait: config.route_wait(),
            forward_wait: config.forward_wait(),
            share_turn: AtomicUsize::new(0),
            // Above every number given before a restart.
            message_ids: AtomicU64::new(crate::durable::record::unix_ms() * 1000),
            confirmed: DashMap::new(),
            broker,
            metrics,
            wait_log: LogEvery::new(1000),
            caught_up: AtomicBool::new(false),
        });
        tokio::spawn(Arc::clone(&cluster).catch_up(client_for_catch_up));
        Ok(cluster)
    }
}

/// A node's part in routing between the brokers of its cluster.
pub struct Cluster {
    me: NodeId,
    table: Arc<RouteTable>,
    /// What the message store held of other nodes' messages at start.
    stored: StoredForwarded,
    /// The retained messages, applied from the metadata group.
    retained: Arc<RetainedStore>,
    retained_writer: Arc<RetainedWriter>,
    keeper: Arc<RouteKeeper>,
    links: Links,
    peers: Arc<Peers>,
    channels: ChannelPool,
    route_wait: Duration,
    forward_wait: Duration,
    /// Picks the node of a shared group with members on several.
    share_turn: AtomicUsize,
    /// Numbers this node's publishes ([`Cluster::next_message_id`]).
    message_ids: AtomicU64,
    /// The highest route index each peer is known to have applied.
    confirmed: DashMap<NodeId, u64>,
    broker: Arc<OnceLock<Arc<Shared>>>,
    metrics: ClusterMetrics,
    wait_log: LogEvery,
    /// Whether the route table has caught up with the metadata group since
    /// the start; clients are refused until then.
    caught_up: AtomicBool,
}

impl Cluster {
    /// The router's side of the route keeper.
    pub(crate) fn local_filters(&self) -> LocalFilters {
        LocalFilters::new(Arc::clone(&self.keeper))
    }

    /// A new publish's id: this node and its next number.
    pub(crate) fn next_message_id(&self) -> MessageId {
        MessageId {
            node: self.me,
            seq: self.message_ids.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The retained messages the router serves, kept by the cluster.
    pub(crate) fn retained_store(&self) -> Arc<RetainedStore> {
        Arc::clone(&self.retained)
    }

    /// Whether the node takes clients: not before its route table has
    /// caught up with the metadata group, or its clients' publishes would
    /// miss subscribers on other nodes. A node alone has no one else's
    /// routes to miss.
    pub(crate) fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire) || self.peers.others().is_empty()
    }

    /// Catches up with the route table, then asks every other member to
    /// have its link to this node up (after a restart, theirs may still be
    /// waiting to reconnect), so that what they forward after a client's
    /// SUBACK here reaches it; a member that does not answer within
    /// `cluster.route_wait_ms` is not waited for.
    async fn catch_up(self: Arc<Self>, client: MetaClient) {
        wait_caught_up(&self.table, &self.peers, &client).await;
        let deadline = Instant::now() + self.route_wait;
        let asks = self.peers.others().into_iter().map(|(peer, addr)| {
            let this = &self;
            async move {
                if let Err(why) = this.ask_applied(&addr, 0, deadline).await {
                    warn!(
                        peer,
                        waiting_for = why,
                        "a member's link to this node is not up"
                    );
                }
            }
        });
        futures_util::future::join_all(asks).await;
        self.caught_up.store(true, Ordering::Release);
    }

    /// This node's view of the cluster, for `/health`: the metadata
    /// group's leader, the route table, and each member with, for the
    /// others, this node's link to it.
    pub(crate) fn status(&self) -> serde_json::Value {
        let members: Vec<_> = self
            .peers
            .members()
            .into_iter()
            .map(|(id, addr, voter)| {
                let mut member = serde_json::json!({"id": id, "addr": addr, "voter": voter});
                if id != self.me {
                    let (link, queued) = self.links.state(id);
                    member["link"] = link.name().into();
                    member["queued"] = queued.into();
                    member["handoff"] = self.links.handoff_backlog(id).into();
                    member["routes_confirmed"] = self.confirmed.get(&id).map(|at| *at).into();
                }
                member
            })
            .collect();
        serde_json::json!({
            "caught_up": self.caught_up(),
            "leader": self.peers.leader(),
            "routes": self.metrics.routes.get(),
            "routes_applied": self.table.applied(),
            "route_table_lag": self.metrics.route_lag.get(),
            "members": members,
        })
    }

    /// Waits until this node's link to `peer` is not down, until
    /// `deadline` at most; returns whether it is.
    pub(crate) async fn link_ready(&self, peer: NodeId, deadline: Instant) -> bool {
        let stranger = self.peers.addr_of(peer).is_none();
        peer == self.me || stranger || self.links.ensure_up(peer, deadline).await
    }

    /// Makes the hand-off logs durable and stops their I/O thread, at
    /// shutdown.
    pub(crate) async fn close(&self) {
        self.links.close().await;
    }

    /// Tells the link service what the message store held at start of the
    /// messages other nodes forwarded: per (node, partition), the highest
    /// number stored. A replay after this node crashed skips those.
    pub(crate) fn stored_before(&self, forwarded: std::collections::HashMap<(NodeId, u32), u64>) {
        for (key, sequence) in forwarded {
            self.stored.insert(key, sequence);
        }
    }

    /// Lets the link service hand forwarded messages to `shared`.
    pub(crate) fn serve(&self, shared: &Arc<Shared>) {
        let _ = self.broker.set(Arc::clone(shared));
    }

    /// Queues `message` for every other node with a matching route: once
    /// per node, whatever number of routes match there, each shared group
    /// on one node only (the nodes with members take turns). Returns what
    /// is routed here, how many nodes took it, and for QoS 1/2 what
    /// confirms they routed it.
    pub(crate) fn forward(&self, message: &Message) -> Forwarded {
        let mut forwarded = Forwarded::default();
        let plan = self.plan(message);
        if plan.is_empty() {
            return forwarded;
        }
        let Some(encoded) = encode(message) else {
            return forwarded;
        };
        if message.qos != QoS::AtMostOnce {
            forwarded.confirms.wait = self.forward_wait;
            forwarded.confirms.timeouts = Some(self.metrics.forward_wait_timeouts.clone());
        }
        for (node, plain, shares) in plan {
            let (confirm, confirmed) = match message.qos {
                QoS::AtMostOnce => (None, None),
                _ => {
                    let (tx, rx) = oneshot::channel();
                    (Some(tx), Some(rx))
                }
            };
            for share in &shares {
                forwarded.elsewhere.push(share.clone());
            }
            let message = pb::ForwardedMessage {
                plain,
                shares: shares.iter().map(ShareId::to_filter).collect(),
                ..encoded.clone()
            };
            match self.links.send(node, Outgoing { message, confirm }) {
                Ok(()) => {
                    forwarded.nodes += 1;
                    forwarded.confirms.waits.extend(confirmed);
                }
                // What a peer must receive is either sent, kept, or refused.
                Err(NotQueued::QueueFull) if confirmed.is_some() && self.links.hands_off() => {
                    forwarded.confirms.refused = Some(ForwardFailure::QueueFull { peer: node });
                }
                Err(NotQueued::QueueFull) => {}
            }
        }
        forwarded
    }

    /// Which other nodes get `message`: whether for their plain
    /// subscribers, and for which shared groups. A node whose link is down
    /// is passed over for its shares (they go to the other nodes with
    /// members), and for its plain subscribers unless the message is QoS
    /// 1/2 and kept in its hand-off log.
    fn plan(&self, message: &Message) -> Vec<(NodeId, bool, Vec<ShareId>)> {
        let matches = self.table.matches(&message.topic);
        let kept = message.qos != QoS::AtMostOnce && self.links.hands_off();
        let mut plan: Vec<(NodeId, bool, Vec<ShareId>)> = Vec::new();
        for node in matches.plain {
            if !kept && self.links.is_down(node) {
                self.links.passed_over(node);
            } else {
                plan.push((node, true, Vec::new()));
            }
        }
        for (share, mut nodes) in matches.groups {
            nodes.retain(|node| *node == self.me || !self.links.is_down(*node));
            if nodes.is_empty() {
                continue;
            }
            let turn = self.share_turn.fetch_add(1, Ordering::Relaxed);
            let node = nodes[turn % nodes.len()];
            if node == self.me {
                continue;
            }
            match plan.iter_mut().find(|(n, _, _)| *n == node) {
                Some((_, _, shares)) => shares.push(share),
                None => plan.push((node, false, vec![share])),
            }
        }
        plan
    }

    /// What a SUBACK granting `filters` waits for: their routes written
    /// and applied by every other member, at most `cluster.route_wait_ms`.
    /// `None` when there is no other member (or no filter). A route write
    /// that does not commit by then (no majority) fails the wait: the
    /// subscription needs consensus this node cannot get. A member that
    /// does not answer is passed over (counted).
    pub(crate) fn routes_ready(
        self: &Arc<Self>,
        filters: Vec<String>,
    ) -> Option<impl Future<Output = Result<(), MetaError>> + Send + 'static> {
        let peers = self.peers.others();
        if peers.is_empty() || filters.is_empty() {
            return None;
        }
        Some(Arc::clone(self).wait_for_routes(filters, peers))
    }

    async fn wait_for_routes(
        self: Arc<Self>,
        filters: Vec<String>,
        peers: Vec<(NodeId, String)>,
    ) -> Result<(), MetaError> {
        let deadline = Instant::now() + self.route_wait;
        let mut index = 0;
        for filter in &filters {
            let written = self.keeper.written_at(filter);
            match tokio::time::timeout_at(deadline, written).await {
                Ok(at) => index = index.max(at.unwrap_or(0)),
                Err(_) => {
                    self.metrics.route_write_timeouts.inc();
                    return Err(MetaError::NoQuorum {
                        reason: format!(
                            "the route of {filter:?} did not commit within cluster.route_wait_ms"
                        ),
                    });
                }
            }
        }
        self.applied_by(peers, index, deadline).await;
        Ok(())
    }

    /// Waits until every other member has applied the metadata group up to
    /// `index`, until `deadline` at most; a member that does not answer by
    /// then is passed over (counted).
    async fn applied_everywhere(&self, index: u64, deadline: Instant) {
        self.applied_by(self.peers.others(), index, deadline).await;
    }

    async fn applied_by(&self, peers: Vec<(NodeId, String)>, index: u64, deadline: Instant) {
        let behind = peers
            .into_iter()
            .filter(|(id, _)| self.confirmed.get(id).is_none_or(|at| *at < index));
        let waits = behind.map(|(id, addr)| self.peer_applied(id, addr, index, deadline));
        futures_util::future::join_all(waits).await;
    }

    /// Asks `peer` to answer once its route table has applied `index`.
    async fn peer_applied(&self, peer: NodeId, addr: String, index: u64, deadline: Instant) {
        match self.ask_applied(&addr, index, deadline).await {
            Ok(applied) if applied >= index => {
                let mut at = self.confirmed.entry(peer).or_insert(0);
                *at = (*at).max(applied);
            }
            Ok(_) => self.timed_out(peer, "the peer's route table"),
            Err(why) => self.timed_out(peer, why),
        }
    }

    /// `RoutesApplied` to the member at `addr`: the route index it has
    /// applied once it reached `index` (or `deadline` came), with its link
    /// to this node up.
    async fn ask_applied(
        &self,
        addr: &str,
        index: u64,
        deadline: Instant,
    ) -> Result<u64, &'static str> {
        let channel = self.channels.get(addr).map_err(|_| "a bad address")?;
        let request = pb::RoutesAppliedRequest {
            node_id: self.me,
            index,
            wait_ms: wait_ms_until(deadline),
        };
        let mut client = BrokerLinkClient::new(channel);
        let call = client.routes_applied(request);
        match tokio::time::timeout_at(deadline + ANSWER_GRACE, call).await {
            Ok(Ok(reply)) => Ok(reply.get_ref().applied),
            Ok(Err(_)) => Err("the peer's answer"),
            Err(_) => Err("the peer's route table"),
        }
    }

    fn timed_out(&self, peer: NodeId, waiting_for: &str) {
        self.metrics.route_wait_timeouts.inc();
        if let Some(held) = self.wait_log.admit_now() {
            warn!(
                peer,
                waiting_for, held, "SUBACK sent before its route reached every node"
            );
        }
    }
}

/// How long past the deadline it gave a peer (which answers then at the
/// latest) a call waits for that answer to arrive.
const ANSWER_GRACE: Duration = Duration::from_millis(200);

/// The `wait_ms` a call to a peer asks for: what is left until `deadline`.
fn wait_ms_until(deadline: Instant) -> u32 {
    let left = deadline.saturating_duration_since(Instant::now());
    u32::try_from(left.as_millis()).unwrap_or(u32::MAX)
}

/// Waits until `table` has applied what the metadata group's leader held
/// when asked. Waits as long as it takes (a node cut off from the majority
/// does not catch up), saying why every few seconds.
async fn wait_caught_up(table: &RouteTable, peers: &Peers, client: &MetaClient) {
    let started = Instant::now();
    let log = LogEvery::new(5000);
    loop {
        let target = match peers.leader() {
            Some(leader) if leader == peers.me => Ok(peers.last_log_index()),
            Some(leader) => leader_log_index(peers, client, leader).await,
            None => Err("no leader of the metadata group yet".to_string()),
        };
        match target {
            Ok(target) => {
                let applied = table.wait_applied(target, Duration::from_secs(1)).await;
                if applied >= target {
                    info!(
                        applied,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "route table caught up"
                    );
                    return;
                }
                if let Some(held) = log.admit_now() {
                    warn!(
                        applied,
                        target, held, "catching up with the route table before serving clients"
                    );
                }
            }
            Err(why) => {
                if let Some(held) = log.admit_now() {
                    warn!(reason = %why, held, "cannot catch up with the route table yet; not serving clients");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The last log index of the metadata group at its leader `leader`.
async fn leader_log_index(
    peers: &Peers,
    client: &MetaClient,
    leader: NodeId,
) -> Result<u64, String> {
    let addr = peers
        .addr_of(leader)
        .ok_or_else(|| format!("the leader {leader} is not a member"))?;
    let groups = client.raft_status(&addr).await.map_err(|e| e.to_string())?;
    groups
        .iter()
        .find(|g| g.group == tidemq_meta::GroupRouter::METADATA_GROUP)
        .and_then(|g| g.last_log_index)
        .ok_or_else(|| format!("node {leader} reports no metadata group log"))
}

/// What [`Cluster::forward`] did with a message.
#[derive(Default)]
pub(crate) struct Forwarded {
    /// The nodes it was queued for.
    pub(crate) nodes: usize,
    /// The shared groups another node was picked for: this node's members
    /// do not get it.
    pub(crate) elsewhere: Vec<ShareId>,
    /// What its acknowledgement waits for.
    pub(crate) confirms: Confirms,
}

impl Forwarded {
    /// Which of this node's subscriptions get the message.
    pub(crate) fn local_shares(&mut self) -> Shares {
        match std::mem::take(&mut self.elsewhere) {
            elsewhere if elsewhere.is_empty() => Shares::All,
            elsewhere => Shares::Except(elsewhere),
        }
    }
}

/// What a QoS 1/2 publisher's acknowledgement waits for besides its own
/// node: each node it was forwarded to routing it (or, for a node that
/// cannot be reached, its hand-off log keeping it), at most
/// `cluster.forward_wait_ms`. Without hand-off logs, a node whose link
/// broke is not waited for.
#[derive(Default)]
pub(crate) struct Confirms {
    waits: Vec<oneshot::Receiver<Result<(), ForwardFailure>>>,
    /// A node the message could be neither queued for nor kept.
    refused: Option<ForwardFailure>,
    wait: Duration,
    timeouts: Option<IntCounter>,
}

impl Confirms {
    /// Nothing to wait for.
    pub(crate) fn is_empty(&self) -> bool {
        self.waits.is_empty() && self.refused.is_none()
    }

    /// Waits for every confirmation (or its link's end), at most the wait;
    /// fails when a node's message could not be kept.
    pub(crate) async fn confirmed(self) -> Result<(), ForwardFailure> {
        if let Some(refused) = self.refused {
            return Err(refused);
        }
        let all = futures_util::future::join_all(self.waits);
        match tokio::time::timeout(self.wait, all).await {
            Ok(outcomes) => outcomes
                .into_iter()
                // A confirmation dropped unsent: nothing keeps the message.
                .filter_map(Result::ok)
                .collect::<Result<(), ForwardFailure>>(),
            Err(_) => {
                if let Some(timeouts) = self.timeouts {
                    timeouts.inc();
                }
                Ok(())
            }
        }
    }
}

/// A message as a link carries it: an MQTT 5.0 PUBLISH with the expiry
/// left, and its publisher (whom it is for is set per node).
fn encode(message: &Message) -> Option<pb::ForwardedMessage> {
    let mut properties = message.properties.clone();
    properties.message_expiry_interval = message.remaining_expiry(std::time::Instant::now());
    let publish = Publish {
        dup: false,
        qos: message.qos,
        retain: message.retain,
        topic: message.topic.clone(),
        packet_id: (message.qos != QoS::AtMostOnce).then_some(1),
        properties,
        payload: message.payload.clone(),
    };
    let mut buf = BytesMut::new();
    if let Err(e) = mqtt::encode(&Packet::Publish(publish), Protocol::V5, &mut buf) {
        warn!(topic = %message.topic, error = %e, "cannot encode a message for a peer");
        return None;
    }
    Some(pb::ForwardedMessage {
        publish: buf.to_vec(),
        publisher: message.publisher.as_deref().unwrap_or_default().to_string(),
        plain: false,
        shares: Vec::new(),
        // Numbered by the link that sends it.
        sequence: 0,
        message_id: message.id.map_or(0, |id| id.seq),
        barrier: false,
    })
}
