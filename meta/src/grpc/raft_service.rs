//! The `RaftService` server: Raft RPCs from other nodes, dispatched to the
//! local Raft instance of their group.

use std::sync::Arc;

use openraft::Raft;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tidemq_proto::grpc::v1::raft_service_server::RaftService;
use tidemq_proto::grpc::v1::{RaftReply, RaftRequest};
use tonic::{Request, Response, Status};

use crate::types::TypeConfig;

/// Serves the Raft RPCs of every group of this node.
#[derive(Clone)]
pub struct RaftServer {
    groups: Arc<Vec<Raft<TypeConfig>>>,
}

impl RaftServer {
    /// A server for these groups, indexed by group id.
    pub fn new(groups: Arc<Vec<Raft<TypeConfig>>>) -> Self {
        Self { groups }
    }

    fn group(&self, group: u32) -> Result<&Raft<TypeConfig>, Status> {
        self.groups.get(group as usize).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown raft group {group} (this node has {})",
                self.groups.len()
            ))
        })
    }
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(payload)
        .map_err(|e| Status::invalid_argument(format!("bad raft payload: {e}")))
}

/// Packs an openraft result: the reply, or the remote RaftError for the caller.
fn reply<T: Serialize, E: Serialize>(result: Result<T, E>) -> Result<Response<RaftReply>, Status> {
    let encode = |e: serde_json::Error| Status::internal(format!("cannot encode raft reply: {e}"));
    let reply = match result {
        Ok(ok) => RaftReply {
            payload: serde_json::to_vec(&ok).map_err(encode)?,
            error: Vec::new(),
        },
        Err(err) => RaftReply {
            payload: Vec::new(),
            error: serde_json::to_vec(&err).map_err(encode)?,
        },
    };
    Ok(Response::new(reply))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(request.group)?;
        reply(raft.vote(decode(&request.payload)?).await)
    }

    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(request.group)?;
        reply(raft.append_entries(decode(&request.payload)?).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(request.group)?;
        reply(raft.install_snapshot(decode(&request.payload)?).await)
    }
}
