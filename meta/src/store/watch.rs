//! The metadata group's routes and retained messages as this node applies
//! them: a consistent read of all of them, then each applied change in
//! order.
//!
//! A broker keeps its own in-memory copy of both (to match publishes and
//! serve subscribers without a call to anyone) and must know how far that
//! copy reaches: a SUBACK waits until every node's copy has applied the
//! subscription's route. [`MetaState::watch_metadata`] registers the
//! watcher first and then reads the routes, the retained messages and
//! `!applied` from one RocksDB snapshot, so every change is either in that
//! read or arrives as a [`MetadataUpdate`] after it.

use std::sync::{Mutex, PoisonError};

use rocksdb::{Direction, IteratorMode, ReadOptions};
use tokio::sync::mpsc;

use super::keys;
use super::reader::MetaState;
use crate::error::StoreError;
use crate::types::{LogId, MetadataUpdate, RetainedEntry, Route};

/// Where the metadata group's state machine sends what it applied: to the
/// one registered watcher, if any.
#[derive(Debug, Default)]
pub(crate) struct MetadataSink(Mutex<Option<mpsc::UnboundedSender<MetadataUpdate>>>);

impl MetadataSink {
    /// Sends `update` to the watcher; forgets a watcher that has gone.
    pub(crate) fn send(&self, update: MetadataUpdate) {
        let mut watcher = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = watcher.as_ref()
            && tx.send(update).is_err()
        {
            *watcher = None;
        }
    }

    fn register(&self) -> mpsc::UnboundedReceiver<MetadataUpdate> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        rx
    }
}

/// Every route and retained message as of log index `applied`.
#[derive(Debug, Default)]
pub struct MetadataRead {
    /// The routes, in filter order.
    pub routes: Vec<Route>,
    /// The retained messages, in topic order.
    pub retained: Vec<RetainedEntry>,
    /// The metadata group's last applied index they reflect.
    pub applied: u64,
}

/// The metadata group's routes and retained messages as of one read, and
/// the updates applied after it.
#[derive(Debug)]
pub struct MetadataWatch {
    /// The first read.
    pub read: MetadataRead,
    /// What is applied after `read.applied`, in order. Changes may repeat
    /// ones already in `read`; applied in order they end in the same state.
    pub updates: mpsc::UnboundedReceiver<MetadataUpdate>,
}

impl MetaState {
    /// Registers this node's metadata watcher (replacing an earlier one) and
    /// reads the routes and retained messages. Only the metadata group holds
    /// them.
    pub async fn watch_metadata(&self) -> Result<MetadataWatch, StoreError> {
        let updates = self.shared().metadata.register();
        let read = self.read_metadata().await?;
        Ok(MetadataWatch { read, updates })
    }

    /// Every route and retained message and the applied index, from one
    /// snapshot.
    pub async fn read_metadata(&self) -> Result<MetadataRead, StoreError> {
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
                let scan = |prefix: &[u8], what: &'static str| {
                    let mut read = ReadOptions::default();
                    if let Some(end) = keys::prefix_end(prefix) {
                        read.set_iterate_upper_bound(end);
                    }
                    let mode = IteratorMode::From(prefix, Direction::Forward);
                    let mut values = Vec::new();
                    for item in snapshot.iterator_cf_opt(&handle, read, mode) {
                        let (key, value) = item.map_err(StoreError::rocks("list"))?;
                        values.push((key, value));
                    }
                    Ok::<_, StoreError>((values, what))
                };
                let routes = decode_all(scan(keys::ROUTE_PREFIX, "route")?)?;
                let retained = decode_all(scan(keys::RETAINED_PREFIX, "retained")?)?;
                Ok(MetadataRead {
                    routes,
                    retained,
                    applied: applied.flatten().map_or(0, |id| id.index),
                })
            })
            .await
    }
}

/// The keys and values of a prefix scan.
type Scanned = Vec<(Box<[u8]>, Box<[u8]>)>;

/// Decodes the JSON values of a scan.
fn decode_all<T: serde::de::DeserializeOwned>(
    (values, what): (Scanned, &'static str),
) -> Result<Vec<T>, StoreError> {
    values
        .iter()
        .map(|(key, value)| serde_json::from_slice(value).map_err(StoreError::decode(what, key)))
        .collect()
}
