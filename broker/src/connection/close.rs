//! The end of a connection: the DISCONNECT the broker sends, the will, and
//! what happens to the session.
//!
//! The will is published unless the client disconnected normally (reason
//! 0x00) or the broker is shutting down. With a will delay it waits, and is
//! dropped if the session is resumed first; it goes out at once when the
//! session ends earlier. A session with expiry 0 ends here; otherwise a timer
//! ends it when its expiry passes without a reconnect.

use std::sync::Arc;
use std::time::Duration;

use tidemq_proto::mqtt::{
    Disconnect, DisconnectProperties, LastWill, Packet, PublishProperties, ReasonCode,
};
use tracing::{debug, warn};

use super::acks::AckQueue;
use super::{Connection, End, Io};
use crate::auth::Action;
use crate::broker::Shared;
use crate::delivery::StoreSink;
use crate::durable::{SessionCatalog, StoredSession, catalog};
use crate::message::Message;
use crate::session::{PendingWill, Session, SessionKey};

impl Connection {
    /// Ends the connection; see the [module docs](self).
    pub(super) async fn close(mut self, end: End, io: &mut Io) {
        let reason = match end {
            End::Violation(reason) => {
                self.shared
                    .metrics
                    .protocol_errors
                    .with_label_values(&[super::connect::reason_label(reason)])
                    .inc();
                Some(reason)
            }
            End::KeepAliveTimeout => {
                self.count_disconnect("keep_alive_timeout");
                Some(ReasonCode::KeepAliveTimeout)
            }
            End::WriteTimeout => {
                self.count_disconnect("write_timeout");
                None
            }
            End::TakenOver { .. } => Some(ReasonCode::SessionTakenOver),
            End::Shutdown => Some(ReasonCode::ServerShuttingDown),
            End::ServerError => Some(ReasonCode::UnspecifiedError),
            End::ClientDisconnect(_) | End::Dropped => None,
        };
        if let Some(reason) = reason
            && self.protocol.is_v5()
        {
            let disconnect = Packet::Disconnect(Disconnect {
                reason,
                properties: DisconnectProperties::default(),
            });
            self.send(io, &disconnect);
        }
        // A takeover or a shutdown waits for this connection: a client that
        // does not read gets its DISCONNECT only if it fits in a moment.
        let flush_for = match end {
            End::WriteTimeout => Duration::ZERO,
            End::TakenOver { .. } | End::Shutdown => {
                self.limits.write_timeout().min(Duration::from_secs(1))
            }
            _ => self.limits.write_timeout(),
        };
        if !flush_for.is_zero() {
            let _ = io.flush_within(flush_for).await;
        }
        debug!(?end, "connection closed");
        self.finish_writes().await;
        let will = match end {
            End::ClientDisconnect(ReasonCode::Success) | End::Shutdown => None,
            _ => self.will.take().map(|will| *will),
        };
        self.detach(will, end);
    }

    /// Finishes the store writes of what was read before the end: the
    /// messages reach their subscribers and the store, QoS 2 packet ids are
    /// recorded, even though no response can be sent any more.
    async fn finish_writes(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        let sink = StoreSink(Arc::clone(&self.shared));
        let acks = std::mem::replace(&mut self.acks, AckQueue::new(sink));
        let (released, failed) = acks.finish().await;
        for done in released {
            let _ = self.settle(done);
        }
        if let Some(e) = failed {
            warn!(error = %e, "message store write failed after the connection ended");
        }
    }

    /// Gives the session back after a CONNECT that failed once attached:
    /// a session the CONNECT created is removed again.
    pub(super) fn abandon(mut self, existed: bool) {
        let generation = self.session.lock().generation;
        self.detach(None, End::ServerError);
        if !existed {
            end_session(&self.shared, &self.session, generation);
        }
    }

    fn count_disconnect(&self, reason: &str) {
        self.shared
            .metrics
            .disconnects
            .with_label_values(&[reason])
            .inc();
    }

    /// Records that this connection has detached, and announces it if a
    /// connection that took the session over waits for it. Idempotent.
    fn depart(&self) {
        if self.session.depart(self.connection_id) {
            self.shared.sessions.departed();
        }
    }

    /// Releases the session, schedules or publishes the will, and ends or
    /// arms the expiry of the session. A connection that was taken over
    /// touches nothing of the session, which belongs to its new connection.
    fn detach(&mut self, will: Option<LastWill>, end: End) {
        if !self.session.release(self.connection_id) {
            self.will_after_takeover(will, end);
        } else {
            self.went_offline(will);
        }
        self.depart();
    }

    /// The will of a connection whose session another connection took: it
    /// goes out unless the session continues and the will is delayed (the
    /// new connection came before the delay passed).
    fn will_after_takeover(&self, will: Option<LastWill>, end: End) {
        let Some(will) = will else { return };
        let delayed = will.properties.will_delay_interval.unwrap_or(0) > 0;
        let continues = matches!(
            end,
            End::TakenOver {
                session_continues: true
            }
        );
        if !(delayed && continues) {
            publish_will(
                &self.shared,
                &self.session.key,
                self.username.as_deref(),
                will,
            );
        }
    }

    fn went_offline(&self, will: Option<LastWill>) {
        let shared = &self.shared;
        let session = &self.session;
        let (generation, expiry, will_now, delay, offline) = {
            let mut state = session.lock();
            let mut offline = None;
            // Offline, a persistent session's backlog stays on disk.
            if state.durable.is_some() {
                state.queue.park();
                if state.expiry_interval > 0 {
                    offline = state.stored(&session.key);
                }
            }
            let delay = will
                .as_ref()
                .and_then(|w| w.properties.will_delay_interval)
                .unwrap_or(0);
            let mut will_now = None;
            if let Some(will) = will {
                if delay > 0 && state.expiry_interval > 0 {
                    state.pending_will = Some(Box::new(PendingWill {
                        will,
                        username: self.username.as_deref().map(String::from),
                        generation: state.generation,
                    }));
                } else {
                    will_now = Some(will);
                }
            }
            let delay = state.pending_will.as_ref().map(|_| delay);
            (
                state.generation,
                state.expiry_interval,
                will_now,
                delay,
                offline,
            )
        };
        if let Some(stored) = offline.filter(|_| shared.catalog.is_shared()) {
            let catalog = shared.catalog.clone();
            tokio::spawn(write_offline(catalog, Arc::clone(session), stored));
        }
        if let Some(will) = will_now {
            publish_will(shared, &session.key, self.username.as_deref(), will);
        }
        if expiry == 0 {
            end_session(shared, session, generation);
            return;
        }
        if let Some(delay) = delay {
            schedule_will(shared, session, generation, delay.min(expiry));
        }
        if expiry != u32::MAX {
            schedule_expiry(shared, session, generation, expiry);
        }
    }
}

/// Publishes the pending will of `session` after `delay` seconds, unless a
/// connection attached since (which cancels the timer).
fn schedule_will(shared: &Arc<Shared>, session: &Arc<Session>, generation: u64, delay: u32) {
    let (shared_, session_) = (Arc::clone(shared), Arc::clone(session));
    let timer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
        let pending = {
            let mut state = session_.lock();
            match &state.pending_will {
                Some(p) if p.generation == generation && state.attachment.is_none() => {
                    state.pending_will.take()
                }
                _ => None,
            }
        };
        if let Some(pending) = pending {
            publish_will(
                &shared_,
                &session_.key,
                pending.username.as_deref(),
                pending.will,
            );
        }
    });
    session.lock().timers.push(timer.abort_handle());
}

/// Tells the meta service that a persistent session has no connection.
/// Writes of different callers have no order between them, so a
/// reconnect's write, or the deletion of a session that ended meanwhile,
/// may be applied before this one: once it is done, a session with a
/// connection again is written as connected once more, and an ended one
/// is deleted again.
pub(crate) async fn write_offline(
    catalog: SessionCatalog,
    session: Arc<Session>,
    stored: StoredSession,
) {
    if let Err(e) = catalog.put(&stored, false).await {
        debug!(client = %session.client_id(), error = %e, "cannot mark a session offline in the meta service");
        return;
    }
    // A reconnect's write, or the end of the session (its record
    // deleted), may have been applied before this one.
    let (again, ended) = {
        let state = session.lock();
        match state.attachment {
            Some(_) => (state.stored(&session.key), false),
            None => (None, state.durable.is_none()),
        }
    };
    let result = match again {
        Some(stored) => catalog.put(&stored, true).await,
        None if ended => catalog.forget(&session.key).await,
        None => Ok(()),
    };
    if let Err(e) = result {
        warn!(client = %session.client_id(), error = %e, "cannot correct a session's record in the meta service");
    }
}

/// Ends `session` after `expiry` seconds unless it was resumed since
/// (its generation moved on).
pub(crate) fn schedule_expiry(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    generation: u64,
    expiry: u32,
) {
    let (shared_, session_) = (Arc::clone(shared), Arc::clone(session));
    let timer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
        end_session(&shared_, &session_, generation);
    });
    session.lock().timers.push(timer.abort_handle());
}

/// Ends a session that is still at `generation` and has no connection:
/// its pending will goes out, its subscriptions and queue are dropped.
/// Marked ended first, so no connection attaches to it while it leaves the
/// router and then the registry (one that tries looks it up again).
fn end_session(shared: &Arc<Shared>, session: &Arc<Session>, generation: u64) {
    let (pending, durable) = {
        let mut state = session.lock();
        if state.generation != generation || state.attachment.is_some() || state.ended {
            return;
        }
        state.ended = true;
        state.cancel_timers();
        (state.pending_will.take(), state.durable.take())
    };
    if let (Some(_), Some(store)) = (durable, shared.durable.clone()) {
        let (key, metrics) = (session.key.to_string(), shared.metrics.clone());
        let catalog = shared.catalog.clone();
        tokio::spawn(async move {
            if let Err(e) = catalog::end_session(&store, &catalog, &key).await {
                crate::delivery::count_storage_error(&metrics);
                warn!(session = %key, error = %e, "cannot record the end of a session");
            }
        });
    }
    if let Some(pending) = pending {
        publish_will(
            shared,
            &session.key,
            pending.username.as_deref(),
            pending.will,
        );
    }
    unregister(shared, session);
    debug!(client = %session.client_id(), "session ended");
}

/// Takes `session` out of the router and the registry.
fn unregister(shared: &Shared, session: &Arc<Session>) {
    shared.router.remove_session(session);
    shared.sessions.remove(session);
    shared.metrics.sessions.set(shared.sessions.len() as i64);
    shared
        .metrics
        .subscriptions
        .set(shared.router.subscription_count() as i64);
}

/// Ends `session` because another node took it over (`forget`: it started
/// clean there, so its record in the catalog goes too; otherwise the record
/// is the other node's now). Its delayed will goes out when it is not
/// resumed. Returns once the store (and the catalog) have recorded it.
pub(crate) async fn end_for_takeover(shared: &Arc<Shared>, session: &Arc<Session>, forget: bool) {
    let (pending, durable) = {
        let mut state = session.lock();
        state.ended = true;
        state.cancel_timers();
        (state.pending_will.take(), state.durable.take())
    };
    if let Some(pending) = pending.filter(|_| forget) {
        publish_will(
            shared,
            &session.key,
            pending.username.as_deref(),
            pending.will,
        );
    }
    unregister(shared, session);
    let (Some(_), Some(store)) = (durable, &shared.durable) else {
        return;
    };
    let written = if forget {
        catalog::end_session(store, &shared.catalog, &session.key).await
    } else {
        store.session_gone(&session.key).await
    };
    if let Err(e) = written {
        crate::delivery::count_storage_error(&shared.metrics);
        warn!(session = %session.key, error = %e, "cannot record the end of a session taken over");
    }
}

/// Gives a session held for a hand-over that did not complete back to
/// itself: no connection, its expiry running again.
pub(crate) fn hold_released(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    held: crate::session::Attachment,
) {
    if !session.release(held.connection_id) {
        // A local connection took it meanwhile.
        return;
    }
    let (generation, expiry) = {
        let state = session.lock();
        (state.generation, state.expiry_interval)
    };
    if expiry != u32::MAX {
        schedule_expiry(shared, session, generation, expiry);
    }
}

/// Publishes a will message as if its client had sent it.
pub(super) fn publish_will(
    shared: &Arc<Shared>,
    key: &SessionKey,
    username: Option<&str>,
    will: LastWill,
) {
    let client_id = key.client_id();
    let auth = shared.auth.load();
    let refused = crate::sys::is_sys(&will.topic)
        || auth
            .acl
            .as_ref()
            .is_some_and(|acl| !acl.check(username, client_id, Action::Publish, &will.topic));
    if refused {
        shared
            .metrics
            .messages_dropped
            .with_label_values(&["not_authorized"])
            .inc();
        return;
    }
    let p = will.properties;
    let message = Arc::new(Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties: PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            response_topic: p.response_topic.map(Into::into),
            correlation_data: p.correlation_data,
            user_properties: p.user_properties.into(),
            content_type: p.content_type.map(Into::into),
            ..PublishProperties::default()
        },
        publisher: Some(Arc::clone(key.as_arc())),
        id: shared.cluster.as_ref().map(|c| c.next_message_id()),
        expires_at: p
            .message_expiry_interval
            .map(|secs| std::time::Instant::now() + Duration::from_secs(u64::from(secs))),
    });
    crate::delivery::publish_detached(shared, &message, crate::delivery::Scope::Cluster);
    debug!(topic = %message.topic, "will published");
}

impl End {
    /// How connection `connection_id` ends if another one has taken
    /// `session` over (see [`crate::session`]'s takeover). Checked whenever
    /// the doorbell rang.
    pub(super) fn taken_over(session: &Session, connection_id: u64) -> Option<End> {
        session
            .taken_over(connection_id)
            .map(|session_continues| End::TakenOver { session_continues })
    }
}

/// A connection dropped before it detached (its task was cancelled, or the
/// handshake gave up after attaching) is gone all the same: a connection
/// that took its session over stops waiting for it.
impl Drop for Connection {
    fn drop(&mut self) {
        self.depart();
    }
}
