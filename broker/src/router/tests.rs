use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tidemq_proto::mqtt::{Protocol, PublishProperties, QoS, SubscriptionOptions};

use super::*;
use crate::session::{MemoryQueue, Session};

fn message(topic: &str, qos: QoS, publisher: Option<&str>) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::from_static(b"p"),
        qos,
        retain: true,
        properties: PublishProperties::default(),
        publisher: publisher.map(Into::into),
        expires_at: None,
        id: None,
    })
}

fn entry(qos: QoS, id: Option<u32>) -> SubscriptionEntry {
    SubscriptionEntry {
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
        id,
        acl_filtered: false,
    }
}

/// A registry with sessions `default/{id}` for each id.
fn registry(ids: &[&str]) -> (SessionRegistry, Vec<SessionKey>) {
    let registry = SessionRegistry::default();
    let keys = ids
        .iter()
        .map(|id| {
            let key = SessionKey::new("default", id);
            registry.get_or_insert_with(&key, || {
                Session::new(key.clone(), Protocol::V5, MemoryQueue::new(10, 1000))
            });
            key
        })
        .collect();
    (registry, keys)
}

fn clients(targets: &[RouteTarget]) -> Vec<String> {
    let mut out: Vec<String> = targets
        .iter()
        .map(|t| t.session.client_id().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn overlapping_subscriptions_give_one_delivery_at_the_highest_qos() {
    let (sessions, keys) = registry(&["a", "b"]);
    let router = Router::default();
    router.subscribe(&keys[0], "x/#", entry(QoS::AtMostOnce, Some(1)));
    router.subscribe(&keys[0], "x/+", entry(QoS::ExactlyOnce, Some(2)));
    router.subscribe(&keys[1], "y", entry(QoS::AtLeastOnce, None));
    let targets = router.targets(&message("x/1", QoS::AtLeastOnce, None), &sessions);
    assert_eq!(clients(&targets), vec!["a"]);
    let delivery = &targets[0].delivery;
    assert_eq!(
        delivery.qos,
        QoS::AtLeastOnce,
        "min(published, highest granted)"
    );
    let mut ids = delivery.subscription_ids.clone();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    assert!(!delivery.retain, "retain as published was not asked for");
}

#[test]
fn unsubscribe_and_session_removal_take_routes_away() {
    let (sessions, keys) = registry(&["a"]);
    let router = Router::default();
    assert!(!router.subscribe(&keys[0], "x", entry(QoS::AtMostOnce, None)));
    assert!(
        router.subscribe(&keys[0], "x", entry(QoS::AtLeastOnce, None)),
        "replaced"
    );
    assert_eq!(router.subscription_count(), 1);
    assert!(router.unsubscribe(&keys[0], "x"));
    assert!(!router.unsubscribe(&keys[0], "x"));
    assert!(
        router
            .targets(&message("x", QoS::AtMostOnce, None), &sessions)
            .is_empty()
    );
}

#[test]
fn no_local_skips_the_publisher() {
    let (sessions, keys) = registry(&["a"]);
    let router = Router::default();
    let mut no_local = entry(QoS::AtMostOnce, None);
    no_local.options.no_local = true;
    router.subscribe(&keys[0], "x", no_local);
    assert!(
        router
            .targets(&message("x", QoS::AtMostOnce, Some("default/a")), &sessions)
            .is_empty()
    );
    assert_eq!(
        router
            .targets(&message("x", QoS::AtMostOnce, Some("default/b")), &sessions)
            .len(),
        1
    );
}

#[test]
fn shares_choose_between_plain_subscribers_and_groups() {
    let (sessions, keys) = registry(&["plain", "member", "other"]);
    let router = Router::default();
    router.subscribe(&keys[0], "jobs/#", entry(QoS::AtMostOnce, None));
    router.subscribe(&keys[1], "$share/g/jobs/#", entry(QoS::AtMostOnce, None));
    router.subscribe(&keys[2], "$share/h/jobs/#", entry(QoS::AtMostOnce, None));
    let jobs = message("jobs/1", QoS::AtMostOnce, None);
    let to = |shares: Shares| clients(&router.targets_of(&jobs, &sessions, &shares));
    assert_eq!(to(Shares::All), ["member", "other", "plain"]);
    let g = ShareId::new("g", "jobs/#");
    assert_eq!(to(Shares::Except(vec![g.clone()])), ["other", "plain"]);
    let only = |plain| Shares::Only {
        plain,
        groups: vec![g.clone()],
    };
    assert_eq!(to(only(false)), ["member"]);
    assert_eq!(to(only(true)), ["member", "plain"]);
}

#[test]
fn a_shared_group_delivers_each_message_to_one_member_in_turn() {
    let (sessions, keys) = registry(&["a", "b"]);
    let router = Router::default();
    for key in &keys {
        router.subscribe(key, "$share/g/jobs", entry(QoS::AtMostOnce, None));
    }
    assert_eq!(router.subscription_count(), 1, "one tree entry per group");
    let picked: Vec<String> = (0..4)
        .flat_map(|_| clients(&router.targets(&message("jobs", QoS::AtMostOnce, None), &sessions)))
        .collect();
    assert_eq!(picked, vec!["a", "b", "a", "b"]);
    assert!(router.unsubscribe(&keys[0], "$share/g/jobs"));
    let picked = clients(&router.targets(&message("jobs", QoS::AtMostOnce, None), &sessions));
    assert_eq!(picked, vec!["b"]);
}

#[test]
fn a_message_is_checked_only_when_every_matching_subscription_is_filtered() {
    let (sessions, keys) = registry(&["a"]);
    let router = Router::default();
    let filtered = SubscriptionEntry {
        acl_filtered: true,
        ..entry(QoS::AtMostOnce, None)
    };
    router.subscribe(&keys[0], "#", filtered);
    let targets = router.targets(&message("open/x", QoS::AtMostOnce, None), &sessions);
    assert!(targets[0].acl_check);
    router.subscribe(&keys[0], "open/#", entry(QoS::AtMostOnce, None));
    let targets = router.targets(&message("open/x", QoS::AtMostOnce, None), &sessions);
    assert!(!targets[0].acl_check, "open/# is wholly allowed");
    let targets = router.targets(&message("closed/x", QoS::AtMostOnce, None), &sessions);
    assert!(targets[0].acl_check);
}

/// A retained QoS 0 message on `topic` (an empty payload clears it).
fn retained_message(topic: &str, payload: Bytes) -> Arc<Message> {
    Arc::new(Message::from_publish(
        tidemq_proto::mqtt::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: topic.into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload,
        },
        None,
    ))
}

#[test]
fn retained_messages_are_set_matched_and_cleared() {
    let router = Router::default();
    let none = RetainLimits::NONE;
    assert_eq!(
        router
            .retained()
            .set(&message("r/1", QoS::AtMostOnce, None), Stamp::LOCAL, none),
        Ok(1)
    );
    assert_eq!(
        router
            .retained()
            .set(&message("r/2", QoS::AtMostOnce, None), Stamp::LOCAL, none),
        Ok(2)
    );
    assert_eq!(router.retained_for("r/+", Instant::now()).len(), 2);
    assert_eq!(router.retained_for("$share/g/r/1", Instant::now()).len(), 1);
    let clear = retained_message("r/1", Bytes::new());
    assert_eq!(router.retained().set(&clear, Stamp::LOCAL, none), Ok(1));
    assert_eq!(router.retained_count(), 1);
}

#[test]
fn retained_messages_stop_at_their_count_and_bytes() {
    let router = Router::default();
    let one = message("r/1", QoS::AtMostOnce, None);
    let size = one.size();
    let limits = RetainLimits {
        max_messages: 2,
        max_bytes: 3 * size,
    };
    assert_eq!(router.retained().set(&one, Stamp::LOCAL, limits), Ok(1));
    assert_eq!(
        router
            .retained()
            .set(&message("r/2", QoS::AtMostOnce, None), Stamp::LOCAL, limits),
        Ok(2)
    );
    assert_eq!(
        router
            .retained()
            .set(&message("r/3", QoS::AtMostOnce, None), Stamp::LOCAL, limits),
        Err(RetainRefused),
        "a third topic"
    );
    // Replacing an existing topic with a message no larger always passes.
    assert_eq!(
        router
            .retained()
            .set(&message("r/2", QoS::AtMostOnce, None), Stamp::LOCAL, limits),
        Ok(2)
    );
    assert_eq!(router.retained_bytes(), 2 * size);
    let big = retained_message("r/1", Bytes::from(vec![b'x'; 2 * size]));
    assert_eq!(
        router.retained().set(&big, Stamp::LOCAL, limits),
        Err(RetainRefused),
        "too many bytes"
    );
    assert_eq!(router.retained_bytes(), 2 * size, "nothing changed");
    assert_eq!(router.retained_for("r/#", Instant::now()).len(), 2);
}
