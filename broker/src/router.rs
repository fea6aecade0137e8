//! Routing: which sessions a published message goes to, and retained messages.
//!
//! Subscriptions live in one [`SubscriptionTree`] behind a std `RwLock`:
//! publishes take the read lock (many at once), SUBSCRIBE and UNSUBSCRIBE the
//! write lock, and no lock is ever held across an `.await`. A client with
//! several matching subscriptions gets the message once, at the highest
//! granted QoS, with every matching subscription identifier. A shared
//! subscription (`$share/{group}/{filter}`) is one tree entry per group;
//! each message goes to one of its members, round-robin over the members
//! that are connected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use tidemq_proto::mqtt::{QoS, SubscriptionOptions};

use crate::cluster::LocalFilters;
use crate::message::{Delivery, Message};
use crate::session::{DropReason, Session, SessionKey, SessionRegistry, SubscriptionEntry};
use crate::topic_tree::{RetainTree, SubscriptionTree};

mod retained;
mod shares;

pub use self::retained::{RetainedStore, Stamp};
pub use self::shares::{ShareId, Shares};

/// The key of a subscription tree entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SubKey {
    Client(SessionKey),
    Shared(Arc<str>),
}

#[derive(Debug)]
enum SubValue {
    Client(SubscriptionEntry),
    Shared(SharedGroup),
}

/// Members of one share group on one filter.
#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(SessionKey, SubscriptionEntry)>,
    next: AtomicUsize,
}

/// Where a filter goes in the tree.
fn split_filter(filter: &str) -> (Option<&str>, &str) {
    match tidemq_proto::mqtt::parse_shared_filter(filter) {
        Ok(Some(shared)) => (Some(shared.group), shared.filter),
        _ => (None, filter),
    }
}

/// Subscriptions and retained messages of one broker.
#[derive(Default)]
pub struct Router {
    subscriptions: RwLock<SubscriptionTree<SubKey, SubValue>>,
    /// In a cluster: the filters with local subscribers, told to the route
    /// keeper as they come and go.
    local: Option<LocalFilters>,
    retained: Arc<RetainedStore>,
    /// The broker's own `$SYS` values: apart from the clients' retained
    /// messages, never counted against their limits.
    sys: RwLock<RetainTree<Arc<Message>>>,
}

/// How many retained messages, and how many bytes of them, a broker keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainLimits {
    /// Topics with a retained message.
    pub max_messages: usize,
    /// Their topics, payloads and properties ([`Message::size`]).
    pub max_bytes: usize,
}

impl RetainLimits {
    /// No limit (messages restored from the store were accepted already).
    pub const NONE: RetainLimits = RetainLimits {
        max_messages: usize::MAX,
        max_bytes: usize::MAX,
    };
}

/// A retained message that would take the broker past its [`RetainLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainRefused;

/// What routing one message did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouteOutcome {
    /// Sessions the message was queued for.
    pub delivered: usize,
    /// Sessions whose queue was full.
    pub dropped_queue_full: usize,
    /// Offline sessions that do not queue QoS 0 messages.
    pub dropped_offline_qos0: usize,
    /// Subscribers the ACL does not let receive the message's topic (their
    /// subscription's filter is only partly allowed).
    pub dropped_not_authorized: usize,
    /// Persistent sessions not given the message because every session
    /// together holds `session.max_stored_messages_total`.
    pub dropped_stored_limit: usize,
    /// Other nodes of the cluster the message was forwarded to.
    pub forwarded: usize,
    /// The message was to be retained and the retained messages are at
    /// their limit: it was not routed at all.
    pub retain_refused: bool,
}

impl RouteOutcome {
    /// Queues one delivery in memory and counts the result.
    pub fn enqueue(&mut self, session: &Session, delivery: Delivery, queue_qos0_offline: bool) {
        match session.enqueue(delivery, queue_qos0_offline) {
            Ok(()) => self.delivered += 1,
            Err(reason) => self.count_failure(session, reason),
        }
    }

    /// Counts a delivery a session refused.
    pub fn count_failure(&mut self, session: &Session, reason: DropReason) {
        session.count_drop();
        match reason {
            DropReason::OfflineQoS0 => self.dropped_offline_qos0 += 1,
            _ => self.dropped_queue_full += 1,
        }
    }

    /// Sessions that refused the message.
    pub fn dropped(&self) -> usize {
        self.dropped_queue_full + self.dropped_offline_qos0 + self.dropped_stored_limit
    }

    /// Adds the drops to the broker's `messages_dropped` counter.
    pub fn count_drops(&self, metrics: &crate::metrics::BrokerMetrics) {
        for (reason, count) in [
            (DropReason::QueueFull, self.dropped_queue_full),
            (DropReason::OfflineQoS0, self.dropped_offline_qos0),
        ] {
            if count > 0 {
                metrics
                    .messages_dropped
                    .with_label_values(&[reason.as_str()])
                    .inc_by(count as u64);
            }
        }
        for (label, count) in [
            ("subscriber_not_authorized", self.dropped_not_authorized),
            ("stored_limit", self.dropped_stored_limit),
        ] {
            if count > 0 {
                metrics
                    .messages_dropped
                    .with_label_values(&[label])
                    .inc_by(count as u64);
            }
        }
    }
}

impl Router {
    /// A router of a cluster node, telling `local` which filters have local
    /// subscribers, with the retained messages the cluster keeps in
    /// `retained`.
    pub(crate) fn in_cluster(local: LocalFilters, retained: Arc<RetainedStore>) -> Router {
        Router {
            local: Some(local),
            retained,
            ..Router::default()
        }
    }

    /// The retained messages (set, replaced and cleared through
    /// [`RetainedStore::set`]).
    pub fn retained(&self) -> &RetainedStore {
        &self.retained
    }

    /// Removes the routes this node wrote for filters it no longer has
    /// subscribers of (after a restart); returns how many.
    pub(crate) fn reconcile_routes(&self) -> usize {
        let _tree = self.write_subscriptions();
        self.local.as_ref().map_or(0, LocalFilters::reconcile)
    }

    /// Adds or replaces `client`'s subscription to `filter`. Returns whether
    /// it already existed.
    pub fn subscribe(&self, client: &SessionKey, filter: &str, entry: SubscriptionEntry) -> bool {
        let mut tree = self.write_subscriptions();
        let existed = Self::insert(&mut tree, client, filter, entry);
        if !existed && let Some(local) = &self.local {
            local.added(filter);
        }
        existed
    }

    fn insert(
        tree: &mut SubscriptionTree<SubKey, SubValue>,
        client: &SessionKey,
        filter: &str,
        entry: SubscriptionEntry,
    ) -> bool {
        let (group, inner) = split_filter(filter);
        match group {
            None => tree
                .insert(
                    inner,
                    SubKey::Client(client.clone()),
                    SubValue::Client(entry),
                )
                .is_some(),
            Some(group) => {
                let key = SubKey::Shared(group.into());
                let mut value = tree
                    .remove(inner, &key)
                    .unwrap_or(SubValue::Shared(SharedGroup::default()));
                let existed = match &mut value {
                    SubValue::Shared(group) => {
                        match group.members.iter_mut().find(|(c, _)| c == client) {
                            Some(member) => {
                                member.1 = entry;
                                true
                            }
                            None => {
                                group.members.push((client.clone(), entry));
                                false
                            }
                        }
                    }
                    SubValue::Client(_) => false,
                };
                tree.insert(inner, key, value);
                existed
            }
        }
    }

    /// Removes `client`'s subscription to `filter`. Returns whether it existed.
    pub fn unsubscribe(&self, client: &SessionKey, filter: &str) -> bool {
        let mut tree = self.write_subscriptions();
        let removed = Self::remove(&mut tree, client, filter);
        if removed && let Some(local) = &self.local {
            local.removed(filter);
        }
        removed
    }

    fn remove(
        tree: &mut SubscriptionTree<SubKey, SubValue>,
        client: &SessionKey,
        filter: &str,
    ) -> bool {
        let (group, inner) = split_filter(filter);
        match group {
            None => tree
                .remove(inner, &SubKey::Client(client.clone()))
                .is_some(),
            Some(group) => {
                let key = SubKey::Shared(group.into());
                let Some(SubValue::Shared(mut shared)) = tree.remove(inner, &key) else {
                    return false;
                };
                let before = shared.members.len();
                shared.members.retain(|(c, _)| c != client);
                let removed = shared.members.len() != before;
                if !shared.members.is_empty() {
                    tree.insert(inner, key, SubValue::Shared(shared));
                }
                removed
            }
        }
    }

    /// Removes every subscription of a session (when it ends).
    pub fn remove_session(&self, session: &Session) {
        let filters: Vec<Box<str>> = session.lock().subscriptions.filters().collect();
        for filter in filters {
            self.unsubscribe(&session.key, &filter);
        }
    }

    /// Number of subscription tree entries.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The sessions `message` goes to, each with its delivery (QoS, retain
    /// flag, subscription identifiers), without queueing anything.
    pub fn targets(&self, message: &Arc<Message>, sessions: &SessionRegistry) -> Vec<RouteTarget> {
        self.targets_of(message, sessions, &Shares::All)
    }

    /// Like [`Router::targets`], to the subscriptions `shares` names only.
    pub fn targets_of(
        &self,
        message: &Arc<Message>,
        sessions: &SessionRegistry,
        shares: &Shares,
    ) -> Vec<RouteTarget> {
        let plain = shares.plain();
        // Collect targets under the read lock, look sessions up after.
        let mut targets: HashMap<SessionKey, Target> = HashMap::new();
        {
            let tree = self
                .subscriptions
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            tree.for_each_match(&message.topic, |filter, key, value| match (key, value) {
                (SubKey::Client(client), SubValue::Client(entry)) => {
                    if !plain
                        || entry.options.no_local && message.publisher.as_deref() == Some(&**client)
                    {
                        return;
                    }
                    targets.entry(client.clone()).or_default().merge(entry);
                }
                (SubKey::Shared(name), SubValue::Shared(group)) => {
                    if !shares.group(name, filter) {
                        return;
                    }
                    if let Some((client, entry)) = pick_member(group, sessions) {
                        targets.entry(client).or_default().merge(&entry);
                    }
                }
                _ => {}
            });
        }
        targets
            .into_iter()
            .filter_map(|(client, target)| {
                let session = sessions.get(&client)?;
                let delivery = Delivery {
                    message: Arc::clone(message),
                    qos: message.qos.min(target.qos),
                    retain: message.retain && target.retain_as_published,
                    subscription_ids: target.ids,
                    stored: None,
                    dup: false,
                };
                Some(RouteTarget {
                    session,
                    delivery,
                    acl_check: !target.unfiltered,
                })
            })
            .collect()
    }

    /// Sets the retained value of a broker-owned `$SYS` topic.
    pub fn retain_sys(&self, message: &Arc<Message>) {
        self.sys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(&message.topic, Arc::clone(message));
    }

    /// Bytes the retained messages hold ([`Message::size`] of each).
    pub fn retained_bytes(&self) -> usize {
        self.retained.bytes()
    }

    /// The unexpired retained messages matching `filter` (for a shared
    /// filter, its inner filter).
    pub fn retained_for(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let (_, inner) = split_filter(filter);
        let mut out = Vec::new();
        // Only a filter starting with `$SYS` matches `$SYS` topics.
        if crate::sys::is_sys(inner.split('/').next().unwrap_or_default()) {
            let sys = self.sys.read().unwrap_or_else(PoisonError::into_inner);
            sys.for_each_match(inner, |_, message| out.push(Arc::clone(message)));
            return out;
        }
        self.retained.matching(inner, now, &mut out);
        out
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    fn write_subscriptions(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, SubscriptionTree<SubKey, SubValue>> {
        self.subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Round-robin over the group's members, preferring connected ones; when
/// none is connected the message still goes to one member's queue.
fn pick_member(
    group: &SharedGroup,
    sessions: &SessionRegistry,
) -> Option<(SessionKey, SubscriptionEntry)> {
    let count = group.members.len();
    if count == 0 {
        return None;
    }
    let start = group.next.fetch_add(1, Ordering::Relaxed);
    for step in 0..count {
        let (client, entry) = &group.members[(start + step) % count];
        let connected = sessions
            .get(client)
            .is_some_and(|s| s.lock().attachment.is_some());
        if connected {
            return Some((client.clone(), *entry));
        }
    }
    let (client, entry) = &group.members[start % count];
    Some((client.clone(), *entry))
}

/// One session a message goes to.
#[derive(Debug)]
pub struct RouteTarget {
    /// The session.
    pub session: Arc<Session>,
    /// What it gets.
    pub delivery: Delivery,
    /// Whether every matching subscription is one the ACL only partly
    /// allows: the message's topic must be checked before it is delivered.
    pub acl_check: bool,
}

/// One client's merged view of its matching subscriptions.
#[derive(Debug)]
struct Target {
    qos: QoS,
    retain_as_published: bool,
    ids: Vec<u32>,
    /// A matching subscription is wholly allowed by the ACL.
    unfiltered: bool,
}

impl Default for Target {
    fn default() -> Self {
        Self {
            qos: QoS::AtMostOnce,
            retain_as_published: false,
            ids: Vec::new(),
            unfiltered: false,
        }
    }
}

impl Target {
    fn merge(&mut self, entry: &SubscriptionEntry) {
        let SubscriptionOptions {
            qos,
            retain_as_published,
            ..
        } = entry.options;
        self.qos = self.qos.max(qos);
        self.retain_as_published |= retain_as_published;
        self.unfiltered |= !entry.acl_filtered;
        if let Some(id) = entry.id {
            self.ids.push(id);
        }
    }
}

#[cfg(test)]
mod tests;
