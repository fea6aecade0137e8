use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tidemq_proto::mqtt::{Protocol, PublishProperties, QoS};
use tidemq_storage_engine::SyncPolicy;

use super::*;
use crate::auth::AclRules;
use crate::broker::AuthState;
use crate::config::Config;
use crate::durable::{DurableConfig, SessionCatalog};
use crate::router::Router;
use crate::session::{MemoryQueue, SessionKey, SessionRegistry, SubscriptionEntry};

/// A real message store in `dir`: four partitions, 1 MiB segments.
fn store_config(dir: &std::path::Path) -> DurableConfig {
    DurableConfig {
        dir: dir.to_path_buf(),
        partitions: 4,
        io_threads: 1,
        pin_cores: false,
        sync: SyncPolicy::Never,
        segment_bytes: 1 << 20,
        preallocate_bytes: 0,
        max_backlog_bytes: 1 << 20,
        min_free_bytes: 0,
        max_message_age: None,
    }
}

/// Broker state around a real message store in `dir`, with `acl` rules.
async fn shared(dir: &std::path::Path, acl: Option<&str>) -> Arc<Shared> {
    let registry = prometheus::Registry::new();
    let (store, _) = DurableStore::open(&store_config(dir), &registry)
        .await
        .expect("store opens");
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    Arc::new(Shared {
        config: ArcSwap::from_pointee(Config::default()),
        auth: ArcSwap::from_pointee(AuthState {
            passwords: None,
            acl: acl.map(|rules| AclRules::parse(rules, false).expect("rules parse")),
            ..AuthState::default()
        }),
        login: crate::auth::Login::new(
            1,
            std::time::Duration::ZERO,
            std::time::Duration::ZERO,
            prometheus::IntCounter::new("delayed", "test").expect("counter"),
        ),
        sessions: SessionRegistry::default(),
        router: Router::default(),
        metrics: BrokerMetrics::register(&registry).expect("metrics"),
        durable: Some(store),
        catalog: SessionCatalog::Local,
        shutdown,
        lanes: crate::connection::Lanes::new(
            1,
            prometheus::IntCounter::new("lane_waits", "test").expect("counter"),
        ),
        cluster: None,
    })
}

fn message(topic: &str, publisher: &str) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::from_static(b"m"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: PublishProperties::default(),
        publisher: Some(publisher.into()),
        expires_at: None,
        id: None,
    })
}

/// A persistent session subscribed to `filter`.
fn subscriber(shared: &Shared, id: &str, filter: &str, acl_filtered: bool) -> Arc<Session> {
    let key = SessionKey::new("default", id);
    let (session, _) = shared.sessions.get_or_insert_with(&key, || {
        Session::new(key.clone(), Protocol::V5, MemoryQueue::new(100, 1 << 20))
    });
    session.lock().durable = Some(1);
    let entry = SubscriptionEntry {
        options: tidemq_proto::mqtt::SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        },
        id: None,
        acl_filtered,
    };
    shared.router.subscribe(&key, filter, entry);
    session
}

fn record(shared: &Shared, topic: &str, publisher: &str) -> PendingRecord {
    match route(shared, &message(topic, publisher), None, Scope::Cluster).expect("routes") {
        (_, ToStore::Record(record), _) => record,
        _ => panic!("a persistent subscriber needs a record"),
    }
}

#[tokio::test]
async fn records_of_one_pass_are_written_in_runs_per_partition_and_stamped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = shared(dir.path(), None).await;
    let session = subscriber(&shared, "sub", "t/#", false);
    let store = shared.durable.clone().expect("store");
    let (a, b) = ("default/pub-a", "default/pub-b");
    assert_ne!(
        store.partition_for(a),
        store.partition_for(b),
        "test needs two partitions"
    );
    let records = vec![
        record(&shared, "t/1", a),
        record(&shared, "t/2", a),
        record(&shared, "t/3", b),
        record(&shared, "t/4", a),
    ];
    let stored = write_records(&shared, records).await.expect("written");
    assert_eq!(stored.len(), 4);
    let places: Vec<DiskRef> = stored
        .iter()
        .map(|s| s.deliveries[0].2.stored.expect("stamped"))
        .collect();
    assert_eq!(
        places[1].offset,
        places[0].offset + 1,
        "one run: consecutive offsets"
    );
    assert_eq!(places[1].partition, places[3].partition);
    assert!(
        places[3].offset > places[1].offset,
        "a later run comes after"
    );
    assert_eq!(places[2].partition, store.partition_for(b));
    for stored in stored {
        stored.enqueue(&shared.metrics);
    }
    assert_eq!(session.lock().queue.len(), 4);
    assert_eq!(shared.metrics.messages_stored.get(), 4);
}

#[tokio::test]
async fn a_filtered_subscription_gets_only_what_the_acl_allows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = "deny subscribe * t/secret\nallow all * #";
    let shared = shared(dir.path(), Some(rules)).await;
    let session = subscriber(&shared, "sub", "t/#", true);
    let (outcome, to_store, _) = route(
        &shared,
        &message("t/secret", "default/p"),
        None,
        Scope::Cluster,
    )
    .expect("routes");
    assert_eq!(outcome.dropped_not_authorized, 1);
    assert_eq!(outcome.delivered, 0);
    assert!(
        matches!(to_store, ToStore::Nothing),
        "nothing to store for nobody"
    );
    let (outcome, to_store, _) = route(
        &shared,
        &message("t/open", "default/p"),
        None,
        Scope::Cluster,
    )
    .expect("routes");
    assert_eq!(outcome.delivered, 1);
    assert!(matches!(to_store, ToStore::Record(_)));
    assert!(may_receive(&shared.auth.load(), &session, "t/open"));
    assert!(!may_receive(&shared.auth.load(), &session, "t/secret"));
}

#[tokio::test]
async fn a_message_for_more_sessions_than_a_segment_holds_reaches_them_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = shared(dir.path(), None).await;
    let store = shared.durable.clone().expect("store");
    // 12,000 recipients of ~130 bytes each: 1.5 MB of recipients, more
    // than one segment (1 MiB here) could hold in one record.
    let ids: Vec<String> = (0..12_000).map(|i| format!("{i:0>100}")).collect();
    let sessions: Vec<Arc<Session>> = ids
        .iter()
        .map(|id| subscriber(&shared, id, "fan/#", false))
        .collect();
    for session in &sessions {
        let stored = session.lock().stored(&session.key).expect("persistent");
        store.put_session(&stored).await.expect("session recorded");
    }
    let pending = record(&shared, "fan/x", "default/pub");
    assert!(
        pending.records.len() >= 6,
        "{} records",
        pending.records.len()
    );
    let stored = write_records(&shared, vec![pending])
        .await
        .expect("written");
    for stored in stored {
        stored.enqueue(&shared.metrics);
    }
    let mut places = Vec::new();
    for (session, id) in sessions.iter().zip(&ids).step_by(1_999) {
        let mut refs = Vec::new();
        session.lock().for_each_stored(&mut |at| refs.push(at));
        assert_eq!(refs.len(), 1, "{id}");
        places.push(refs[0]);
        let loaded = store.load(&session.key, &refs).await.expect("loads");
        let delivery = loaded[0].1.as_ref().expect("the message is found");
        assert_eq!(delivery.message.topic, "fan/x");
        assert_eq!(delivery.message.payload.as_ref(), b"m");
    }
    assert!(places.windows(2).any(|w| w[0] != w[1]), "several records");
    store.close().await.expect("closes");

    // After a restart every session still has the message to receive.
    let registry = prometheus::Registry::new();
    let (store, recovered) = DurableStore::open(&store_config(dir.path()), &registry)
        .await
        .expect("reopens");
    assert_eq!(recovered.sessions.len(), 12_000);
    assert!(recovered.sessions.iter().all(|s| s.queue.len() == 1));
    let sample = &recovered.sessions[0];
    let loaded = store
        .load(&sample.session.key, &[sample.queue[0].0])
        .await
        .expect("loads");
    assert!(loaded[0].1.is_some());
    store.close().await.expect("closes");
}
