//! openraft's network over gRPC: each Raft RPC is one `RaftService` call
//! carrying the openraft request serialized as JSON, tagged with its group.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tidemq_proto::grpc::v1::RaftRequest;
use tidemq_proto::grpc::v1::raft_service_client::RaftServiceClient;

use crate::channels::ChannelPool;
use crate::types::{MetaNode, NodeId, TypeConfig};

/// Creates [`GrpcNetwork`] clients for one Raft group.
#[derive(Clone)]
pub struct GrpcNetworkFactory {
    group: u32,
    channels: ChannelPool,
}

impl GrpcNetworkFactory {
    /// A factory for `group`, sharing `channels` with the rest of the node.
    pub fn new(group: u32, channels: ChannelPool) -> Self {
        Self { group, channels }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcNetwork;

    async fn new_client(&mut self, target: NodeId, node: &MetaNode) -> GrpcNetwork {
        GrpcNetwork {
            group: self.group,
            target,
            node: node.clone(),
            channels: self.channels.clone(),
        }
    }
}

/// Sends one group's Raft RPCs to one node.
pub struct GrpcNetwork {
    group: u32,
    target: NodeId,
    node: MetaNode,
    channels: ChannelPool,
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl GrpcNetwork {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MetaNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let channel = self
            .channels
            .get(&self.node.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftServiceClient::new(channel);
        let mut request = tonic::Request::new(RaftRequest {
            group: self.group,
            payload,
        });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        }
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?
        .into_inner();
        if !reply.error.is_empty() {
            let remote: RaftError<NodeId, E> = serde_json::from_slice(&reply.error)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            return Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                remote,
            )));
        }
        serde_json::from_slice(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MetaNode, RaftError<NodeId>>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MetaNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MetaNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
