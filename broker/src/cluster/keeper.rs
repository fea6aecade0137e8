//! [`RouteKeeper`]: writes this node's routes to the metadata group, one
//! per filter with local subscribers, never one per client.
//!
//! The router tells the keeper when a filter gets its first local
//! subscriber and when it loses its last ([`RouteKeeper::set`], under the
//! router's lock, so the calls come in the order the changes happened).
//! The keeper records the wanted state per filter and one writer task
//! sends whatever changed since its last write as one `SetRoutes`: the last
//! wish for a filter wins, however often it flipped meanwhile. A failed
//! write is retried until it succeeds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tidemq_meta::{MetaClient, NodeId};
use tokio::sync::{Notify, watch};
use tracing::warn;

use crate::log_every::LogEvery;

/// The routes this node wants and the ones written.
pub(crate) struct RouteKeeper {
    node_id: NodeId,
    state: Mutex<KeeperState>,
    /// Rung when `pending` gains a filter.
    wake: Notify,
    /// Counts finished writes, for [`RouteKeeper::written_at`].
    writes: watch::Sender<u64>,
    metrics: KeeperMetrics,
}

#[derive(Default)]
struct KeeperState {
    /// Filters whose wanted state changed since the writer took them.
    pending: HashMap<Arc<str>, bool>,
    /// Filters in the write under way.
    writing: HashMap<Arc<str>, bool>,
    /// Filters routed to this node, with the metadata group's index their
    /// route was written at.
    written: HashMap<Arc<str>, u64>,
}

impl KeeperState {
    /// `done` was written at `index`.
    fn record(&mut self, done: HashMap<Arc<str>, bool>, index: u64) {
        for (filter, present) in done {
            if present {
                self.written.insert(filter, index);
            } else {
                self.written.remove(&filter);
            }
        }
    }
}

/// The keeper's counters.
pub(crate) struct KeeperMetrics {
    pub(crate) writes: prometheus::IntCounter,
    pub(crate) write_errors: prometheus::IntCounter,
}

impl RouteKeeper {
    /// A keeper of `node_id`'s routes, of which `written` (filter, index)
    /// are in the table already.
    pub(crate) fn new(
        node_id: NodeId,
        written: impl IntoIterator<Item = (String, u64)>,
        metrics: KeeperMetrics,
    ) -> Self {
        let written = written.into_iter().map(|(f, i)| (f.into(), i)).collect();
        RouteKeeper {
            node_id,
            state: Mutex::new(KeeperState {
                written,
                ..KeeperState::default()
            }),
            wake: Notify::new(),
            writes: watch::Sender::new(0),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, KeeperState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This node now has (`present`) or no longer has local subscribers of
    /// `filter`.
    pub(crate) fn set(&self, filter: &str, present: bool) {
        let mut state = self.lock();
        let settled = !state.pending.contains_key(filter) && !state.writing.contains_key(filter);
        if settled && state.written.contains_key(filter) == present {
            // Already so in the table (a restored subscription after a
            // restart): nothing to write.
            return;
        }
        state.pending.insert(filter.into(), present);
        drop(state);
        self.wake.notify_one();
    }

    /// The filters with a written route, for reconciling with the router.
    pub(crate) fn written(&self) -> Vec<Arc<str>> {
        self.lock().written.keys().cloned().collect()
    }

    /// Waits until no write of `filter` is pending, then returns the index
    /// its route was written at, or `None` when it has none (its last local
    /// subscriber left meanwhile).
    pub(crate) async fn written_at(&self, filter: &str) -> Option<u64> {
        let mut writes = self.writes.subscribe();
        loop {
            {
                let state = self.lock();
                if !state.pending.contains_key(filter) && !state.writing.contains_key(filter) {
                    return state.written.get(filter).copied();
                }
            }
            writes.changed().await.ok()?;
        }
    }

    /// The writer: sends what changed, one `SetRoutes` at a time, until the
    /// meta client is gone.
    pub(crate) async fn run(self: Arc<Self>, client: MetaClient) {
        let log = LogEvery::new(1000);
        loop {
            let batch = {
                let mut state = self.lock();
                let batch = std::mem::take(&mut state.pending);
                state.writing.clone_from(&batch);
                batch
            };
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            let (add, remove): (Vec<_>, Vec<_>) = batch.iter().partition(|(_, present)| **present);
            let add: Vec<String> = add.into_iter().map(|(f, _)| f.to_string()).collect();
            let remove: Vec<String> = remove.into_iter().map(|(f, _)| f.to_string()).collect();
            let mut backoff = Duration::from_millis(50);
            let index = loop {
                match client
                    .set_routes(self.node_id, add.clone(), remove.clone())
                    .await
                {
                    Ok(index) => break index,
                    Err(e) => {
                        self.metrics.write_errors.inc();
                        if let Some(held) = log.admit_now() {
                            warn!(error = %e, routes = batch.len(), held, "cannot write routes; retrying");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            };
            self.metrics.writes.inc();
            let mut state = self.lock();
            let done = std::mem::take(&mut state.writing);
            state.record(done, index);
            drop(state);
            self.writes.send_modify(|n| *n += 1);
        }
    }
}

/// How many local subscriptions each filter has (a shared subscription's
/// members count for its whole `$share/{group}/{filter}`, so that a group
/// has a route of its own), kept by the router under its lock: the first
/// and the last of a filter tell the keeper.
pub(crate) struct LocalFilters {
    counts: Mutex<HashMap<Box<str>, usize>>,
    keeper: Arc<RouteKeeper>,
}

impl LocalFilters {
    pub(crate) fn new(keeper: Arc<RouteKeeper>) -> Self {
        LocalFilters {
            counts: Mutex::new(HashMap::new()),
            keeper,
        }
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<Box<str>, usize>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A local subscription to `filter` was made.
    pub(crate) fn added(&self, filter: &str) {
        let mut counts = self.counts();
        let count = counts.entry(filter.into()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.keeper.set(filter, true);
        }
    }

    /// A local subscription to `filter` ended.
    pub(crate) fn removed(&self, filter: &str) {
        let mut counts = self.counts();
        let Some(count) = counts.get_mut(filter) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            counts.remove(filter);
            self.keeper.set(filter, false);
        }
    }

    /// Removes the written routes no local subscription wants (left by a
    /// crash, or by clean sessions that ended with the last run).
    pub(crate) fn reconcile(&self) -> usize {
        let counts = self.counts();
        let stale: Vec<_> = self
            .keeper
            .written()
            .into_iter()
            .filter(|filter| !counts.contains_key(&**filter))
            .collect();
        for filter in &stale {
            self.keeper.set(filter, false);
        }
        stale.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keeper(written: &[(&str, u64)]) -> Arc<RouteKeeper> {
        let metrics = KeeperMetrics {
            writes: prometheus::IntCounter::new("w", "w").unwrap(),
            write_errors: prometheus::IntCounter::new("e", "e").unwrap(),
        };
        let written = written.iter().map(|(f, i)| (f.to_string(), *i));
        Arc::new(RouteKeeper::new(1, written, metrics))
    }

    fn pending(keeper: &RouteKeeper) -> Vec<(String, bool)> {
        let mut pending: Vec<_> = keeper
            .lock()
            .pending
            .iter()
            .map(|(f, p)| (f.to_string(), *p))
            .collect();
        pending.sort();
        pending
    }

    /// What the writer does once a `SetRoutes` of everything pending
    /// succeeded at `index`.
    fn write_pending(keeper: &RouteKeeper, index: u64) {
        let mut state = keeper.lock();
        let pending = std::mem::take(&mut state.pending);
        state.record(pending, index);
    }

    #[test]
    fn only_the_first_and_the_last_local_subscriber_of_a_filter_change_its_route() {
        let keeper = keeper(&[]);
        let local = LocalFilters::new(Arc::clone(&keeper));
        local.added("a/#");
        assert_eq!(pending(&keeper), [("a/#".to_string(), true)]);
        write_pending(&keeper, 1);
        local.added("a/#");
        local.removed("a/#");
        assert!(
            pending(&keeper).is_empty(),
            "a second subscriber and its leaving write nothing"
        );
        local.removed("a/#");
        assert_eq!(pending(&keeper), [("a/#".to_string(), false)]);
        local.removed("a/#");
        assert_eq!(
            pending(&keeper),
            [("a/#".to_string(), false)],
            "an unknown filter is ignored"
        );
    }

    #[test]
    fn a_route_already_written_is_not_written_again_but_a_flip_in_flight_is() {
        let keeper = keeper(&[("restored", 7)]);
        keeper.set("restored", true);
        assert!(pending(&keeper).is_empty());
        keeper.set("restored", false);
        keeper.set("restored", true);
        assert_eq!(
            pending(&keeper),
            [("restored".to_string(), true)],
            "the last wish wins"
        );
        let taken = std::mem::take(&mut keeper.lock().pending);
        keeper.lock().writing = taken;
        keeper.set("restored", true);
        assert_eq!(
            pending(&keeper),
            [("restored".to_string(), true)],
            "a write under way may carry another wish"
        );
    }

    #[test]
    fn reconcile_removes_written_routes_without_local_subscribers() {
        let keeper = keeper(&[("kept", 3), ("stale", 4)]);
        let local = LocalFilters::new(Arc::clone(&keeper));
        local.added("kept");
        assert_eq!(local.reconcile(), 1);
        assert_eq!(pending(&keeper), [("stale".to_string(), false)]);
    }
}
