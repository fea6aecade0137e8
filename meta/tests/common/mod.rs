//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeSet;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
use prometheus::Registry;
use tempfile::TempDir;
use tidemq_meta::{MetaLogStore, MetaRequest, MetaStateMachine, StoreError, TypeConfig};

pub type Stores = Vec<(MetaLogStore, MetaStateMachine)>;

/// Opens a fresh store of `groups` groups in its own temp dir.
pub async fn fresh(groups: u32) -> (TempDir, Registry, Stores) {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = Registry::new();
    let stores = tidemq_meta::open(dir.path(), groups, &registry)
        .await
        .expect("open a fresh store");
    (dir, registry, stores)
}

/// Reopens the store in `dir` with a new registry.
pub async fn reopen(dir: &TempDir, groups: u32) -> (Registry, Stores) {
    let registry = Registry::new();
    let stores = tidemq_meta::open(dir.path(), groups, &registry)
        .await
        .expect("reopen the store");
    (registry, stores)
}

pub fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

pub fn normal(term: u64, index: u64, request: MetaRequest) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(request),
    }
}

pub fn membership(term: u64, index: u64, voters: &[u64]) -> Entry<TypeConfig> {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], None)),
    }
}

/// Appends through the merged writer and waits until the entries are synced.
pub async fn append_synced(
    log: &MetaLogStore,
    entries: Vec<Entry<TypeConfig>>,
) -> Result<(), StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    log.append_with(entries, move |result| {
        let _ = tx.send(result);
    })?;
    rx.await.expect("the writer completes every append")
}

/// The sample count and sum of a histogram in `registry`.
pub fn histogram(registry: &Registry, name: &str) -> (u64, f64) {
    let family = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("metric {name} not registered"));
    let mut count = 0;
    let mut sum = 0.0;
    for metric in family.get_metric() {
        let h = metric.get_histogram();
        count += h.get_sample_count();
        sum += h.get_sample_sum();
    }
    (count, sum)
}
