//! [`RouteTable`]: this node's copy of the cluster's routes, applied from
//! the metadata Raft group, and how far that copy reaches.

use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use tidemq_meta::{MetaState, NodeId, Route, RouteUpdate, RouteWatch};
use tokio::sync::watch;
use tracing::warn;

use crate::topic_tree::SubscriptionTree;

/// Which nodes have subscribers for which filters, matched on every
/// publish; `applied` is the metadata group's log index the table
/// reflects.
pub(crate) struct RouteTable {
    tree: RwLock<SubscriptionTree<NodeId, ()>>,
    applied: watch::Sender<u64>,
    routes: prometheus::IntGauge,
    lag: prometheus::IntGauge,
}

impl RouteTable {
    pub(crate) fn new(routes: prometheus::IntGauge, lag: prometheus::IntGauge) -> Self {
        RouteTable {
            tree: RwLock::new(SubscriptionTree::new()),
            applied: watch::Sender::new(0),
            routes,
            lag,
        }
    }

    /// The nodes other than `me` with a route matching `topic`, each once.
    pub(crate) fn nodes_for(&self, topic: &str, me: NodeId) -> Vec<NodeId> {
        let mut nodes = Vec::new();
        let tree = self.tree.read().unwrap_or_else(PoisonError::into_inner);
        tree.for_each_match(topic, |_, node, ()| {
            if *node != me && !nodes.contains(node) {
                nodes.push(*node);
            }
        });
        nodes
    }

    /// The metadata group's index the table has applied.
    pub(crate) fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until the table has applied `index`, at most `wait`; returns
    /// the index applied by then.
    pub(crate) async fn wait_applied(&self, index: u64, wait: Duration) -> u64 {
        let mut applied = self.applied.subscribe();
        let reached = tokio::time::timeout(wait, applied.wait_for(|a| *a >= index)).await;
        match reached {
            Ok(Ok(at)) => *at,
            _ => self.applied(),
        }
    }

    /// Replaces the whole table with `routes` as of `applied`.
    fn load(&self, routes: Vec<Route>, applied: u64) {
        let mut tree = SubscriptionTree::new();
        for route in routes {
            tree.insert(&route.filter, route.node_id, ());
        }
        self.routes.set(tree.len() as i64);
        *self.tree.write().unwrap_or_else(PoisonError::into_inner) = tree;
        self.advance(applied);
    }

    fn advance(&self, applied: u64) {
        self.applied.send_if_modified(|at| {
            let moved = applied > *at;
            *at = (*at).max(applied);
            moved
        });
    }

    /// Follows the metadata group: the first read, then every update in
    /// order; a snapshot install reads the whole table again. Ends when the
    /// meta service stops.
    pub(crate) async fn follow(&self, meta: MetaState, first: RouteWatch, raft: RaftView) {
        let RouteWatch {
            routes,
            applied,
            mut updates,
        } = first;
        self.load(routes, applied);
        loop {
            let Some(update) = updates.recv().await else {
                return;
            };
            match update {
                RouteUpdate::Applied { applied, changes } => {
                    if !changes.is_empty() {
                        let mut tree = self.tree.write().unwrap_or_else(PoisonError::into_inner);
                        for change in changes {
                            let Route { filter, node_id } = change.route;
                            if change.present {
                                tree.insert(&filter, node_id, ());
                            } else {
                                tree.remove(&filter, &node_id);
                            }
                        }
                        self.routes.set(tree.len() as i64);
                    }
                    self.advance(applied);
                }
                RouteUpdate::Reload { .. } => match meta.watch_routes().await {
                    Ok(watch) => {
                        self.load(watch.routes, watch.applied);
                        updates = watch.updates;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot read the route table again; stopping routing updates");
                        return;
                    }
                },
            }
            self.lag
                .set(raft.last_log_index().saturating_sub(self.applied()) as i64);
        }
    }
}

/// The metadata group's Raft metrics, for the table's lag.
pub(crate) struct RaftView(pub(crate) tidemq_meta::openraft::Raft<tidemq_meta::TypeConfig>);

impl RaftView {
    fn last_log_index(&self) -> u64 {
        self.0.metrics().borrow().last_log_index.unwrap_or(0)
    }
}
