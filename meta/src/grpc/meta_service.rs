//! The `MetaService` server: validates requests, routes each key to its
//! Raft group, writes through the group's [`Batcher`] and reads from the
//! group's state after a linearizability check.
//!
//! A follower does not forward: it answers `FAILED_PRECONDITION` with the
//! leader's gRPC address in the `x-tidemq-leader` header, and
//! [`MetaClient`](crate::MetaClient) retries there transparently.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use openraft::{ChangeMembers, Raft, RaftMetrics};
use tidemq_proto::grpc::v1 as pb;
use tidemq_proto::grpc::v1::meta_service_server::MetaService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::batcher::Batcher;
use crate::error::MetaError;
use crate::grpc::GrpcMetrics;
use crate::routing::GroupRouter;
use crate::store::MetaState;
use crate::types::{MetaNode, MetaRequest, MetaResponse, NodeId, Session, TypeConfig};

/// Largest CreateSessions batch accepted.
pub const MAX_SESSIONS_PER_REQUEST: usize = 10_000;

/// Serves `MetaService` for one node.
#[derive(Clone)]
pub struct MetaServer {
    inner: Arc<Inner>,
}

struct Inner {
    rafts: Arc<Vec<Raft<TypeConfig>>>,
    states: Vec<MetaState>,
    batchers: Vec<Batcher>,
    router: GroupRouter,
    metrics: GrpcMetrics,
}

impl MetaServer {
    /// A server over these groups (all three vectors are indexed by group).
    pub fn new(
        rafts: Arc<Vec<Raft<TypeConfig>>>,
        states: Vec<MetaState>,
        batchers: Vec<Batcher>,
        metrics: GrpcMetrics,
    ) -> Self {
        let router = GroupRouter::new(rafts.len() as u32);
        Self {
            inner: Arc::new(Inner {
                rafts,
                states,
                batchers,
                router,
                metrics,
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
        let raft = &self.inner.rafts[group as usize];
        raft.ensure_linearizable()
            .await
            .map_err(|e| MetaError::from_raft(&e))?;
        Ok(&self.inner.states[group as usize])
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
        _ => 128,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn require(field: &str, value: &str) -> Result<(), MetaError> {
    if value.is_empty() {
        return Err(MetaError::InvalidArgument {
            reason: format!("{field} must not be empty"),
        });
    }
    Ok(())
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
            let mut by_group: BTreeMap<u32, Vec<Session>> = BTreeMap::new();
            for session in sessions {
                require("client_key", &session.client_key)?;
                let group = self.inner.router.data_group(&session.client_key);
                let mut session = session_from_pb(session);
                if session.created_at_ms == 0 {
                    session.created_at_ms = now_ms();
                }
                by_group.entry(group).or_default().push(session);
            }
            let writes = by_group
                .into_iter()
                .map(|(group, sessions)| self.write(group, MetaRequest::CreateSessions(sessions)));
            let mut created = 0;
            for outcome in futures_util::future::join_all(writes).await {
                if let MetaResponse::Sessions { written } = outcome? {
                    created += written;
                }
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
        let request = request.into_inner();
        self.observe("ListSessions", async move {
            let limit = (request.limit > 0).then_some(request.limit as usize);
            let mut all = Vec::new();
            for group in self.inner.router.data_groups() {
                let state = self.read(group).await?;
                let remaining = limit.map_or(usize::MAX, |l| l.saturating_sub(all.len()));
                if remaining == 0 {
                    break;
                }
                all.extend(
                    state
                        .list_sessions(&request.prefix, None, remaining)
                        .await?,
                );
            }
            let stream = tokio_stream::iter(all.into_iter().map(|s| Ok(session_to_pb(s))));
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
