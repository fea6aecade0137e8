//! The route table of the metadata group as this node applies it: a
//! consistent read of every route, then each applied change in order.
//!
//! A broker keeps its own in-memory copy of the table (to match publishes
//! without a call to anyone) and must know how far that copy reaches: a
//! SUBACK waits until every node's copy has applied the subscription's
//! route. [`MetaState::watch_routes`] registers the watcher first and then
//! reads the routes and `!applied` from one RocksDB snapshot, so every
//! change is either in that read or arrives as a [`RouteUpdate`] after it.

use std::sync::{Mutex, PoisonError};

use rocksdb::{Direction, IteratorMode, ReadOptions};
use tokio::sync::mpsc;

use super::keys;
use super::reader::MetaState;
use crate::error::StoreError;
use crate::types::{LogId, Route, RouteUpdate};

/// Where the metadata group's state machine sends what it applied: to the
/// one registered watcher, if any.
#[derive(Debug, Default)]
pub(crate) struct RouteSink(Mutex<Option<mpsc::UnboundedSender<RouteUpdate>>>);

impl RouteSink {
    /// Sends `update` to the watcher; forgets a watcher that has gone.
    pub(crate) fn send(&self, update: RouteUpdate) {
        let mut watcher = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = watcher.as_ref()
            && tx.send(update).is_err()
        {
            *watcher = None;
        }
    }

    fn register(&self) -> mpsc::UnboundedReceiver<RouteUpdate> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        rx
    }
}

/// Every route as of log index `applied`, and the updates applied after.
#[derive(Debug)]
pub struct RouteWatch {
    /// The routes, in filter order.
    pub routes: Vec<Route>,
    /// The metadata group's last applied index the routes reflect.
    pub applied: u64,
    /// What is applied after `applied`, in order. Changes may repeat ones
    /// already in `routes`; applied in order they end in the same table.
    pub updates: mpsc::UnboundedReceiver<RouteUpdate>,
}

impl MetaState {
    /// Registers this node's route watcher (replacing an earlier one) and
    /// reads the route table. Only the metadata group holds routes.
    pub async fn watch_routes(&self) -> Result<RouteWatch, StoreError> {
        let updates = self.shared().routes.register();
        let (routes, applied) = self.read_routes().await?;
        Ok(RouteWatch {
            routes,
            applied,
            updates,
        })
    }

    /// Every route and the applied index, from one snapshot.
    pub async fn read_routes(&self) -> Result<(Vec<Route>, u64), StoreError> {
        let cf = std::sync::Arc::clone(&self.cfs().sm);
        self.shared()
            .run("list", move |db| {
                let handle = super::cf_handle(db, &cf)?;
                let snapshot = db.snapshot();
                let applied: Option<Option<LogId>> = match snapshot
                    .get_cf(&handle, keys::APPLIED)
                    .map_err(StoreError::rocks("list"))?
                {
                    Some(bytes) => serde_json::from_slice(&bytes)
                        .map_err(StoreError::decode("applied", keys::APPLIED))?,
                    None => None,
                };
                let mut read = ReadOptions::default();
                if let Some(end) = keys::prefix_end(keys::ROUTE_PREFIX) {
                    read.set_iterate_upper_bound(end);
                }
                let mode = IteratorMode::From(keys::ROUTE_PREFIX, Direction::Forward);
                let mut routes = Vec::new();
                for item in snapshot.iterator_cf_opt(&handle, read, mode) {
                    let (key, value) = item.map_err(StoreError::rocks("list"))?;
                    routes.push(
                        serde_json::from_slice(&value)
                            .map_err(StoreError::decode("route", &key))?,
                    );
                }
                Ok((routes, applied.flatten().map_or(0, |id| id.index)))
            })
            .await
    }
}
