//! The store under real openraft: a three-node cluster in one process with an
//! in-memory network. A node is stopped, the leader snapshots and purges its
//! log, and the restarted node catches up by snapshot.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Config, Raft, SnapshotPolicy};
use tempfile::TempDir;
use tidemq_meta::{MetaNode, MetaRequest, MetaState, Session, TypeConfig};

type Rafts = Arc<Mutex<BTreeMap<u64, Raft<TypeConfig>>>>;

#[derive(Clone, Default)]
struct Router {
    rafts: Rafts,
}

struct Conn {
    target: u64,
    router: Router,
}

impl Conn {
    fn raft(&self) -> Result<Raft<TypeConfig>, Unreachable> {
        let rafts = self.router.rafts.lock().expect("router lock");
        rafts
            .get(&self.target)
            .cloned()
            .ok_or_else(|| Unreachable::new(&std::io::Error::other("node is down")))
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, _node: &MetaNode) -> Conn {
        Conn {
            target,
            router: self.clone(),
        }
    }
}

type RpcResult<T, E = RaftError<u64>> = Result<T, RPCError<u64, MetaNode, E>>;

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let raft = self.raft().map_err(RPCError::Unreachable)?;
        let target = self.target;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        let raft = self.raft().map_err(RPCError::Unreachable)?;
        let target = self.target;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        let raft = self.raft().map_err(RPCError::Unreachable)?;
        let target = self.target;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }
}

fn config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(40),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid raft config"))
}

/// Opens node `id`'s store (retrying while a stopped instance still holds
/// the RocksDB lock), starts its Raft and plugs it into the router.
async fn start(id: u64, dir: &TempDir, router: &Router) -> (Raft<TypeConfig>, MetaState) {
    let mut attempt = 0;
    let mut stores = loop {
        let registry = prometheus::Registry::new();
        match tidemq_meta::open(dir.path(), 1, &registry).await {
            Ok(stores) => break stores,
            Err(e) if attempt < 50 => {
                attempt += 1;
                tracing::debug!(%e, "store still locked");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot reopen node {id}: {e}"),
        }
    };
    let (log, sm) = stores.remove(0);
    let state = sm.state();
    let raft = Raft::new(id, config(), router.clone(), log, sm)
        .await
        .expect("raft starts");
    router
        .rafts
        .lock()
        .expect("router lock")
        .insert(id, raft.clone());
    (raft, state)
}

fn sessions(from: u64, to: u64) -> MetaRequest {
    MetaRequest::CreateSessions(
        (from..to)
            .map(|i| Session {
                client_key: format!("t/c{i:04}"),
                node_id: 1,
                ..Default::default()
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_by_snapshot_after_a_purge() {
    let wait = Some(Duration::from_secs(15));
    let router = Router::default();
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(id, &dirs[id as usize - 1], &router).await);
    }
    let members: BTreeMap<u64, MetaNode> = (1..=3)
        .map(|id| {
            (
                id,
                MetaNode {
                    addr: format!("node-{id}"),
                },
            )
        })
        .collect();
    nodes[0].0.initialize(members).await.unwrap();
    let metrics = nodes[0]
        .0
        .wait(wait)
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap();
    let leader_id = metrics.current_leader.unwrap();
    let leader = nodes[leader_id as usize - 1].0.clone();

    for i in 0..10 {
        leader
            .client_write(sessions(i * 10, i * 10 + 10))
            .await
            .unwrap();
    }

    // Stop a follower; its store closes once Raft drops it.
    let down = if leader_id == 3 { 2 } else { 3 };
    router.rafts.lock().unwrap().remove(&down);
    let (raft_down, state_down) = nodes.remove(down as usize - 1);
    raft_down.shutdown().await.unwrap();
    drop((raft_down, state_down));

    for i in 10..30 {
        leader
            .client_write(sessions(i * 10, i * 10 + 10))
            .await
            .unwrap();
    }
    let last = leader.metrics().borrow().last_log_index.unwrap();
    leader.trigger().snapshot().await.unwrap();
    leader
        .wait(wait)
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= last),
            "snapshot of everything",
        )
        .await
        .unwrap();
    leader.trigger().purge_log(last).await.unwrap();
    leader
        .wait(wait)
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "log purged")
        .await
        .unwrap();

    // Back up: the entries it misses are gone, so only a snapshot helps.
    let (raft, state) = start(down, &dirs[down as usize - 1], &router).await;
    raft.wait(wait)
        .metrics(
            |m| m.last_applied.is_some_and(|a| a.index >= last),
            "caught up",
        )
        .await
        .unwrap();
    assert!(
        raft.metrics()
            .borrow()
            .snapshot
            .is_some_and(|s| s.index >= last)
    );
    let all = state.list_sessions("t/", None, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 300);
    let keys: BTreeSet<String> = all.into_iter().map(|s| s.client_key).collect();
    assert!(keys.contains("t/c0000") && keys.contains("t/c0299"));

    for (raft, _) in nodes {
        raft.shutdown().await.unwrap();
    }
    raft.shutdown().await.unwrap();
}
