//! [`MetaState`]: read access to one group's state machine, for the gRPC
//! services. Every read runs on the `meta-rocksdb` pool.
//!
//! Reads see what this node has applied, which on a follower may trail the
//! leader; callers wanting linearizable reads ask Raft first.

use std::sync::Arc;

use super::Shared;
use super::keys::{self, GroupCfs};
use crate::error::StoreError;
use crate::types::{NodeInfo, Session, Subscription};

/// A cloneable read handle on one group's state.
#[derive(Debug, Clone)]
pub struct MetaState {
    shared: Arc<Shared>,
    cfs: Arc<GroupCfs>,
}

impl MetaState {
    pub(crate) fn new(shared: Arc<Shared>, cfs: Arc<GroupCfs>) -> Self {
        MetaState { shared, cfs }
    }

    /// The Raft group read.
    pub fn group(&self) -> u32 {
        self.cfs.group
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn cfs(&self) -> &GroupCfs {
        &self.cfs
    }

    /// The session stored under `client_key`.
    pub async fn get_session(&self, client_key: &str) -> Result<Option<Session>, StoreError> {
        let cf = Arc::clone(&self.cfs.sm);
        let key = keys::session_key(client_key);
        self.shared
            .run("get", move |db| super::get_json(db, &cf, &key, "session"))
            .await
    }

    /// Up to `limit` sessions whose client key starts with `prefix` (`""`
    /// for all, `"tenant/"` for a tenant), in key order, starting after the
    /// client key `after` when given: pass the last key of a page to get the
    /// next one.
    pub async fn list_sessions(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Session>, StoreError> {
        let cf = Arc::clone(&self.cfs.sm);
        let prefix = keys::session_prefix(prefix);
        // The smallest key after `s/{after}` is `s/{after}\0`.
        let from = after.map(|a| {
            let mut key = keys::session_key(a);
            key.push(0);
            key
        });
        self.shared
            .run("list", move |db| {
                super::scan_json(db, &cf, &prefix, from.as_deref(), limit, "session")
            })
            .await
    }

    /// All subscriptions of a session, by filter.
    pub async fn list_subscriptions(
        &self,
        client_key: &str,
    ) -> Result<Vec<Subscription>, StoreError> {
        let cf = Arc::clone(&self.cfs.sm);
        let prefix = keys::subscription_prefix(client_key);
        self.shared
            .run("list", move |db| {
                super::scan_json(db, &cf, &prefix, None, usize::MAX, "subscription")
            })
            .await
    }

    /// All registered nodes, by id.
    pub async fn list_nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let cf = Arc::clone(&self.cfs.sm);
        self.shared
            .run("list", move |db| {
                super::scan_json(db, &cf, keys::NODE_PREFIX, None, usize::MAX, "node")
            })
            .await
    }

    /// One cluster configuration value.
    pub async fn get_config(&self, key: &str) -> Result<Option<String>, StoreError> {
        let cf = Arc::clone(&self.cfs.sm);
        let key = keys::config_key(key);
        self.shared
            .run("get", move |db| {
                let handle = super::cf_handle(db, &cf)?;
                let value = db.get_cf(&handle, &key).map_err(StoreError::rocks("get"))?;
                Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
            })
            .await
    }

    /// Every cluster configuration key and value, by key.
    pub async fn list_config(&self) -> Result<Vec<(String, String)>, StoreError> {
        let cf = Arc::clone(&self.cfs.sm);
        self.shared
            .run("list", move |db| {
                let handle = super::cf_handle(db, &cf)?;
                let mode =
                    rocksdb::IteratorMode::From(keys::CONFIG_PREFIX, rocksdb::Direction::Forward);
                let mut out = Vec::new();
                for item in db.iterator_cf(&handle, mode) {
                    let (key, value) = item.map_err(StoreError::rocks("list"))?;
                    let Some(name) = key.strip_prefix(keys::CONFIG_PREFIX) else {
                        break;
                    };
                    out.push((
                        String::from_utf8_lossy(name).into_owned(),
                        String::from_utf8_lossy(&value).into_owned(),
                    ));
                }
                Ok(out)
            })
            .await
    }
}
