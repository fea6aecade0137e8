//! [`RouteTable`]: this node's copy of the cluster's routes, applied from
//! the metadata Raft group, and how far that copy reaches. A route is a
//! (filter, node) pair; a shared subscription's route names its group
//! (`$share/{group}/{filter}`), so that a group gets each message on one
//! node only.

use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use tidemq_meta::{MetaState, MetadataUpdate, MetadataWatch, NodeId, Route};
use tokio::sync::watch;
use tracing::warn;

use super::retained::RetainedSink;
use crate::router::ShareId;
use crate::topic_tree::SubscriptionTree;

/// A route in the tree (at its inner filter): the node, and the shared
/// group when it is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RouteKey {
    node: NodeId,
    group: Option<Box<str>>,
}

impl RouteKey {
    /// The tree filter and key of route `filter` of `node`.
    fn of(filter: &str, node: NodeId) -> (&str, RouteKey) {
        match tidemq_proto::mqtt::parse_shared_filter(filter) {
            Ok(Some(shared)) => (
                shared.filter,
                RouteKey {
                    node,
                    group: Some(shared.group.into()),
                },
            ),
            _ => (filter, RouteKey { node, group: None }),
        }
    }
}

/// The routes a topic matches.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Matches {
    /// The nodes other than this one with plain subscribers, each once.
    pub(crate) plain: Vec<NodeId>,
    /// Each shared group with the nodes (this one included) that have
    /// members of it, in id order.
    pub(crate) groups: Vec<(ShareId, Vec<NodeId>)>,
}

/// The routes in a tree, and how many of them are other nodes' than
/// `me`: while none are, no publish has anywhere else to go.
struct Routes {
    me: NodeId,
    tree: SubscriptionTree<RouteKey, ()>,
    others: usize,
}

impl Routes {
    fn new(me: NodeId) -> Self {
        Routes {
            me,
            tree: SubscriptionTree::new(),
            others: 0,
        }
    }

    fn insert(&mut self, route: &Route) {
        let (filter, key) = RouteKey::of(&route.filter, route.node_id);
        let other = key.node != self.me;
        if self.tree.insert(filter, key, ()).is_none() && other {
            self.others += 1;
        }
    }

    fn remove(&mut self, route: &Route) {
        let (filter, key) = RouteKey::of(&route.filter, route.node_id);
        if self.tree.remove(filter, &key).is_some() && key.node != self.me {
            self.others -= 1;
        }
    }
}

/// Which nodes have subscribers for which filters, matched on every
/// publish; `applied` is the metadata group's log index the table
/// reflects.
pub(crate) struct RouteTable {
    routes: RwLock<Routes>,
    applied: watch::Sender<u64>,
    count: prometheus::IntGauge,
    lag: prometheus::IntGauge,
}

impl RouteTable {
    /// The route table of node `me`.
    pub(crate) fn new(me: NodeId, count: prometheus::IntGauge, lag: prometheus::IntGauge) -> Self {
        RouteTable {
            routes: RwLock::new(Routes::new(me)),
            applied: watch::Sender::new(0),
            count,
            lag,
        }
    }

    /// The routes matching `topic`: other nodes with plain subscribers, and
    /// the shared groups with the nodes that have their members. Nothing,
    /// without a walk, while every route is this node's own.
    pub(crate) fn matches(&self, topic: &str) -> Matches {
        let mut found = Matches::default();
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        if routes.others == 0 {
            return found;
        }
        let me = routes.me;
        routes
            .tree
            .for_each_match(topic, |filter, key, ()| match &key.group {
                None => {
                    if key.node != me && !found.plain.contains(&key.node) {
                        found.plain.push(key.node);
                    }
                }
                Some(group) => match found.groups.iter_mut().find(|(id, _)| id.is(group, filter)) {
                    Some((_, nodes)) => nodes.push(key.node),
                    None => found
                        .groups
                        .push((ShareId::new(group, filter), vec![key.node])),
                },
            });
        drop(routes);
        for (_, nodes) in &mut found.groups {
            nodes.sort_unstable();
        }
        found
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

    /// Replaces the whole table with `loaded` as of `applied`.
    fn load(&self, loaded: Vec<Route>, applied: u64) {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let mut fresh = Routes::new(routes.me);
        for route in &loaded {
            fresh.insert(route);
        }
        self.count.set(fresh.tree.len() as i64);
        *routes = fresh;
        drop(routes);
        self.advance(applied);
    }

    fn advance(&self, applied: u64) {
        self.applied.send_if_modified(|at| {
            let moved = applied > *at;
            *at = (*at).max(applied);
            moved
        });
    }

    /// Follows the metadata group: the first read's routes, then every
    /// update in order, its retained messages going to `retained` before the
    /// table counts them applied; a snapshot install reads both again. Ends
    /// when the meta service stops.
    pub(crate) async fn follow(
        &self,
        meta: MetaState,
        first: MetadataWatch,
        raft: RaftView,
        retained: RetainedSink,
    ) {
        let MetadataWatch { read, mut updates } = first;
        self.load(read.routes, read.applied);
        loop {
            let Some(update) = updates.recv().await else {
                return;
            };
            match update {
                MetadataUpdate::Applied {
                    applied,
                    changes,
                    retained: written,
                } => {
                    retained.apply(written);
                    if !changes.is_empty() {
                        let mut routes =
                            self.routes.write().unwrap_or_else(PoisonError::into_inner);
                        for change in &changes {
                            if change.present {
                                routes.insert(&change.route);
                            } else {
                                routes.remove(&change.route);
                            }
                        }
                        self.count.set(routes.tree.len() as i64);
                    }
                    self.advance(applied);
                }
                MetadataUpdate::Reload { .. } => match meta.watch_metadata().await {
                    Ok(watch) => {
                        retained.load(watch.read.retained);
                        self.load(watch.read.routes, watch.read.applied);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn route(filter: &str, node_id: NodeId) -> Route {
        Route {
            filter: filter.to_string(),
            node_id,
        }
    }

    #[test]
    fn a_topic_matches_plain_routes_once_per_node_and_groups_with_their_nodes() {
        let gauge = |name| prometheus::IntGauge::new(name, "test").unwrap();
        let table = RouteTable::new(1, gauge("routes"), gauge("lag"));
        let routes = vec![
            route("a/#", 2),
            route("a/+", 2),
            route("a/+", 3),
            route("a/#", 1),
            route("$share/g/a/#", 3),
            route("$share/g/a/#", 1),
            route("$share/h/b/#", 2),
        ];
        table.load(routes, 9);
        let mut found = table.matches("a/x");
        found.plain.sort_unstable();
        assert_eq!(
            found.plain,
            [2, 3],
            "this node is left out, node 2 counted once"
        );
        assert_eq!(found.groups, [(ShareId::new("g", "a/#"), vec![1, 3])]);
        assert_eq!(table.applied(), 9);
        assert_eq!(table.matches("b/x").groups.len(), 1);
        assert_eq!(table.matches("c"), Matches::default());
    }

    #[test]
    fn a_table_of_this_nodes_own_routes_matches_nothing() {
        let gauge = |name| prometheus::IntGauge::new(name, "test").unwrap();
        let table = RouteTable::new(1, gauge("routes"), gauge("lag"));
        table.load(vec![route("a/#", 1), route("$share/g/a/#", 1)], 3);
        assert_eq!(table.matches("a/x"), Matches::default());
        let mut routes = table.routes.write().unwrap();
        routes.insert(&route("a/+", 2));
        routes.insert(&route("a/+", 2));
        assert_eq!(routes.others, 1, "a route counted once");
        drop(routes);
        assert_eq!(table.matches("a/x").plain, [2]);
        let mut routes = table.routes.write().unwrap();
        routes.remove(&route("a/+", 2));
        routes.remove(&route("a/+", 2));
        assert_eq!(routes.others, 0, "a removal counted once");
        drop(routes);
        assert_eq!(table.matches("a/x"), Matches::default());
    }
}
