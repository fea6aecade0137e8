//! SUBSCRIBE and UNSUBSCRIBE: the ACL, the limits on what one packet and one
//! session may hold, and the retained messages a subscription brings.
//!
//! One SUBSCRIBE must not cost more memory than the session may hold: a
//! filter repeated in one packet brings its retained messages once, the
//! retained messages of a packet stop at the session's free queue space,
//! a packet's filters beyond `mqtt.max_subscribe_filters` and a session's
//! subscriptions beyond `session.max_subscriptions` are refused (5.0 0x97
//! quota exceeded, 3.1.1 0x80), each counted in
//! `tidemq_subscribe_refused_total{reason}`.

use std::collections::HashSet;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use tidemq_proto::mqtt::{
    AckProperties, Packet, ReasonCode, RetainHandling, SubAck, Subscribe, SubscribeFilter,
    UnsubAck, Unsubscribe, parse_shared_filter,
};

use super::acks::{Work, Write};
use super::{Connection, Io};
use crate::auth::Subscription;
use crate::delivery;
use crate::durable::{DurableError, StoredSubscription, catalog};
use crate::message::Delivery;
use crate::session::SubscriptionEntry;

/// A subscription just made: its entry and whether it replaced one.
struct Made {
    entry: SubscriptionEntry,
    existed: bool,
}

impl Connection {
    pub(super) fn on_subscribe(&mut self, subscribe: Subscribe, io: &mut Io) {
        let config = self.shared.config.load();
        let max_filters = config.mqtt.max_subscribe_filters;
        let mut room = config
            .session
            .max_queued_messages
            .saturating_sub(self.session.lock().queue.len());
        drop(config);
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut added = Vec::new();
        let mut retained = Vec::new();
        let mut retained_sent = HashSet::new();
        let id = subscribe.properties.subscription_identifier;
        for (index, request) in subscribe.filters.iter().enumerate() {
            if index >= max_filters {
                self.count_refused("too_many_filters");
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            match self.subscribe_one(request, id) {
                Ok(made) => {
                    reasons.push(ReasonCode::granted(request.options.qos));
                    added.push(StoredSubscription {
                        filter: request.filter.clone(),
                        options: made.entry.options,
                        id: made.entry.id,
                    });
                    // A filter repeated in one packet brings its retained
                    // messages once.
                    if self.wants_retained(request, made.existed)
                        && retained_sent.insert(request.filter.as_str())
                    {
                        self.retained(request, made.entry, &mut room, &mut retained);
                    }
                }
                Err(reason) => reasons.push(reason),
            }
        }
        self.count_subscriptions();
        let suback = Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reasons,
            properties: AckProperties::default(),
        });
        // Retained messages are queued after SUBACK, so the client sees the
        // grant first; a persistent session's subscriptions are on disk
        // before SUBACK, and in a cluster every other node routes to the
        // new subscriptions before it.
        let routes = self.shared.cluster.as_ref().and_then(|cluster| {
            let granted = added.iter().map(|stored| stored.filter.clone()).collect();
            cluster.routes_ready(granted)
        });
        let persist = self.persist_subscriptions(added, Vec::new());
        let write = match (persist, routes) {
            (None, None) => Write::None,
            // Side by side: both are Raft writes. No majority for a new
            // route ends the connection without SUBACK (the subscription is
            // not in force everywhere, so it is not granted).
            (persist, routes) => Write::Alone(
                async move {
                    let (persisted, routed) = futures_util::future::join(
                        OptionFuture::from(persist),
                        OptionFuture::from(routes),
                    )
                    .await;
                    persisted.transpose()?;
                    routed.transpose().map_err(DurableError::Meta)?;
                    Ok(None)
                }
                .boxed(),
            ),
        };
        self.respond(
            io,
            Work {
                then: retained,
                ..Work::after(write, Some(suback))
            },
        );
    }

    /// Checks and makes one subscription of a SUBSCRIBE; the reason code
    /// when it is refused.
    fn subscribe_one(
        &mut self,
        request: &SubscribeFilter,
        id: Option<u32>,
    ) -> Result<Made, ReasonCode> {
        if parse_shared_filter(&request.filter).is_err() {
            return Err(ReasonCode::TopicFilterInvalid);
        }
        let acl = self.shared.auth.load().subscription(
            self.username.as_deref(),
            self.session.client_id(),
            &request.filter,
            self.sys_readable,
        );
        if acl == Subscription::Refused {
            // 0x80 in 5.0 as in 3.1.1, not 0x87: clients written for the
            // 3.1.1 codes (the Paho interop suite's among them) take any
            // other failure code for a broken SUBACK.
            self.count_refused("not_authorized");
            return Err(ReasonCode::UnspecifiedError);
        }
        let entry = SubscriptionEntry {
            options: request.options,
            id,
            acl_filtered: acl == Subscription::Filtered,
        };
        {
            let max = self.shared.config.load().session.max_subscriptions;
            let mut state = self.session.lock();
            if state.subscriptions.len() >= max
                && !state.subscriptions.contains_key(&request.filter)
            {
                drop(state);
                self.count_refused("too_many_subscriptions");
                return Err(ReasonCode::QuotaExceeded);
            }
            state.subscriptions.insert(&request.filter, entry);
        }
        let existed = self
            .shared
            .router
            .subscribe(&self.session.key, &request.filter, entry);
        Ok(Made { entry, existed })
    }

    /// Whether a subscription brings the retained messages it matches
    /// (never for a shared subscription).
    fn wants_retained(&self, request: &SubscribeFilter, existed: bool) -> bool {
        let shared = matches!(parse_shared_filter(&request.filter), Ok(Some(_)));
        !shared
            && match request.options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            }
    }

    /// Adds the retained messages `request` matches to `out`, while there is
    /// `room` in the session's queue; the rest are dropped and counted.
    fn retained(
        &self,
        request: &SubscribeFilter,
        entry: SubscriptionEntry,
        room: &mut usize,
        out: &mut Vec<Delivery>,
    ) {
        let auth = self.shared.auth.load();
        let mut dropped = 0u64;
        for message in self
            .shared
            .router
            .retained_for(&request.filter, Instant::now())
        {
            if entry.acl_filtered && !delivery::may_receive(&auth, &self.session, &message.topic) {
                continue;
            }
            if *room == 0 {
                dropped += 1;
                continue;
            }
            *room -= 1;
            out.push(Delivery {
                qos: message.qos.min(request.options.qos),
                message,
                retain: true,
                subscription_ids: entry.id.into_iter().collect(),
                stored: None,
                dup: false,
            });
        }
        if dropped > 0 {
            self.count_queue_full(dropped);
        }
    }

    /// Sets the subscription gauge from the router.
    fn count_subscriptions(&self) {
        let count = self.shared.router.subscription_count();
        self.shared.metrics.subscriptions.set(count as i64);
    }

    fn count_refused(&self, reason: &str) {
        self.shared
            .metrics
            .subscribe_refused
            .with_label_values(&[reason])
            .inc();
    }

    /// The write of a change of a persistent session's subscriptions, if it
    /// is one: the change alone in the store, the whole session in the
    /// catalog.
    fn persist_subscriptions(
        &self,
        added: Vec<StoredSubscription>,
        removed: Vec<String>,
    ) -> Option<impl Future<Output = Result<(), DurableError>> + Send + 'static> {
        let store = self.shared.durable.clone()?;
        let catalog = self.shared.catalog.clone();
        let stored = self.session.lock().stored(&self.session.key)?;
        Some(async move {
            let local = store.put_subscriptions(&stored.key, stored.epoch, added, removed);
            futures_util::future::try_join(local, catalog.put(&stored, true)).await?;
            Ok(())
        })
    }

    /// The write of a persistent session's current state, if it is one.
    pub(super) fn persist_session(
        &self,
    ) -> Option<impl Future<Output = Result<(), DurableError>> + Send + 'static> {
        let store = self.shared.durable.clone()?;
        let catalog = self.shared.catalog.clone();
        let stored = self.session.lock().stored(&self.session.key)?;
        Some(async move { catalog::put_session(&store, &catalog, stored).await })
    }

    pub(super) fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe, io: &mut Io) {
        let mut removed = Vec::new();
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                let in_session = self.session.lock().subscriptions.remove(filter).is_some();
                let in_router = self.shared.router.unsubscribe(&self.session.key, filter);
                if in_session {
                    removed.push(filter.clone());
                }
                if in_session || in_router {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        self.count_subscriptions();
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reasons,
            properties: AckProperties::default(),
        });
        match self.persist_subscriptions(Vec::new(), removed) {
            Some(write) => self.respond_after(io, write, unsuback),
            None => self.reply(io, unsuback),
        }
    }
}
