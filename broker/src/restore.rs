//! Persistent sessions brought back from the message store at start, and
//! the periodic trim that gives back the space no session needs.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::auth::Subscription;
use crate::broker::Shared;
use crate::durable::{self, DiskRef, DurableError, DurableStore, Move, Recovered};
use crate::router::{RetainLimits, Stamp};
use crate::session::{
    DropReason, Inflight, InflightState, MemoryQueue, Queued, Session, SessionKey,
    SubscriptionEntry,
};

/// Puts back every recovered session (offline, with its subscriptions,
/// stored backlog, QoS 2 state and expiry timer) and retained message, and
/// has the meta service told, in the background, that the sessions are
/// offline (a crash may have left them marked connected).
pub(crate) async fn restore(
    shared: &Arc<Shared>,
    recovered: Recovered,
) -> Result<(), DurableError> {
    let started = std::time::Instant::now();
    let Some(store) = shared.durable.clone() else {
        return Ok(());
    };
    let config = shared.config.load_full();
    let auth = shared.auth.load_full();
    match &shared.cluster {
        // The cluster keeps the retained messages; these are an earlier
        // version's.
        Some(cluster) => {
            cluster.adopt_retained(&store, recovered.retained);
            cluster.stored_before(recovered.forwarded);
        }
        None => {
            for (publish, expires_at_ms) in recovered.retained {
                let message = durable::retained_message(publish, expires_at_ms);
                // Stored before the limits were checked again: kept whatever
                // they are.
                let message = Arc::new(message);
                let _ = shared
                    .router
                    .retained()
                    .set(&message, Stamp::LOCAL, RetainLimits::NONE);
            }
        }
    }
    let mut backlog = 0;
    let mut dropped = 0u64;
    // A crash left the meta service saying these sessions are connected.
    let mut offline = Vec::new();
    for recovered in recovered.sessions {
        let stored = recovered.session;
        let Some(key) = SessionKey::parse(&stored.key) else {
            warn!(key = %stored.key, "skipping a stored session with a malformed key");
            continue;
        };
        // Messages the client has answered PUBREC for wait only for PUBREL:
        // read them back now, they go straight into the inflight window.
        let released: Vec<DiskRef> = recovered
            .queue
            .iter()
            .filter(|(_, released)| *released)
            .map(|(at, _)| *at)
            .collect();
        let released = if released.is_empty() {
            Vec::new()
        } else {
            store.load(&stored.key, &released).await?
        };
        let session = Session::new(
            key.clone(),
            stored.protocol,
            MemoryQueue::new(
                config.session.max_stored_messages,
                config.session.max_queued_bytes,
            ),
        );
        {
            let mut state = session.lock();
            state.expiry_interval = stored.expiry_secs;
            // A reconnect resumes it (session present).
            state.generation = 1;
            state.durable = Some(stored.epoch);
            state.inbound_qos2 = recovered.inbound_qos2.into_iter().collect();
            state.username = stored.username.clone();
            for sub in &stored.subscriptions {
                // The ACL may have changed since the subscription was made.
                let client_id = key.client_id();
                // Where the client will connect is not known yet: the
                // $SYS rule is applied again when it does.
                let acl =
                    auth.subscription(stored.username.as_deref(), client_id, &sub.filter, true);
                if acl == Subscription::Refused {
                    warn!(client = client_id, filter = %sub.filter, "ACL now denies a stored subscription: dropped");
                    continue;
                }
                let entry = SubscriptionEntry {
                    options: sub.options,
                    id: sub.id,
                    acl_filtered: acl == Subscription::Filtered,
                };
                state.subscriptions.insert(&sub.filter, entry);
                shared.router.subscribe(&key, &sub.filter, entry);
            }
            for (at, delivery) in released {
                if let Some(delivery) = delivery {
                    state.inflight.push_back(Inflight {
                        packet_id: at.packet_id(),
                        delivery,
                        state: InflightState::AwaitPubComp,
                    });
                }
            }
            for (at, released) in recovered.queue {
                if released {
                    continue;
                }
                if state.queue.push(Queued::Recovered(at)).is_ok() {
                    backlog += 1;
                } else {
                    dropped += 1;
                }
            }
        }
        let (session, _) = shared.sessions.get_or_insert_with(&key, || session);
        if stored.expiry_secs != u32::MAX {
            crate::connection::schedule_expiry(shared, &session, 1, stored.expiry_secs);
        }
        if shared.catalog.is_shared() {
            offline.push((session, stored));
        }
    }
    if !offline.is_empty() {
        // In the background: clients may reconnect meanwhile, which the
        // write of each takes care of. Concurrent writes share requests.
        let catalog = shared.catalog.clone();
        tokio::spawn(futures_util::stream::iter(offline).for_each_concurrent(
            1024,
            move |(session, stored)| {
                crate::connection::write_offline(catalog.clone(), session, stored)
            },
        ));
    }
    let metrics = &shared.metrics;
    metrics.sessions.set(shared.sessions.len() as i64);
    metrics
        .subscriptions
        .set(shared.router.subscription_count() as i64);
    metrics.stored_backlog.set(backlog);
    if dropped > 0 {
        metrics
            .messages_dropped
            .with_label_values(&["queue_full"])
            .inc_by(dropped);
        warn!(
            dropped,
            "stored messages beyond session.max_stored_messages were not restored"
        );
    }
    info!(
        sessions = shared.sessions.len(),
        backlog,
        took_ms = started.elapsed().as_millis() as u64,
        "persistent sessions restored"
    );
    Ok(())
}

/// Drops, from every session's queue, the stored messages older than
/// `session.max_message_age_secs`, so the trim that follows can give their
/// space back even while a session that will never come back holds them.
async fn drop_old_messages(shared: &Shared, store: &DurableStore) {
    let Some(age) = shared.config.load().session.max_message_age() else {
        return;
    };
    let cutoffs = match store.offsets_younger_than(age).await {
        Ok(cutoffs) => cutoffs,
        Err(e) => {
            warn!(error = %e, "cannot find the messages older than session.max_message_age_secs");
            return;
        }
    };
    let too_old = |at: DiskRef| {
        cutoffs
            .get(at.partition as usize)
            .is_some_and(|&cutoff| at.offset < cutoff)
    };
    let mut dropped = 0;
    shared.sessions.for_each(|session| {
        let n = session.lock().queue.drop_stored(&too_old);
        if n > 0 {
            session.count_drops(n as u64);
            dropped += n;
        }
    });
    if dropped > 0 {
        info!(
            messages = dropped,
            max_age_secs = age.as_secs(),
            "dropped stored messages past their maximum age"
        );
        shared
            .metrics
            .messages_dropped
            .with_label_values(&[DropReason::TooOld.as_str()])
            .inc_by(dropped as u64);
    }
}

/// Most messages copied forward to free one segment: past that, the
/// segment is still in real use.
const MAX_MOVES: usize = 1000;

/// Copies forward the few messages that alone hold a message partition's
/// oldest segment, so that the trim after can give it back without waiting
/// for their sessions (see `durable::forward`).
async fn move_pinned(shared: &Shared, store: &DurableStore) {
    for partition in 0..store.message_partitions() {
        let end = match store.oldest_segment_end(partition) {
            Ok(Some(end)) => end,
            Ok(None) => continue,
            Err(e) => {
                warn!(partition, error = %e, "cannot read the message partition's segments");
                continue;
            }
        };
        let mut moves = Vec::new();
        let mut blocked = false;
        shared.sessions.for_each(|session| {
            let state = session.lock();
            let Some(epoch) = state.durable else { return };
            match state.movable_below(partition, end) {
                Some(refs) => moves.extend(refs.into_iter().map(|at| {
                    let key = session.key.to_string();
                    (Arc::clone(session), Move { key, epoch, at })
                })),
                None => blocked = true,
            }
        });
        if blocked || moves.is_empty() || moves.len() > MAX_MOVES {
            continue;
        }
        let (sessions, moves): (Vec<_>, Vec<_>) = moves.into_iter().unzip();
        let copies = match store.copy_forward(partition, &moves).await {
            Ok(Some(copies)) => copies,
            Ok(None) => continue,
            Err(e) => {
                warn!(partition, error = %e, "cannot copy stored messages forward");
                continue;
            }
        };
        for ((session, m), to) in sessions.iter().zip(&moves).zip(copies) {
            // Taken (or completed) meanwhile: the copy is not needed.
            if !session.lock().queue.replace_stored(m.at, to) {
                store.ack(to, &m.key, m.epoch);
            }
        }
        info!(
            partition,
            messages = moves.len(),
            "copied stored messages forward to give back their segment"
        );
    }
}

/// Every `every`, gives back the segments below the oldest message any
/// session still needs, until the broker shuts down.
pub(crate) async fn trim_loop(shared: Arc<Shared>, every: Duration) {
    let Some(store) = shared.durable.clone() else {
        return;
    };
    let mut shutdown = shared.shutdown.clone();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        drop_old_messages(&shared, &store).await;
        move_pinned(&shared, &store).await;
        if let Err(e) = store.compact_if_grown().await {
            warn!(error = %e, "cannot compact the session and retained records");
        }
        let mut held = 0i64;
        let trimmed = store
            .trim(|each| {
                shared.sessions.for_each(|session| {
                    session.lock().for_each_stored(&mut |at| {
                        held += 1;
                        each(at);
                    });
                });
            })
            .await;
        shared.metrics.stored_backlog.set(held);
        let limit = shared.config.load().session.max_stored_messages_total;
        let full = usize::try_from(held).unwrap_or(usize::MAX) >= limit;
        if full != store.stored_full() {
            warn!(
                stored = held,
                limit,
                full,
                "stored messages of all sessions against session.max_stored_messages_total"
            );
        }
        store.set_stored_full(full);
        if let Err(e) = trimmed {
            crate::delivery::count_storage_error(&shared.metrics);
            warn!(error = %e, "cannot trim the message store");
        }
    }
}
