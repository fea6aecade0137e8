//! `MetaClient`: the client library of the meta service.
//!
//! It keeps a few channels per node (round-robin), remembers the leader
//! (followers answer with its address in `x-tidemq-leader`, which the client
//! follows at once), retries unavailable nodes until a deadline, and caches
//! the cluster configuration in an `ArcSwap` so readers never lock.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tidemq_proto::grpc::v1 as pb;
use tidemq_proto::grpc::v1::meta_service_client::MetaServiceClient;
use tonic::{Code, Response, Status};

use crate::auth::ClusterSecret;
use crate::channels::{AuthChannel, ChannelPool};
use crate::error::{LEADER_HEADER, MetaError, require};
use crate::grpc::MAX_LIST_PAGE;
use crate::session_writer::SessionWriter;

/// A client of a meta cluster. Cheap to clone.
#[derive(Clone)]
pub struct MetaClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    addrs: Vec<String>,
    next: AtomicUsize,
    leader: Mutex<Option<String>>,
    channels: ChannelPool,
    deadline: Duration,
    config: ArcSwap<HashMap<String, String>>,
    /// Coalesces [`MetaClient::put_session`] calls; started on first use.
    sessions: OnceLock<SessionWriter>,
}

impl MetaClient {
    /// A client of the cluster reachable at these gRPC addresses
    /// (`host:port`); any one of them is enough. Calls retry for up to 5 s.
    pub fn new(
        addrs: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<MetaClient, MetaError> {
        Self::with_deadline(addrs, Duration::from_secs(5))
    }

    /// Like [`MetaClient::new`], retrying each call for up to `deadline`.
    pub fn with_deadline(
        addrs: impl IntoIterator<Item = impl Into<String>>,
        deadline: Duration,
    ) -> Result<MetaClient, MetaError> {
        Self::with_secret(addrs, deadline, None)
    }

    /// Like [`MetaClient::with_deadline`], every call carrying `secret`
    /// (a cluster that requires one refuses calls without it).
    pub fn with_secret(
        addrs: impl IntoIterator<Item = impl Into<String>>,
        deadline: Duration,
        secret: Option<ClusterSecret>,
    ) -> Result<MetaClient, MetaError> {
        let addrs: Vec<String> = addrs.into_iter().map(Into::into).collect();
        if addrs.is_empty() {
            return Err(MetaError::InvalidArgument {
                reason: "a meta client needs at least one address".into(),
            });
        }
        Ok(MetaClient {
            inner: Arc::new(Inner {
                addrs,
                next: AtomicUsize::new(0),
                leader: Mutex::new(None),
                channels: ChannelPool::new(secret),
                deadline,
                config: ArcSwap::from_pointee(HashMap::new()),
                sessions: OnceLock::new(),
            }),
        })
    }

    /// The address calls go to first.
    fn target(&self) -> String {
        let leader = self
            .inner
            .leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        leader.unwrap_or_else(|| {
            let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.addrs.len();
            self.inner.addrs[i].clone()
        })
    }

    fn set_leader(&self, leader: Option<String>) {
        *self
            .inner
            .leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = leader;
    }

    /// Runs `call` against the leader, following redirects and retrying
    /// unavailable nodes until the deadline.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, MetaError>
    where
        F: Fn(MetaServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.inner.deadline;
        let mut backoff = Duration::from_millis(20);
        let mut redirects = 0u32;
        loop {
            let addr = self.target();
            let channel = self.inner.channels.get(&addr)?;
            let status = match call(MetaServiceClient::new(channel)).await {
                Ok(response) => {
                    self.set_leader(Some(addr));
                    return Ok(response.into_inner());
                }
                Err(status) => status,
            };
            let redirect = status
                .metadata()
                .get(LEADER_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let retry = match status.code() {
                Code::FailedPrecondition if redirect.is_some() => {
                    self.set_leader(redirect);
                    // Views of the leader settle within a heartbeat or two;
                    // do not spin between nodes that disagree meanwhile.
                    redirects += 1;
                    if redirects > 2 {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                    true
                }
                // No leader known yet (election in progress), or the node is down.
                Code::FailedPrecondition | Code::Unavailable | Code::Unknown | Code::Cancelled => {
                    self.set_leader(None);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    true
                }
                _ => false,
            };
            if !retry || Instant::now() >= deadline {
                return Err(MetaError::from_status(&addr, status));
            }
        }
    }

    /// Creates (or replaces) one session, coalesced with the other
    /// `put_session` calls of this client that are waiting at the time into
    /// one CreateSessions request (see [`crate::session_writer`]). Returns
    /// once the session is applied. The first call starts the client's
    /// writer task on the calling tokio runtime (outside one it fails with
    /// `InvalidArgument`).
    pub async fn put_session(&self, session: pb::Session) -> Result<(), MetaError> {
        // A bad session would fail the whole request it shares.
        require("client_key", &session.client_key)?;
        let writer = match self.inner.sessions.get() {
            Some(writer) => writer,
            None => {
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                    MetaError::InvalidArgument {
                        reason: "put_session must be called within a tokio runtime".into(),
                    }
                })?;
                let client = Arc::downgrade(&self.inner);
                self.inner
                    .sessions
                    .get_or_init(|| SessionWriter::start(&runtime, client))
            }
        };
        writer.put(session).await
    }

    /// Creates (or replaces) sessions in one request; returns how many were
    /// written.
    pub async fn create_sessions(&self, sessions: Vec<pb::Session>) -> Result<u32, MetaError> {
        let request = pb::CreateSessionsRequest { sessions };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.create_sessions(request).await }
        })
        .await
        .map(|r| r.created)
    }

    /// A session by its key.
    pub async fn get_session(&self, client_key: &str) -> Result<Option<pb::Session>, MetaError> {
        let request = pb::GetSessionRequest {
            client_key: client_key.to_string(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.get_session(request).await }
        })
        .await
        .map(|r| r.session)
    }

    /// Deletes a session and its subscriptions; returns whether it existed.
    pub async fn delete_session(&self, client_key: &str) -> Result<bool, MetaError> {
        let request = pb::DeleteSessionRequest {
            client_key: client_key.to_string(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.delete_session(request).await }
        })
        .await
        .map(|r| r.existed)
    }

    /// Sessions whose key starts with `prefix` (at most `limit`, 0: all),
    /// in key order, fetched a page at a time.
    pub async fn list_sessions(
        &self,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<pb::Session>, MetaError> {
        let limit = if limit == 0 {
            usize::MAX
        } else {
            limit as usize
        };
        let mut out: Vec<pb::Session> = Vec::new();
        while out.len() < limit {
            let want = (limit - out.len()).min(MAX_LIST_PAGE);
            let after = out.last().map_or("", |s| s.client_key.as_str());
            let page = self
                .list_sessions_page(prefix, after, u32::try_from(want).unwrap_or(u32::MAX))
                .await?;
            let last = page.len() < want;
            out.extend(page);
            if last {
                break;
            }
        }
        Ok(out)
    }

    /// One page of [`MetaClient::list_sessions`]: at most `limit` (0: a
    /// full page of [`MAX_LIST_PAGE`]) sessions after the key `after`.
    pub async fn list_sessions_page(
        &self,
        prefix: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<pb::Session>, MetaError> {
        let request = pb::ListSessionsRequest {
            prefix: prefix.to_string(),
            limit,
            group: None,
            start_after: after.to_string(),
        };
        let stream = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.list_sessions(request).await }
            })
            .await?;
        collect("stream", stream).await
    }

    /// Adds or replaces a subscription.
    pub async fn add_subscription(&self, subscription: pb::Subscription) -> Result<(), MetaError> {
        let request = pb::AddSubscriptionRequest {
            subscription: Some(subscription),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.add_subscription(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Removes a subscription.
    pub async fn remove_subscription(
        &self,
        client_key: &str,
        filter: &str,
    ) -> Result<(), MetaError> {
        let request = pb::RemoveSubscriptionRequest {
            client_key: client_key.to_string(),
            filter: filter.to_string(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.remove_subscription(request).await }
        })
        .await
        .map(|_| ())
    }

    /// The subscriptions of a session.
    pub async fn list_subscriptions(
        &self,
        client_key: &str,
    ) -> Result<Vec<pb::Subscription>, MetaError> {
        let request = pb::ListSubscriptionsRequest {
            client_key: client_key.to_string(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.list_subscriptions(request).await }
        })
        .await
        .map(|r| r.subscriptions)
    }

    /// Registers a broker node.
    pub async fn register_node(&self, node: pb::NodeInfo) -> Result<(), MetaError> {
        let request = pb::RegisterNodeRequest { node: Some(node) };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.register_node(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Records a node's heartbeat.
    pub async fn heartbeat(&self, node_id: u64) -> Result<(), MetaError> {
        self.call(|mut c| async move { c.heartbeat(pb::HeartbeatRequest { node_id }).await })
            .await
            .map(|_| ())
    }

    /// Registered nodes.
    pub async fn list_nodes(&self) -> Result<Vec<pb::NodeInfo>, MetaError> {
        self.call(|mut c| async move { c.list_nodes(pb::ListNodesRequest {}).await })
            .await
            .map(|r| r.nodes)
    }

    /// Adds and removes routes of broker node `node_id` in the metadata
    /// group; returns the log index they were applied at.
    pub async fn set_routes(
        &self,
        node_id: u64,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<u64, MetaError> {
        let request = pb::SetRoutesRequest {
            node_id,
            add,
            remove,
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.set_routes(request).await }
        })
        .await
        .map(|reply| reply.index)
    }

    /// Sets or clears retained messages in the metadata group, in order;
    /// returns the log index they were applied at.
    pub async fn set_retained(&self, entries: Vec<pb::RetainedEntry>) -> Result<u64, MetaError> {
        let request = pb::SetRetainedRequest { entries };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.set_retained(request).await }
        })
        .await
        .map(|reply| reply.index)
    }

    /// Sets one cluster configuration key and refreshes the local cache.
    pub async fn set_cluster_config(&self, key: &str, value: &str) -> Result<(), MetaError> {
        let request = pb::SetClusterConfigRequest {
            key: key.to_string(),
            value: value.to_string(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.set_cluster_config(request).await }
        })
        .await?;
        self.refresh_cluster_config().await.map(|_| ())
    }

    /// Fetches the cluster configuration into the local cache and returns it.
    pub async fn refresh_cluster_config(&self) -> Result<Arc<HashMap<String, String>>, MetaError> {
        let config = self
            .call(|mut c| async move { c.get_cluster_config(pb::GetClusterConfigRequest {}).await })
            .await?;
        let config = Arc::new(config.entries);
        self.inner.config.store(Arc::clone(&config));
        Ok(config)
    }

    /// The cached cluster configuration: one atomic load, never a lock.
    pub fn cluster_config(&self) -> Arc<HashMap<String, String>> {
        self.inner.config.load_full()
    }

    /// Adds node `node_id`, reachable at `grpc_addr`, to one Raft group: as
    /// a learner until it has caught up, then as a voter. Idempotent.
    pub async fn add_member(
        &self,
        group: u32,
        node_id: u64,
        grpc_addr: &str,
    ) -> Result<pb::MembershipReply, MetaError> {
        let request = pb::AddMemberRequest {
            group,
            node_id,
            grpc_addr: grpc_addr.to_string(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.add_member(request).await }
        })
        .await
    }

    /// Removes node `node_id` from one Raft group's voters and nodes.
    pub async fn remove_member(
        &self,
        group: u32,
        node_id: u64,
    ) -> Result<pb::MembershipReply, MetaError> {
        let request = pb::RemoveMemberRequest { group, node_id };
        self.call(|mut c| async move { c.remove_member(request).await })
            .await
    }

    /// The Raft state of every group as the node at `addr` sees it (no
    /// redirect, no retry: a status is always about one node).
    pub async fn raft_status(&self, addr: &str) -> Result<Vec<pb::GroupStatus>, MetaError> {
        let channel = self.inner.channels.get(addr)?;
        MetaServiceClient::new(channel)
            .raft_status(pb::RaftStatusRequest {})
            .await
            .map(|reply| reply.into_inner().groups)
            .map_err(|status| MetaError::from_status(addr, status))
    }
}

/// Every message of a server stream from `addr`.
pub(crate) async fn collect<T>(
    addr: &str,
    mut stream: tonic::Streaming<T>,
) -> Result<Vec<T>, MetaError> {
    let mut out = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(message)) => out.push(message),
            Ok(None) => return Ok(out),
            Err(status) => return Err(MetaError::from_status(addr, status)),
        }
    }
}
