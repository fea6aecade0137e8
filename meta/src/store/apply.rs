//! Applying committed entries to a group's `g{n}_sm` column family: every
//! data change of a batch of entries, plus its `!applied` and `!membership`
//! keys, goes into ONE `WriteBatch`.
//!
//! The batch is not synced: the Raft log is the durable record. After a
//! crash the state machine restarts from the `!applied` that reached disk
//! with its data (same batch, so always consistent with it) and openraft
//! replays the rest of the log.

use std::collections::HashMap;

use openraft::EntryPayload;
use rocksdb::{DB, WriteBatch, WriteOptions};

use super::keys::{self, GroupCfs};
use crate::error::StoreError;
use crate::types::{
    Entry, LogId, MetaRequest, MetaResponse, NodeInfo, RetainedEntry, Route, RouteChange,
    StoredMembership, Subscription,
};

/// What one `apply` produced.
pub(crate) struct Applied {
    pub(crate) responses: Vec<MetaResponse>,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
    /// The routes `SetRoutes` wrote, in order.
    pub(crate) routes: Vec<RouteChange>,
    /// The retained messages `SetRetained` wrote, in order.
    pub(crate) retained: Vec<RetainedEntry>,
}

/// A write batch that reads its own writes: later requests of the same batch
/// see what earlier ones wrote.
struct Txn<'a> {
    db: &'a DB,
    cf: std::sync::Arc<rocksdb::BoundColumnFamily<'a>>,
    batch: WriteBatch,
    written: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// The log index of the entry being applied.
    index: u64,
    routes: Vec<RouteChange>,
    retained: Vec<RetainedEntry>,
}

impl Txn<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.written.get(key) {
            return Ok(value.clone());
        }
        self.db
            .get_cf(&self.cf, key)
            .map_err(StoreError::rocks("apply"))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.put_cf(&self.cf, &key, &value);
        self.written.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.batch.delete_cf(&self.cf, &key);
        self.written.insert(key, None);
    }

    /// Deletes every key starting with `prefix`. Not reflected in reads of
    /// this batch; no request reads what a prefix delete removes.
    fn delete_prefix(&mut self, prefix: &[u8]) {
        if let Some(end) = keys::prefix_end(prefix) {
            self.batch.delete_range_cf(&self.cf, prefix, end.as_slice());
        }
    }
}

/// Applies `entries` in one write batch.
pub(crate) fn apply_entries(
    db: &DB,
    cfs: &GroupCfs,
    entries: Vec<Entry>,
    mut last_applied: Option<LogId>,
    mut membership: StoredMembership,
) -> Result<Applied, StoreError> {
    let cf = super::cf_handle(db, &cfs.sm)?;
    let mut txn = Txn {
        db,
        cf,
        batch: WriteBatch::default(),
        written: HashMap::new(),
        index: 0,
        routes: Vec::new(),
        retained: Vec::new(),
    };
    let mut responses = Vec::with_capacity(entries.len());
    for entry in entries {
        last_applied = Some(entry.log_id);
        txn.index = entry.log_id.index;
        let response = match entry.payload {
            EntryPayload::Blank => MetaResponse::Empty,
            EntryPayload::Normal(request) => apply_request(&mut txn, request)?,
            EntryPayload::Membership(config) => {
                membership = StoredMembership::new(Some(entry.log_id), config);
                MetaResponse::Empty
            }
        };
        responses.push(response);
    }
    txn.put(
        keys::APPLIED.to_vec(),
        super::to_json(&last_applied, "applied")?,
    );
    txn.put(
        keys::MEMBERSHIP.to_vec(),
        super::to_json(&membership, "membership")?,
    );
    db.write_opt(txn.batch, &WriteOptions::default())
        .map_err(StoreError::rocks("apply"))?;
    Ok(Applied {
        responses,
        last_applied,
        membership,
        routes: txn.routes,
        retained: txn.retained,
    })
}

fn rejected(reason: impl Into<String>) -> MetaResponse {
    MetaResponse::Rejected {
        reason: reason.into(),
    }
}

/// Why a key is unusable, if it is.
fn bad_key(what: &str, key: &str) -> Option<String> {
    if key.is_empty() {
        Some(format!("{what} is empty"))
    } else if key.contains('\0') {
        Some(format!("{what} contains U+0000"))
    } else {
        None
    }
}

fn apply_request(txn: &mut Txn<'_>, request: MetaRequest) -> Result<MetaResponse, StoreError> {
    Ok(match request {
        MetaRequest::CreateSessions(sessions) => {
            // All or none: validate every session before writing any.
            if let Some(reason) = sessions
                .iter()
                .find_map(|s| bad_key("client_key", &s.client_key))
            {
                return Ok(rejected(reason));
            }
            let written = sessions.len() as u32;
            for session in &sessions {
                let value = super::to_json(session, "session")?;
                txn.put(keys::session_key(&session.client_key), value);
            }
            MetaResponse::Sessions { written }
        }
        MetaRequest::DeleteSession { client_key } => {
            if let Some(reason) = bad_key("client_key", &client_key) {
                return Ok(rejected(reason));
            }
            let key = keys::session_key(&client_key);
            let existed = txn.get(&key)?.is_some();
            txn.delete(key);
            txn.delete_prefix(&keys::subscription_prefix(&client_key));
            MetaResponse::Deleted { existed }
        }
        MetaRequest::AddSubscription {
            client_key,
            filter,
            qos,
            options,
        } => {
            if let Some(reason) =
                bad_key("client_key", &client_key).or_else(|| bad_key("filter", &filter))
            {
                return Ok(rejected(reason));
            }
            let key = keys::subscription_key(&client_key, &filter);
            let subscription = Subscription {
                client_key,
                filter,
                qos,
                options,
            };
            txn.put(key, super::to_json(&subscription, "subscription")?);
            MetaResponse::Ok
        }
        MetaRequest::RemoveSubscription { client_key, filter } => {
            let key = keys::subscription_key(&client_key, &filter);
            let existed = txn.get(&key)?.is_some();
            txn.delete(key);
            MetaResponse::Deleted { existed }
        }
        MetaRequest::RegisterNode {
            node_id,
            addr,
            at_ms,
            labels,
        } => {
            if addr.is_empty() {
                return Ok(rejected("addr is empty"));
            }
            let node = NodeInfo {
                node_id,
                addr,
                registered_at_ms: at_ms,
                last_heartbeat_ms: at_ms,
                labels,
            };
            txn.put(keys::node_key(node_id), super::to_json(&node, "node")?);
            MetaResponse::Ok
        }
        MetaRequest::NodeHeartbeat { node_id, at_ms } => {
            let key = keys::node_key(node_id);
            let Some(bytes) = txn.get(&key)? else {
                return Ok(MetaResponse::NotFound);
            };
            let mut node: NodeInfo =
                serde_json::from_slice(&bytes).map_err(StoreError::decode("node", &key))?;
            node.last_heartbeat_ms = node.last_heartbeat_ms.max(at_ms);
            txn.put(key, super::to_json(&node, "node")?);
            MetaResponse::Ok
        }
        MetaRequest::SetClusterConfig { key, value } => {
            if let Some(reason) = bad_key("config key", &key) {
                return Ok(rejected(reason));
            }
            txn.put(keys::config_key(&key), value.into_bytes());
            MetaResponse::Ok
        }
        MetaRequest::SetRoutes {
            node_id,
            add,
            remove,
        } => {
            if let Some(reason) = add.iter().chain(&remove).find_map(|f| bad_key("filter", f)) {
                return Ok(rejected(reason));
            }
            for (filters, present) in [(add, true), (remove, false)] {
                for filter in filters {
                    let key = keys::route_key(&filter, node_id);
                    let route = Route { filter, node_id };
                    if present {
                        txn.put(key, super::to_json(&route, "route")?);
                    } else {
                        txn.delete(key);
                    }
                    txn.routes.push(RouteChange { route, present });
                }
            }
            MetaResponse::Routes { index: txn.index }
        }
        MetaRequest::SetRetained(entries) => {
            if let Some(reason) = entries.iter().find_map(|e| bad_key("topic", &e.topic)) {
                return Ok(rejected(reason));
            }
            for entry in entries {
                let key = keys::retained_key(&entry.topic);
                if entry.message.is_empty() {
                    txn.delete(key);
                } else {
                    txn.put(key, super::to_json(&entry, "retained")?);
                }
                txn.retained.push(entry);
            }
            MetaResponse::Retained { index: txn.index }
        }
        MetaRequest::Batch(requests) => {
            let mut responses = Vec::with_capacity(requests.len());
            for request in requests {
                responses.push(apply_request(txn, request)?);
            }
            MetaResponse::Batch(responses)
        }
    })
}
