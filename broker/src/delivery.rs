//! Publishing one message: in-memory deliveries are queued at once; the
//! deliveries to persistent sessions (QoS 1 and 2) and a retained message
//! are written to the message store first, and queued when the write is on
//! disk. The publisher's acknowledgement waits for that write. The records
//! of the PUBLISH packets a connection reads in one pass go to the store
//! together ([`write_records`]): one writer job, one reply, one wake-up.

use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tidemq_proto::mqtt::QoS;
use tidemq_storage_engine::StorageError;
use tracing::warn;

use crate::broker::AuthState;
use crate::broker::Shared;
use crate::cluster::{Confirms, Forwarded};
use crate::connection::RecordSink;
use crate::durable::record::{RecipientRef, RecipientSplit};
use crate::durable::{AppendGuard, DiskRef, DurableError, DurableStore, Origin, record};
use crate::message::{Delivery, Message};
use crate::metrics::BrokerMetrics;
use crate::router::{RetainLimits, RetainRefused, RouteOutcome, RouteTarget, Shares, Stamp};
use crate::session::Session;

/// The store write of a published message, resolving once it is on disk
/// (to the deliveries to queue then, if it has any).
pub(crate) type StoreWrite = BoxFuture<'static, Result<Option<Stored>, DurableError>>;

/// Deliveries whose message is on disk, to be queued in order.
pub(crate) struct Stored {
    deliveries: Vec<DurableDelivery>,
    store: DurableStore,
    /// Keeps the partition from being trimmed until the sessions hold the
    /// offset.
    _appending: AppendGuard,
}

impl Stored {
    /// Queues the deliveries on their sessions. A session whose queue is
    /// full loses the message: its completion is recorded, so a restart
    /// does not bring it back.
    pub(crate) fn enqueue(self, metrics: &BrokerMetrics) {
        let mut outcome = RouteOutcome::default();
        for (session, epoch, delivery) in self.deliveries {
            let at = delivery.stored;
            match session.enqueue_stored(delivery, epoch) {
                Ok(()) => outcome.delivered += 1,
                Err(reason) => {
                    outcome.count_failure(&session, reason);
                    if let Some(at) = at {
                        self.store.ack(at, &session.key, epoch);
                    }
                }
            }
        }
        outcome.count_drops(metrics);
    }
}

/// What routing a message leaves to the message store.
pub(crate) enum ToStore {
    /// Nothing: no persistent recipient, and not retained.
    Nothing,
    /// One record for the publisher's partition: it may share a writer job
    /// with the other records of the same read pass ([`write_records`]).
    Record(PendingRecord),
    /// A write of its own (a retained message, kept in the store or by
    /// the cluster, with the message's record if it has one).
    Write(StoreWrite),
}

/// A message's records encoded for the store (the message and its first
/// recipients, then more recipient lists when there are many), and its
/// deliveries to queue once they are on disk.
pub(crate) struct PendingRecord {
    partition: u32,
    records: Vec<Vec<u8>>,
    waiting: Waiting,
}

/// A delivery to a persistent session: the session, its epoch, and what
/// it is sent.
type DurableDelivery = (Arc<Session>, u64, Delivery);

/// A delivery as its message's record lists it.
fn recipient((session, epoch, delivery): &DurableDelivery) -> RecipientRef<'_> {
    RecipientRef {
        key: &session.key,
        epoch: *epoch,
        qos: delivery.qos,
        retain: delivery.retain,
        subscription_ids: &delivery.subscription_ids,
    }
}

/// The deliveries of a message on its way to disk.
struct Waiting {
    deliveries: Vec<DurableDelivery>,
    /// Keeps the partition from being trimmed until the sessions hold the
    /// offset.
    appending: AppendGuard,
}

impl Waiting {
    /// The deliveries, now that their records are on disk from `first` on:
    /// each points at the record that names its session.
    fn stored(mut self, partition: u32, first: u64, store: DurableStore) -> Stored {
        let mut split = RecipientSplit::default();
        for entry in &mut self.deliveries {
            let record = split.place(recipient(entry).encoded_len()) as u64;
            entry.2.stored = Some(DiskRef {
                partition,
                offset: first + record,
            });
        }
        Stored {
            deliveries: self.deliveries,
            store,
            _appending: self.appending,
        }
    }
}

/// Where a message is routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Published on this node: retained here, queued for the local
    /// subscribers and forwarded to the other nodes with matching routes.
    Cluster,
    /// This node's own `$SYS` value: queued for the local subscribers only.
    Local,
    /// Forwarded by another node: queued for the local subscriptions it
    /// names only; stored with the node's id and its number for it, when
    /// it has one.
    Forwarded(Shares, Option<ForwardedFrom>),
}

/// The node that forwarded a message, and its number on that node's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ForwardedFrom {
    pub(crate) node: u64,
    pub(crate) sequence: u64,
}

/// Forwards `message` to the other nodes when it was published here, and
/// says which of this node's subscriptions get it.
fn forward(shared: &Shared, message: &Message, scope: Scope) -> (Forwarded, Shares) {
    match (scope, &shared.cluster) {
        (Scope::Cluster, Some(cluster)) => {
            let mut forwarded = cluster.forward(message);
            let shares = forwarded.local_shares();
            (forwarded, shares)
        }
        (Scope::Cluster | Scope::Local, _) => (Forwarded::default(), Shares::All),
        (Scope::Forwarded(shares, _), _) => (Forwarded::default(), shares),
    }
}

/// Routes `message`: queues the in-memory deliveries now and forwards it to
/// the other nodes with matching routes, and returns what the store must
/// write before the publisher is acknowledged and the persistent
/// deliveries are queued, and the other nodes' confirmations the
/// acknowledgement waits for too.
pub(crate) fn route(
    shared: &Shared,
    message: &Arc<Message>,
    origin: Option<Origin>,
    scope: Scope,
) -> Result<(RouteOutcome, ToStore, Confirms), DurableError> {
    let config = shared.config.load();
    let queue_qos0 = config.session.queue_qos0_offline;
    let mut outcome = RouteOutcome::default();
    // A message forwarded by another node is that node's to retain.
    let retains = message.retain && scope == Scope::Cluster;
    // Retained first: a message the broker cannot retain is not routed.
    let retained = if retains {
        match retain(shared, message, config.mqtt.retain_limits()) {
            Ok(write) => write,
            Err(RetainRefused) => {
                shared
                    .metrics
                    .messages_dropped
                    .with_label_values(&["retained_limit"])
                    .inc();
                outcome.retain_refused = true;
                return Ok((outcome, ToStore::Nothing, Confirms::default()));
            }
        }
    } else {
        None
    };
    let from = match &scope {
        Scope::Forwarded(_, from) => *from,
        _ => None,
    };
    // Forwarded before the local routing: which shared groups are served
    // here depends on it.
    let (forwarded, shares) = forward(shared, message, scope);
    outcome.forwarded = forwarded.nodes;
    let confirms = forwarded.confirms;
    let mut durable = Vec::new();
    // Loaded only for a subscription the ACL partly allows.
    let mut auth = None;
    let stored_full = shared
        .durable
        .as_ref()
        .is_some_and(DurableStore::stored_full);
    for target in shared.router.targets_of(message, &shared.sessions, &shares) {
        let RouteTarget {
            session,
            delivery,
            acl_check,
        } = target;
        if acl_check
            && !may_receive(
                auth.get_or_insert_with(|| shared.auth.load()),
                &session,
                &message.topic,
            )
        {
            outcome.dropped_not_authorized += 1;
            continue;
        }
        let epoch = match (&shared.durable, delivery.qos) {
            (Some(_), QoS::AtLeastOnce | QoS::ExactlyOnce) => session.lock().durable,
            _ => None,
        };
        match epoch {
            Some(_) if stored_full => {
                session.count_drop();
                outcome.dropped_stored_limit += 1;
            }
            Some(epoch) => durable.push((session, epoch, delivery)),
            None => outcome.enqueue(&session, delivery, queue_qos0),
        }
    }
    // Only a broker with a store has persistent deliveries.
    let record = match &shared.durable {
        Some(store) if !durable.is_empty() => {
            outcome.delivered += durable.len();
            let record = pending_record(store, message, origin, from, durable)?;
            Some((store.clone(), record))
        }
        _ => None,
    };
    let to_store = match (record, retained) {
        (None, None) => ToStore::Nothing,
        (Some((_, record)), None) => ToStore::Record(record),
        (record, Some(retained)) => ToStore::Write(write_alone(shared, retained, record)),
    };
    Ok((outcome, to_store, confirms))
}

/// The write of a retained message that passed the limits: a broker of a
/// cluster sets it here and sends it to the metadata group (the write a
/// QoS 0 message does not wait for), one without a cluster stores it in its
/// own store (if it has one).
fn retain(
    shared: &Shared,
    message: &Arc<Message>,
    limits: RetainLimits,
) -> Result<Option<RetainWrite>, RetainRefused> {
    let Some(cluster) = &shared.cluster else {
        shared
            .router
            .retained()
            .set(message, Stamp::LOCAL, limits)?;
        return Ok(shared.durable.clone().map(|store| {
            let message = Arc::clone(message);
            async move { store.put_retained(&message).await }.boxed()
        }));
    };
    let stamp = cluster.retained_stamp();
    shared.router.retained().set(message, stamp, limits)?;
    let replicated = cluster.replicate_retained(message, stamp);
    Ok((message.qos != QoS::AtMostOnce).then_some(replicated))
}

/// Whether the ACL lets `session` receive a message on `topic`.
pub(crate) fn may_receive(auth: &AuthState, session: &Session, topic: &str) -> bool {
    // The ACL takes no lock of its own, so it may run under the session's.
    let state = session.lock();
    auth.may_receive(state.username.as_deref(), session.client_id(), topic)
}

/// Encodes the record of `message` for its persistent recipients.
fn pending_record(
    store: &DurableStore,
    message: &Message,
    origin: Option<Origin>,
    from: Option<ForwardedFrom>,
    deliveries: Vec<DurableDelivery>,
) -> Result<PendingRecord, DurableError> {
    let publisher = message.publisher.as_deref().unwrap_or_default();
    let partition = store.partition_for(publisher);
    let appending = store.begin_append(partition);
    let mut ranges =
        record::recipient_ranges(deliveries.iter().map(|d| recipient(d).encoded_len()));
    let listed = |range: std::ops::Range<usize>| deliveries[range].iter().map(recipient);
    let first = ranges.next().unwrap_or_default();
    let mut records = vec![store.checked_size(record::publish_record(
        &record::message_publish(message),
        record::expiry_to_unix(message, Instant::now()),
        origin.as_ref(),
        listed(first),
    )?)?];
    for (back, range) in (1u32..).zip(ranges) {
        records.push(store.checked_size(record::recipients_record(back, listed(range))?)?);
    }
    // Last: on disk, it says the records before it are.
    if let Some(from) = from {
        records.push(record::forwarded_record(from.node, from.sequence));
    }
    Ok(PendingRecord {
        partition,
        records,
        waiting: Waiting {
            deliveries,
            appending,
        },
    })
}

/// The broker's [`RecordSink`]: the records of a connection's read pass go
/// to the message store through [`write_records`].
pub(crate) struct StoreSink(pub(crate) Arc<Shared>);

impl RecordSink for StoreSink {
    type Record = PendingRecord;
    type Stored = Stored;

    fn write(
        &self,
        records: Vec<PendingRecord>,
    ) -> BoxFuture<'static, Result<Vec<Stored>, DurableError>> {
        write_records(&self.0, records)
    }
}

/// Writes the records of one read pass of a connection as one writer job
/// per partition (all of a connection's records go to its partition, so
/// one in practice); resolves, once they are on disk, to their deliveries,
/// in order.
pub(crate) fn write_records(
    shared: &Arc<Shared>,
    records: Vec<PendingRecord>,
) -> BoxFuture<'static, Result<Vec<Stored>, DurableError>> {
    let Some(store) = shared.durable.clone() else {
        let closed = DurableError::from(StorageError::Closed);
        return futures_util::future::ready(Err(closed)).boxed();
    };
    let started = Instant::now();
    // Runs of records for one partition, each sent as one job now.
    let mut runs = Vec::new();
    let mut rest = Vec::with_capacity(records.len());
    let mut records = records.into_iter().peekable();
    while let Some(first) = records.next() {
        let partition = first.partition;
        let mut run: Vec<PendingRecord> = vec![first];
        while let Some(next) = records.next_if(|r| r.partition == partition) {
            run.push(next);
        }
        // Each message's records take consecutive offsets from the job's first.
        let mut bytes = Vec::with_capacity(run.len());
        let mut skip = 0u64;
        for pending in run {
            let count = pending.records.len() as u64;
            bytes.extend(pending.records);
            rest.push((partition, skip, pending.waiting));
            skip += count;
        }
        runs.push(store.send_records(partition, bytes));
    }
    let shared = Arc::clone(shared);
    async move {
        let metrics = &shared.metrics;
        let mut firsts = Vec::with_capacity(runs.len());
        for sent in runs {
            let first = match sent {
                Ok(reply) => reply.await,
                Err(e) => Err(e),
            }
            .inspect_err(|_| metrics.storage_errors.inc())?;
            firsts.push(first);
        }
        let seconds = started.elapsed().as_secs_f64();
        metrics.messages_stored.inc_by(rest.len() as u64);
        // `rest` is in run order: a new run starts where `skip` is 0.
        let mut run = firsts.into_iter();
        let mut first = 0;
        Ok(rest
            .into_iter()
            .map(|(partition, skip, waiting)| {
                if skip == 0 {
                    first = run.next().unwrap_or(first);
                }
                metrics.store_write_seconds.observe(seconds);
                waiting.stored(partition, first + skip, store.clone())
            })
            .collect())
    }
    .boxed()
}

/// The write of a retained message, resolving once it is kept.
type RetainWrite = BoxFuture<'static, Result<(), DurableError>>;

/// The store write of a retained message: the retained message's own
/// write, and the message's record if it has persistent recipients.
fn write_alone(
    shared: &Shared,
    retained: RetainWrite,
    pending: Option<(DurableStore, PendingRecord)>,
) -> StoreWrite {
    let (write_seconds, stored_total, errors) = (
        shared.metrics.store_write_seconds.clone(),
        shared.metrics.messages_stored.clone(),
        shared.metrics.storage_errors.clone(),
    );
    let started = Instant::now();
    async move {
        let append = async {
            let Some((store, pending)) = pending else {
                return Ok(None);
            };
            let first = store
                .send_records(pending.partition, pending.records)?
                .await?;
            Ok(Some((store, pending.partition, first, pending.waiting)))
        };
        let (appended, ()) = futures_util::future::try_join(append, retained)
            .await
            .inspect_err(|e| {
                if !matches!(e, DurableError::Meta(_)) {
                    errors.inc();
                }
            })?;
        write_seconds.observe(started.elapsed().as_secs_f64());
        Ok(appended.map(|(store, partition, first, waiting)| {
            stored_total.inc();
            waiting.stored(partition, first, store)
        }))
    }
    .boxed()
}

/// Routes a message another node forwarded: to the subscriptions of this
/// node that `shares` names. Returns the write of its stored deliveries
/// (`None`: nothing to store), which the caller hands to
/// [`enqueue_stored`] in the order the messages came, so that sessions
/// get them in that order.
pub(crate) fn publish_forwarded(
    shared: &Arc<Shared>,
    message: &Arc<Message>,
    shares: Shares,
    from: Option<ForwardedFrom>,
) -> Option<DetachedWrite> {
    route_detached(shared, message, Scope::Forwarded(shares, from))
}

/// Routes a message nobody waits for (a will, a `$SYS` value): stored
/// deliveries are queued when their write completes.
pub(crate) fn publish_detached(shared: &Arc<Shared>, message: &Arc<Message>, scope: Scope) {
    if let Some(write) = route_detached(shared, message, scope) {
        let shared = Arc::clone(shared);
        tokio::spawn(async move { enqueue_stored(&shared, write.await) });
    }
}

pub(crate) type DetachedWrite = BoxFuture<'static, Result<Option<Stored>, DurableError>>;

/// Routes `message` and returns its store write, if it has one.
fn route_detached(
    shared: &Arc<Shared>,
    message: &Arc<Message>,
    scope: Scope,
) -> Option<DetachedWrite> {
    match route(shared, message, None, scope) {
        Ok((outcome, to_store, _)) => {
            outcome.count_drops(&shared.metrics);
            match to_store {
                ToStore::Nothing => None,
                ToStore::Record(record) => Some(
                    write_records(shared, vec![record])
                        .map(|r| r.map(|mut stored| stored.pop()))
                        .boxed(),
                ),
                ToStore::Write(write) => Some(write),
            }
        }
        Err(e) => {
            count_storage_error(&shared.metrics);
            warn!(topic = %message.topic, error = %e, "cannot store a message for its persistent subscribers");
            None
        }
    }
}

/// Queues the deliveries of a finished store write on their sessions.
pub(crate) fn enqueue_stored(shared: &Shared, written: Result<Option<Stored>, DurableError>) {
    match written {
        Ok(Some(stored)) => stored.enqueue(&shared.metrics),
        Ok(None) => {}
        // The write counted the failure in `tidemq_storage_errors_total`.
        Err(e) => warn!(error = %e, "cannot store a message for its persistent subscribers"),
    }
}

/// Counts a failed write to the message store.
pub(crate) fn count_storage_error(metrics: &BrokerMetrics) {
    metrics.storage_errors.inc();
}

#[cfg(test)]
mod tests;
