use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidemq_proto::mqtt::{Protocol, PublishProperties, QoS};

use super::*;
use crate::durable::DiskRef;
use crate::message::{Delivery, Message};

fn message(topic: &str, payload: &[u8], qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain: false,
        properties: PublishProperties::default(),
        publisher: None,
        expires_at: None,
        id: None,
    })
}

fn delivery(payload: &[u8], qos: QoS, stored: Option<DiskRef>) -> Delivery {
    Delivery {
        message: message("t", payload, qos),
        qos,
        retain: false,
        subscription_ids: Vec::new(),
        stored,
        dup: false,
    }
}

fn at(offset: u64) -> DiskRef {
    DiskRef {
        partition: 0,
        offset,
    }
}

fn session(max_messages: usize, max_bytes: usize) -> Session {
    Session::new(
        SessionKey::new("default", "c"),
        Protocol::V5,
        MemoryQueue::new(max_messages, max_bytes),
    )
}

fn attachment(connection_id: u64) -> Attachment {
    Attachment { connection_id }
}

#[test]
fn the_memory_queue_is_bounded_by_count_and_bytes() {
    let mut queue = MemoryQueue::new(3, 10);
    assert!(
        queue
            .push(Queued::Ready(Box::new(delivery(
                b"12345",
                QoS::AtMostOnce,
                None
            ))))
            .is_ok()
    );
    // Topic `t` counts too: 6 bytes held, 6 more would make 12.
    let refused = queue.push(Queued::Ready(Box::new(delivery(
        b"12345",
        QoS::AtMostOnce,
        None,
    ))));
    assert_eq!(refused.err(), Some(DropReason::QueueFull));
    // Stored entries hold no bytes, only a place in the count.
    assert!(queue.push(Queued::Stored(at(1))).is_ok());
    assert!(queue.push(Queued::Stored(at(2))).is_ok());
    assert_eq!(
        queue.push(Queued::Stored(at(3))).err(),
        Some(DropReason::QueueFull)
    );
    assert!(queue.pop().is_some());
    assert!(
        queue
            .push(Queued::Ready(Box::new(delivery(
                b"1234",
                QoS::AtMostOnce,
                None
            ))))
            .is_ok()
    );
}

#[test]
fn park_and_fill_move_stored_deliveries_between_memory_and_disk() {
    let mut queue = MemoryQueue::new(10, 1000);
    queue
        .push(Queued::Ready(Box::new(delivery(
            b"mem",
            QoS::AtMostOnce,
            None,
        ))))
        .expect("room");
    queue
        .push(Queued::Ready(Box::new(delivery(
            b"disk",
            QoS::AtLeastOnce,
            Some(at(7)),
        ))))
        .expect("room");
    queue.park();
    assert!(matches!(queue.items[1], Queued::Stored(r) if r == at(7)));
    assert_eq!(queue.bytes, 4, "only the in-memory delivery holds bytes");
    assert!(
        queue.leading_stored(10).is_empty(),
        "the front is in memory"
    );
    queue.pop();
    assert_eq!(queue.leading_stored(10), vec![at(7)]);
    queue.fill(vec![(
        at(7),
        Some(delivery(b"disk", QoS::AtLeastOnce, Some(at(7)))),
    )]);
    assert!(matches!(queue.front(), Some(Queued::Ready(_))));
    // A message that could not be loaded is dropped from the queue.
    queue.clear();
    queue.push(Queued::Recovered(at(9))).expect("room");
    queue.fill(vec![(at(9), None)]);
    assert!(queue.is_empty());
}

#[test]
fn a_stored_delivery_over_the_byte_limit_waits_on_disk() {
    let session = session(100, 20);
    session.lock().durable = Some(1);
    let attachment = attachment(1);
    session
        .attach(attachment, Claim::Anyone, true)
        .expect("not ended");
    session
        .enqueue_stored(delivery(&[0; 15], QoS::AtLeastOnce, Some(at(1))), 1)
        .expect("fits");
    session
        .enqueue_stored(delivery(&[0; 15], QoS::AtLeastOnce, Some(at(2))), 1)
        .expect("kept on disk, not dropped");
    // An in-memory delivery over the limit is dropped as before.
    let refused = session.enqueue(delivery(&[0; 15], QoS::AtLeastOnce, None), false);
    assert_eq!(refused.err(), Some(DropReason::QueueFull));
    let mut state = session.lock();
    assert_eq!(state.queue.len(), 2);
    state.queue.pop();
    assert!(state.needs_load(), "the second waits on disk");
}

#[test]
fn a_stored_delivery_of_an_older_epoch_is_ignored() {
    let session = session(10, 1000);
    session.lock().durable = Some(2);
    session
        .enqueue_stored(delivery(b"x", QoS::AtLeastOnce, Some(at(1))), 1)
        .expect("ignored, not refused");
    assert!(session.lock().queue.is_empty());
}

#[test]
fn take_sendable_fills_the_window_and_stored_ids_follow_their_place() {
    let mut state = session(10, 1000).state.into_inner().expect("fresh");
    for n in 0..3u8 {
        state
            .queue
            .push(Queued::Ready(Box::new(delivery(
                &[n],
                QoS::AtLeastOnce,
                None,
            ))))
            .expect("room");
    }
    state
        .queue
        .push(Queued::Ready(Box::new(delivery(
            b"q0",
            QoS::AtMostOnce,
            None,
        ))))
        .expect("room");
    let sent = state.take_sendable(2, usize::MAX, Instant::now(), |_| {});
    assert_eq!(
        sent.iter().map(|p| p.packet_id).collect::<Vec<_>>(),
        vec![Some(1), Some(2)]
    );
    assert!(
        state
            .take_sendable(2, usize::MAX, Instant::now(), |_| {})
            .is_empty(),
        "window full"
    );
    assert_eq!(state.on_puback(1), Ack::InMemory);
    assert_eq!(state.on_puback(1), Ack::NotInFlight, "acknowledged once");
    let sent = state.take_sendable(2, usize::MAX, Instant::now(), |_| {});
    assert_eq!(
        sent.iter().map(|p| p.packet_id).collect::<Vec<_>>(),
        vec![Some(3)]
    );
    assert_eq!(state.on_puback(2), Ack::InMemory);
    let sent = state.take_sendable(2, usize::MAX, Instant::now(), |_| {});
    assert_eq!(
        sent.iter().map(|p| p.packet_id).collect::<Vec<_>>(),
        vec![None],
        "QoS 0 next"
    );
    // A stored message is sent with the packet id its place gives it.
    state.inflight.clear();
    state
        .queue
        .push(Queued::Ready(Box::new(delivery(
            b"s",
            QoS::AtLeastOnce,
            Some(at(5)),
        ))))
        .expect("room");
    let sent = state.take_sendable(2, usize::MAX, Instant::now(), |_| {});
    assert_eq!(sent[0].packet_id, Some(at(5).packet_id()));
    assert_eq!(state.on_puback(at(5).packet_id()), Ack::Stored(at(5)));
}

#[test]
fn expired_deliveries_are_dropped_and_stored_ones_recorded() {
    let mut state = session(10, 1000).state.into_inner().expect("fresh");
    let mut expired = delivery(b"old", QoS::AtLeastOnce, Some(at(3)));
    expired.message = Arc::new(Message {
        topic: "t".into(),
        payload: Bytes::from_static(b"old"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: PublishProperties::default(),
        publisher: None,
        expires_at: Some(Instant::now() - Duration::from_secs(1)),
        id: None,
    });
    state
        .queue
        .push(Queued::Ready(Box::new(expired)))
        .expect("room");
    let mut drops = Vec::new();
    assert!(
        state
            .take_sendable(5, usize::MAX, Instant::now(), |r| drops.push(r))
            .is_empty()
    );
    assert_eq!(drops, vec![DropReason::Expired]);
    assert_eq!(state.expired_stored, vec![at(3)]);
}

#[test]
fn qos2_acknowledgements_move_through_their_states() {
    let mut state = session(10, 1000).state.into_inner().expect("fresh");
    state
        .queue
        .push(Queued::Ready(Box::new(delivery(
            b"x",
            QoS::ExactlyOnce,
            None,
        ))))
        .expect("room");
    let id = state.take_sendable(1, usize::MAX, Instant::now(), |_| {})[0]
        .packet_id
        .expect("QoS 2");
    assert_eq!(
        state.on_pubcomp(id),
        Ack::NotInFlight,
        "PUBCOMP before PUBREC"
    );
    assert_eq!(state.on_pubrec(id), Ack::InMemory);
    assert_eq!(state.on_pubrec(id), Ack::NotInFlight, "already released");
    assert_eq!(state.on_pubcomp(id), Ack::InMemory);
    assert!(state.inflight.is_empty());
    assert_eq!(state.on_unsent(id), Ack::NotInFlight);
}

#[test]
fn attach_takes_the_session_over_in_one_step() {
    let session = session(10, 1000);
    let first = attachment(1);
    let attached = session
        .attach(first, Claim::Anyone, true)
        .expect("not ended");
    assert!(attached.previous.is_none());
    assert!(!attached.resumable, "a new session has nothing to resume");
    let second = attachment(2);
    let attached = session
        .attach(second, Claim::Anyone, true)
        .expect("not ended");
    assert_eq!(attached.previous.map(|a| a.connection_id), Some(1));
    assert!(attached.resumable);
    // The old connection's release no longer touches the session.
    assert!(!session.release(1));
    assert!(session.lock().attachment.is_some());
    assert!(session.release(2));
    assert!(session.lock().attachment.is_none());
}

#[test]
fn an_ended_session_takes_no_connection() {
    let session = session(10, 1000);
    session.lock().ended = true;
    let attachment = attachment(1);
    let refused = session.attach(attachment, Claim::Anyone, true).err();
    assert_eq!(refused.map(|(_, why)| why), Some(Refusal::Ended));
}

#[test]
fn attach_cancels_the_offline_timers() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let session = session(10, 1000);
        let timer = tokio::spawn(tokio::time::sleep(Duration::from_secs(3600)));
        session.lock().timers.push(timer.abort_handle());
        let attachment = attachment(1);
        session
            .attach(attachment, Claim::Anyone, true)
            .expect("not ended");
        assert!(timer.await.expect_err("aborted").is_cancelled());
        assert!(session.lock().timers.is_empty());
    });
}

#[test]
fn the_registry_removes_only_the_session_it_was_given() {
    let registry = SessionRegistry::default();
    let key = SessionKey::new("default", "c");
    let (first, existed) = registry.get_or_insert_with(&key, || session(1, 1));
    assert!(!existed);
    let (same, existed) = registry.get_or_insert_with(&key, || session(1, 1));
    assert!(existed && Arc::ptr_eq(&first, &same));
    assert!(registry.remove(&first));
    let (second, _) = registry.get_or_insert_with(&key, || session(1, 1));
    assert!(!registry.remove(&first), "a newer session stays");
    assert!(Arc::ptr_eq(&registry.get(&key).expect("kept"), &second));
}

#[test]
fn a_session_belongs_to_the_user_that_used_it() {
    let session = session(10, 1000);
    let alice = Claim::Owned {
        username: Some("alice"),
    };
    let bob = Claim::Owned {
        username: Some("bob"),
    };
    let first = attachment(1);
    session
        .attach(first, alice, true)
        .expect("a new session is anyone's");
    session.lock().username = Some("alice".into());
    let second = attachment(2);
    let refused = session.attach(second, bob, true).err();
    assert_eq!(refused.map(|(_, why)| why), Some(Refusal::NotOwner));
    assert_eq!(
        session.lock().attachment.as_ref().map(|a| a.connection_id),
        Some(1),
        "alice keeps her connection"
    );
    let third = attachment(3);
    session
        .attach(third, Claim::Anyone, true)
        .expect("the check is off");
    let fourth = attachment(4);
    session.attach(fourth, alice, true).expect("alice again");
    // An anonymous client's session belongs to nobody.
    session.lock().username = None;
    let fifth = attachment(5);
    session
        .attach(fifth, bob, true)
        .expect("anyone may take it");
}

#[test]
fn a_handover_keeps_stored_messages_in_their_places_in_the_queue() {
    let session = Session::new(
        SessionKey::new("t", "hand"),
        Protocol::V5,
        MemoryQueue::new(100, 1 << 20),
    );
    let mut state = session.lock();
    // Ready, stored, ready, stored, stored: as a node that queued some
    // while its session was offline and some once attached.
    let entries = [
        Queued::Ready(Box::new(delivery(b"r0", QoS::AtLeastOnce, None))),
        Queued::Stored(at(1)),
        Queued::Ready(Box::new(delivery(b"r2", QoS::AtLeastOnce, None))),
        Queued::Stored(at(3)),
        Queued::Stored(at(4)),
    ];
    for entry in entries {
        assert!(state.queue.push(entry).is_ok());
    }
    let handed = state.handover("t/hand", None);
    assert_eq!(
        handed.stored,
        vec![(1, at(1)), (2, at(3)), (2, at(4))],
        "each before the ready message that followed it"
    );
    let read_back = |payload: &[u8]| {
        Some(HandedMessage {
            delivery: delivery(payload, QoS::AtLeastOnce, None),
            inflight: None,
        })
    };
    // The second stored one is gone from the store: left out, the rest kept in place.
    let loaded = vec![read_back(b"s1"), None, read_back(b"s4")];
    let order: Vec<Bytes> = handed
        .in_order(loaded)
        .into_iter()
        .map(|m| m.delivery.message.payload.clone())
        .collect();
    assert_eq!(
        order,
        ["r0", "s1", "r2", "s4"].map(|p| Bytes::from(p.as_bytes().to_vec()))
    );
}
