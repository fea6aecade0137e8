//! Three `tidemq` processes forming one cluster, for the cluster tests.

use std::net::TcpListener;
use std::time::Duration;

use anyhow::ensure;

use super::process::NodeProcess;

/// Three nodes forming one cluster, each with its own data directory.
pub struct TestCluster {
    pub nodes: Vec<NodeProcess>,
    _dirs: Vec<tempfile::TempDir>,
}

impl TestCluster {
    /// Starts three nodes at once (a lone voter of three elects no
    /// leader, so none of them is ready before the others start) and
    /// waits until every node's `/health` says all groups have leaders.
    pub fn start() -> anyhow::Result<TestCluster> {
        Self::start_with(&[])
    }

    /// Like [`TestCluster::start`], with more environment for every node.
    pub fn start_with(env: &[(&str, &str)]) -> anyhow::Result<TestCluster> {
        let listeners: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()?;
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| Ok(l.local_addr()?.to_string()))
            .collect::<anyhow::Result<_>>()?;
        drop(listeners);
        let peers = format!(
            "[{}]",
            addrs
                .iter()
                .enumerate()
                .map(|(i, addr)| format!("\"{}={addr}\"", i + 1))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let dirs: Vec<tempfile::TempDir> = (0..3)
            .map(|_| tempfile::tempdir())
            .collect::<Result<_, _>>()?;
        let nodes = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..3)
                .map(|i| {
                    let (dir, addr, peers) = (dirs[i].path(), &addrs[i], &peers);
                    scope.spawn(move || {
                        let id = (i + 1).to_string();
                        let mut all = vec![
                            ("TIDEMQ_META__NODE_ID", id.as_str()),
                            ("TIDEMQ_META__PEERS", peers.as_str()),
                            ("TIDEMQ_META__GRPC_ADDR", addr.as_str()),
                        ];
                        all.extend_from_slice(env);
                        NodeProcess::start(dir, &all)
                    })
                })
                .collect();
            starts
                .into_iter()
                .map(|start| start.join().expect("a start thread"))
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        let cluster = TestCluster { nodes, _dirs: dirs };
        for node in &cluster.nodes {
            cluster.healthy(node)?;
        }
        Ok(cluster)
    }

    pub fn healthy(&self, node: &NodeProcess) -> anyhow::Result<()> {
        let (status, body) =
            node.http_until("/health", Duration::from_secs(30), |s, _| s == 200)?;
        ensure!(status == 200, "node not healthy: {body}");
        Ok(())
    }

    pub fn mqtt(&self, node: usize) -> std::net::SocketAddr {
        self.nodes[node].mqtt
    }

    /// Waits until every node's route table holds `routes` routes.
    pub async fn routes_everywhere(&self, routes: f64) -> anyhow::Result<()> {
        for node in &self.nodes {
            node.metric_until(
                "tidemq_cluster_routes",
                Duration::from_secs(10),
                "the route table did not settle",
                |n| n == routes,
            )
            .await?;
        }
        Ok(())
    }
}
