//! The `MetaService` server: validates requests, routes each key to its
//! Raft group, writes through the group's [`Batcher`] and reads from the
//! group's state after a linearizability check.
//!
//! A follower does not forward: it answers `FAILED_PRECONDITION` with the
//! leader's gRPC address in the `x-tidemq-leader` header, and
//! [`MetaClient`](crate::MetaClient) retries there transparently. The one
//! exception is a request that spans data groups (`CreateSessions`,
//! `ListSessions`): their leaders may be different nodes, so the node asked
//! sends each group's share to that group's leader, one hop at most.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{ChangeMembers, Raft, RaftMetrics};
use tidemq_proto::grpc::v1 as pb;
use tidemq_proto::grpc::v1::meta_service_client::MetaServiceClient;
use tidemq_proto::grpc::v1::meta_service_server::MetaService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::batcher::Batcher;
use crate::channels::{AuthChannel, ChannelPool};
use crate::error::{MetaError, require};
use crate::grpc::GrpcMetrics;
use crate::grpc::linearizer::Linearizer;
use crate::routing::GroupRouter;
use crate::store::MetaState;
use crate::types::{
    MetaNode, MetaRequest, MetaResponse, NodeId, RetainedEntry, Session, TypeConfig,
};

/// Largest CreateSessions batch accepted.
pub const MAX_SESSIONS_PER_REQUEST: usize = 10_000;

/// Serves `MetaService` for one node.
#[derive(Clone)]
pub struct MetaServer {
    inner: Arc<Inner>,
}

struct Inner {
    rafts: Arc<Vec<Raft<TypeConfig>>>,
    /// Per group: the leadership checks linearizable reads share.
    linearizers: Vec<Linearizer>,
    states: Vec<MetaState>,
    batchers: Vec<Batcher>,
    router: GroupRouter,
    metrics: GrpcMetrics,
    /// Channels to other members, for the groups of a `ListSessions` led
    /// elsewhere.
    peers: ChannelPool,
}

/// Most sessions one `ListSessions` call answers.
pub const MAX_LIST_PAGE: usize = 1000;

/// One `ListSessions` page: keys with `prefix`, after `after`, at most `limit`.
struct Page<'a> {
    prefix: &'a str,
    after: Option<&'a str>,
    limit: usize,
}

impl MetaServer {
    /// A server over these groups (all three vectors are indexed by group).
    pub fn new(
        rafts: Arc<Vec<Raft<TypeConfig>>>,
        states: Vec<MetaState>,
        batchers: Vec<Batcher>,
        metrics: GrpcMetrics,
        peers: ChannelPool,
    ) -> Self {
        let router = GroupRouter::new(rafts.len() as u32);
        let linearizers = rafts
            .iter()
            .map(|raft| Linearizer::new(raft.clone(), metrics.read_checks.clone()))
            .collect();
        Self {
            inner: Arc::new(Inner {
                rafts,
                linearizers,
                states,
                batchers,
                router,
                metrics,
                peers,
            }),
        }
    }

    async fn write(&self, group: u32, request: MetaRequest) -> Result<MetaResponse, MetaError> {
        let size = approximate_size(&request);
        let batcher = self
            .inner
            .batchers
            .get(group as usize)
            .ok_or(MetaError::UnknownGroup {
                group,
                groups: self.inner.batchers.len() as u32,
            })?;
        match batcher.write(request, size).await? {
            MetaResponse::Rejected { reason } => Err(MetaError::InvalidArgument { reason }),
            response => Ok(response),
        }
    }

    /// The group's state, after making sure this node still leads it.
    async fn read(&self, group: u32) -> Result<&MetaState, MetaError> {
        let linearizer = &self.inner.linearizers[group as usize];
        linearizer.ensure().await.map_err(|e| match &e {
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(quorum)) => {
                MetaError::NoQuorum {
                    reason: quorum.to_string(),
                }
            }
            _ => MetaError::from_raft(&e),
        })?;
        Ok(&self.inner.states[group as usize])
    }

    /// The gRPC address of `group`'s leader when, as far as this node
    /// knows, that is another node. `None` when this node leads, or when
    /// no leader is known (the local attempt then reports that).
    fn leader_elsewhere(&self, group: u32) -> Option<String> {
        let metrics = self.inner.rafts.get(group as usize)?.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader.filter(|l| *l != metrics.id)?;
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some(node.addr.clone())
    }

    /// A client of the member at `addr`, for a request this node forwards.
    fn peer(&self, addr: &str) -> Result<MetaServiceClient<AuthChannel>, MetaError> {
        Ok(MetaServiceClient::new(self.inner.peers.get(addr)?))
    }

    /// Writes one group's share of a `CreateSessions` here, or at the
    /// group's leader when that is another node (unless the request was
    /// itself forwarded: one hop at most, then the client retries).
    async fn create_in_group(
        &self,
        group: u32,
        sessions: Vec<pb::Session>,
        may_forward: bool,
    ) -> Result<u32, MetaError> {
        if may_forward && let Some(leader) = self.leader_elsewhere(group) {
            let request = forwarded(pb::CreateSessionsRequest { sessions });
            return self
                .peer(&leader)?
                .create_sessions(request)
                .await
                .map(|r| r.into_inner().created)
                .map_err(|status| MetaError::from_status(&leader, status));
        }
        let sessions = sessions.into_iter().map(session_from_pb).collect();
        match self
            .write(group, MetaRequest::CreateSessions(sessions))
            .await?
        {
            MetaResponse::Sessions { written } => Ok(written),
            _ => Ok(0),
        }
    }

    /// One data group's sessions, read here or at the group's leader when
    /// that is another node (one hop at most, as for writes).
    async fn list_in_group(
        &self,
        group: u32,
        page: &Page<'_>,
        may_forward: bool,
    ) -> Result<Vec<pb::Session>, MetaError> {
        if may_forward && let Some(leader) = self.leader_elsewhere(group) {
            let request = forwarded(pb::ListSessionsRequest {
                prefix: page.prefix.to_string(),
                limit: u32::try_from(page.limit).unwrap_or(u32::MAX),
                group: Some(group),
                start_after: page.after.unwrap_or_default().to_string(),
            });
            let stream = self
                .peer(&leader)?
                .list_sessions(request)
                .await
                .map_err(|status| MetaError::from_status(&leader, status))?
                .into_inner();
            return crate::client::collect(&leader, stream).await;
        }
        let state = self.read(group).await?;
        let found = state
            .list_sessions(page.prefix, page.after, page.limit)
            .await?;
        Ok(found.into_iter().map(session_to_pb).collect())
    }

    /// The Raft instance of `group`.
    fn raft(&self, group: u32) -> Result<&Raft<TypeConfig>, MetaError> {
        self.inner
            .rafts
            .get(group as usize)
            .ok_or(MetaError::UnknownGroup {
                group,
                groups: self.inner.rafts.len() as u32,
            })
    }

    /// Runs a handler, recording `grpc_requests` and its duration.
    async fn observe<T>(
        &self,
        method: &'static str,
        handler: impl Future<Output = Result<T, MetaError>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = handler.await;
        let status = result.as_ref().err().map(MetaError::to_status);
        self.inner
            .metrics
            .record("MetaService", method, status.as_ref(), started.elapsed());
        match (result, status) {
            (Ok(reply), _) => Ok(Response::new(reply)),
            (Err(_), Some(status)) => Err(status),
            (Err(e), None) => Err(Status::internal(e.to_string())),
        }
    }
}

fn approximate_size(request: &MetaRequest) -> usize {
    match request {
        MetaRequest::CreateSessions(sessions) => sessions
            .iter()
            .map(|s| s.client_key.len() + s.payload.len() + 48)
            .sum(),
        MetaRequest::SetRoutes { add, remove, .. } => {
            add.iter()
                .chain(remove)
                .map(|f| f.len() + 24)
                .sum::<usize>()
                + 32
        }
        MetaRequest::SetRetained(entries) => entries
            .iter()
            .map(|e| e.topic.len() + 4 * e.message.len() + 48)
            .sum(),
        _ => 128,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Marks a request one member forwards to another, so that it is not
/// forwarded again.
const FORWARDED_HEADER: &str = "x-tidemq-forwarded";

fn forwarded<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    request
}

fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

fn session_from_pb(s: pb::Session) -> Session {
    Session {
        client_key: s.client_key,
        node_id: s.node_id,
        created_at_ms: u64::try_from(s.created_at_ms).unwrap_or(0),
        expiry_secs: s.expiry_secs,
        connected: s.connected,
        payload: s.payload,
    }
}

fn session_to_pb(s: Session) -> pb::Session {
    pb::Session {
        client_key: s.client_key,
        node_id: s.node_id,
        created_at_ms: i64::try_from(s.created_at_ms).unwrap_or(i64::MAX),
        expiry_secs: s.expiry_secs,
        connected: s.connected,
        payload: s.payload,
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::Session, Status>> + Send>>;

#[tonic::async_trait]
impl MetaService for MetaServer {
    async fn create_sessions(
        &self,
        request: Request<pb::CreateSessionsRequest>,
    ) -> Result<Response<pb::CreateSessionsReply>, Status> {
        let may_forward = !is_forwarded(&request);
        let sessions = request.into_inner().sessions;
        self.observe("CreateSessions", async move {
            if sessions.is_empty() || sessions.len() > MAX_SESSIONS_PER_REQUEST {
                return Err(MetaError::InvalidArgument {
                    reason: format!(
                        "a request creates 1 to {MAX_SESSIONS_PER_REQUEST} sessions, got {}",
                        sessions.len()
                    ),
                });
            }
            // Validate everything before writing anything.
            let mut by_group: BTreeMap<u32, Vec<pb::Session>> = BTreeMap::new();
            for mut session in sessions {
                require("client_key", &session.client_key)?;
                let group = self.inner.router.data_group(&session.client_key);
                if session.created_at_ms == 0 {
                    session.created_at_ms = i64::try_from(now_ms()).unwrap_or(i64::MAX);
                }
                by_group.entry(group).or_default().push(session);
            }
            let writes = by_group
                .into_iter()
                .map(|(group, sessions)| self.create_in_group(group, sessions, may_forward));
            let mut created = 0;
            for outcome in futures_util::future::join_all(writes).await {
                created += outcome?;
            }
            Ok(pb::CreateSessionsReply { created })
        })
        .await
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionReply>, Status> {
        let key = request.into_inner().client_key;
        self.observe("GetSession", async move {
            require("client_key", &key)?;
            let group = self.inner.router.data_group(&key);
            let session = self.read(group).await?.get_session(&key).await?;
            Ok(pb::GetSessionReply {
                session: session.map(session_to_pb),
            })
        })
        .await
    }

    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionReply>, Status> {
        let key = request.into_inner().client_key;
        self.observe("DeleteSession", async move {
            require("client_key", &key)?;
            let group = self.inner.router.data_group(&key);
            let response = self
                .write(group, MetaRequest::DeleteSession { client_key: key })
                .await?;
            Ok(pb::DeleteSessionReply {
                existed: matches!(response, MetaResponse::Deleted { existed: true }),
            })
        })
        .await
    }

    type ListSessionsStream = SessionStream;

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<SessionStream>, Status> {
        let may_forward = !is_forwarded(&request);
        let request = request.into_inner();
        self.observe("ListSessions", async move {
            let groups = match request.group {
                Some(group) if self.inner.router.data_groups().contains(&group) => group..group + 1,
                Some(group) => {
                    return Err(MetaError::UnknownGroup {
                        group,
                        groups: self.inner.rafts.len() as u32,
                    });
                }
                None => self.inner.router.data_groups(),
            };
            let page = Page {
                prefix: &request.prefix,
                after: (!request.start_after.is_empty()).then_some(request.start_after.as_str()),
                limit: match request.limit as usize {
                    0 => MAX_LIST_PAGE,
                    n => n.min(MAX_LIST_PAGE),
                },
            };
            // Each group's first page after the cursor; their union, in key
            // order, cut to the page, is the page of the whole key space.
            let mut all = Vec::new();
            for group in groups {
                all.extend(self.list_in_group(group, &page, may_forward).await?);
            }
            all.sort_unstable_by(|a, b| a.client_key.cmp(&b.client_key));
            all.truncate(page.limit);
            let stream = tokio_stream::iter(all.into_iter().map(Ok));
            Ok(Box::pin(stream) as SessionStream)
        })
        .await
    }

    async fn add_subscription(
        &self,
        request: Request<pb::AddSubscriptionRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let subscription = request.into_inner().subscription;
        self.observe("AddSubscription", async move {
            let s = subscription.ok_or(MetaError::InvalidArgument {
                reason: "subscription is required".into(),
            })?;
            require("client_key", &s.client_key)?;
            require("filter", &s.filter)?;
            let group = self.inner.router.data_group(&s.client_key);
            let mut options = s.options.to_le_bytes().to_vec();
            options.extend_from_slice(&s.identifier.to_le_bytes());
            self.write(
                group,
                MetaRequest::AddSubscription {
                    client_key: s.client_key,
                    filter: s.filter,
                    qos: (s.options & 0b11) as u8,
                    options,
                },
            )
            .await?;
            Ok(pb::Ack {})
        })
        .await
    }

    async fn remove_subscription(
        &self,
        request: Request<pb::RemoveSubscriptionRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let request = request.into_inner();
        self.observe("RemoveSubscription", async move {
            require("client_key", &request.client_key)?;
            require("filter", &request.filter)?;
            let group = self.inner.router.data_group(&request.client_key);
            self.write(
                group,
                MetaRequest::RemoveSubscription {
                    client_key: request.client_key,
                    filter: request.filter,
                },
            )
            .await?;
            Ok(pb::Ack {})
        })
        .await
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsReply>, Status> {
        let key = request.into_inner().client_key;
        self.observe("ListSubscriptions", async move {
            require("client_key", &key)?;
            let group = self.inner.router.data_group(&key);
            let found = self.read(group).await?.list_subscriptions(&key).await?;
            let subscriptions = found
                .into_iter()
                .map(|s| {
                    let word = |at: usize| {
                        s.options
                            .get(at..at + 4)
                            .and_then(|b| b.try_into().ok())
                            .map_or(0, u32::from_le_bytes)
                    };
                    pb::Subscription {
                        options: word(0),
                        identifier: word(4),
                        client_key: s.client_key,
                        filter: s.filter,
                    }
                })
                .collect();
            Ok(pb::ListSubscriptionsReply { subscriptions })
        })
        .await
    }

    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let node = request.into_inner().node;
        self.observe("RegisterNode", async move {
            let node = node.ok_or(MetaError::InvalidArgument {
                reason: "node is required".into(),
            })?;
            require("grpc_addr", &node.grpc_addr)?;
            let mut labels = Vec::new();
            if !node.mqtt_addr.is_empty() {
                labels.push(("mqtt_addr".to_string(), node.mqtt_addr));
            }
            self.write(
                GroupRouter::METADATA_GROUP,
                MetaRequest::RegisterNode {
                    node_id: node.node_id,
                    addr: node.grpc_addr,
                    at_ms: now_ms(),
                    labels,
                },
            )
            .await?;
            Ok(pb::Ack {})
        })
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let node_id = request.into_inner().node_id;
        self.observe("Heartbeat", async move {
            let response = self
                .write(
                    GroupRouter::METADATA_GROUP,
                    MetaRequest::NodeHeartbeat {
                        node_id,
                        at_ms: now_ms(),
                    },
                )
                .await?;
            if response == MetaResponse::NotFound {
                return Err(MetaError::InvalidArgument {
                    reason: format!("node {node_id} is not registered"),
                });
            }
            Ok(pb::Ack {})
        })
        .await
    }

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesReply>, Status> {
        self.observe("ListNodes", async move {
            let nodes = self
                .read(GroupRouter::METADATA_GROUP)
                .await?
                .list_nodes()
                .await?;
            Ok(pb::ListNodesReply {
                nodes: nodes
                    .into_iter()
                    .map(|n| pb::NodeInfo {
                        node_id: n.node_id,
                        mqtt_addr: n
                            .labels
                            .iter()
                            .find(|(k, _)| k == "mqtt_addr")
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default(),
                        grpc_addr: n.addr,
                        last_heartbeat_ms: i64::try_from(n.last_heartbeat_ms).unwrap_or(i64::MAX),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn get_cluster_config(
        &self,
        _: Request<pb::GetClusterConfigRequest>,
    ) -> Result<Response<pb::ClusterConfig>, Status> {
        self.observe("GetClusterConfig", async move {
            let entries = self
                .read(GroupRouter::METADATA_GROUP)
                .await?
                .list_config()
                .await?
                .into_iter()
                .collect();
            Ok(pb::ClusterConfig { entries })
        })
        .await
    }

    async fn set_cluster_config(
        &self,
        request: Request<pb::SetClusterConfigRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let request = request.into_inner();
        self.observe("SetClusterConfig", async move {
            require("key", &request.key)?;
            self.write(
                GroupRouter::METADATA_GROUP,
                MetaRequest::SetClusterConfig {
                    key: request.key,
                    value: request.value,
                },
            )
            .await?;
            Ok(pb::Ack {})
        })
        .await
    }

    async fn set_routes(
        &self,
        request: Request<pb::SetRoutesRequest>,
    ) -> Result<Response<pb::SetRoutesReply>, Status> {
        let request = request.into_inner();
        self.observe("SetRoutes", async move {
            let request = MetaRequest::SetRoutes {
                node_id: request.node_id,
                add: request.add,
                remove: request.remove,
            };
            match self.write(GroupRouter::METADATA_GROUP, request).await? {
                MetaResponse::Routes { index } => Ok(pb::SetRoutesReply { index }),
                other => Err(MetaError::Raft {
                    reason: format!("SetRoutes answered with {other:?}"),
                }),
            }
        })
        .await
    }

    async fn set_retained(
        &self,
        request: Request<pb::SetRetainedRequest>,
    ) -> Result<Response<pb::SetRetainedReply>, Status> {
        let request = request.into_inner();
        self.observe("SetRetained", async move {
            let entries = request
                .entries
                .into_iter()
                .map(|e| RetainedEntry {
                    topic: e.topic,
                    origin: e.origin,
                    seq: e.seq,
                    message: e.message,
                })
                .collect();
            let request = MetaRequest::SetRetained(entries);
            match self.write(GroupRouter::METADATA_GROUP, request).await? {
                MetaResponse::Retained { index } => Ok(pb::SetRetainedReply { index }),
                other => Err(MetaError::Raft {
                    reason: format!("SetRetained answered with {other:?}"),
                }),
            }
        })
        .await
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let request = request.into_inner();
        self.observe("AddMember", async move {
            require("grpc_addr", &request.grpc_addr)?;
            let raft = self.raft(request.group)?;
            let node = MetaNode {
                addr: request.grpc_addr,
            };
            // Blocking: returns once the learner has caught up, so the
            // promotion below never stalls commits behind a lagging voter.
            raft.add_learner(request.node_id, node, true)
                .await
                .map_err(|e| MetaError::from_raft(&e))?;
            let changed = raft
                .change_membership(ChangeMembers::AddVoterIds([request.node_id].into()), false)
                .await
                .map_err(|e| MetaError::from_raft(&e))?;
            info!(
                group = request.group,
                node_id = request.node_id,
                "member added"
            );
            Ok(membership_reply(changed.membership.as_ref(), raft))
        })
        .await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let request = request.into_inner();
        self.observe("RemoveMember", async move {
            let raft = self.raft(request.group)?;
            let changed = raft
                .change_membership(ChangeMembers::RemoveVoters([request.node_id].into()), false)
                .await
                .map_err(|e| MetaError::from_raft(&e))?;
            info!(
                group = request.group,
                node_id = request.node_id,
                "member removed"
            );
            Ok(membership_reply(changed.membership.as_ref(), raft))
        })
        .await
    }

    async fn raft_status(
        &self,
        _: Request<pb::RaftStatusRequest>,
    ) -> Result<Response<pb::RaftStatusReply>, Status> {
        self.observe("RaftStatus", async move {
            let groups = self
                .inner
                .rafts
                .iter()
                .enumerate()
                .map(|(group, raft)| group_status(group as u32, &raft.metrics().borrow()))
                .collect();
            Ok(pb::RaftStatusReply { groups })
        })
        .await
    }
}

/// The membership a change produced, or the group's current one.
fn membership_reply(
    changed: Option<&openraft::Membership<NodeId, MetaNode>>,
    raft: &Raft<TypeConfig>,
) -> pb::MembershipReply {
    let current;
    let membership = match changed {
        Some(m) => m,
        None => {
            current = raft.metrics().borrow().membership_config.clone();
            current.membership()
        }
    };
    pb::MembershipReply {
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
    }
}

fn group_status(group: u32, m: &RaftMetrics<NodeId, MetaNode>) -> pb::GroupStatus {
    let membership = m.membership_config.membership();
    pb::GroupStatus {
        group,
        node_id: m.id,
        state: format!("{:?}", m.state),
        term: m.current_term,
        leader_id: m.current_leader,
        last_log_index: m.last_log_index,
        last_applied: m.last_applied.map(|id| id.index),
        snapshot_index: m.snapshot.map(|id| id.index),
        purged_index: m.purged.map(|id| id.index),
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
    }
}
