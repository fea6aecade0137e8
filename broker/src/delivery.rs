//! Publishing one message: in-memory deliveries are queued at once; the
//! deliveries to persistent sessions (QoS 1 and 2) and a retained message
//! are written to the message store first, and queued when the write is on
//! disk. The publisher's acknowledgement waits for that write.

use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tidemq_proto::mqtt::QoS;
use tracing::warn;

use crate::broker::Shared;
use crate::durable::{
    AppendGuard, DiskRef, DurableError, DurableStore, Origin, Recipient, Record, record,
};
use crate::message::{Delivery, Message};
use crate::metrics::BrokerMetrics;
use crate::router::RouteOutcome;
use crate::session::Session;

/// The store write of a published message, resolving once it is on disk.
pub(crate) type StoreWrite = BoxFuture<'static, Result<Stored, DurableError>>;

/// Deliveries whose message is on disk, to be queued in order.
pub(crate) struct Stored {
    deliveries: Vec<(Arc<Session>, u64, Delivery)>,
    store: DurableStore,
    /// Keeps the partition from being trimmed until the sessions hold the
    /// offset.
    _appending: Option<AppendGuard>,
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

/// Routes `message`. Returns what was queued now and, when the message must
/// be stored, the write to await before acknowledging the publisher and
/// then [`Stored::enqueue`].
pub(crate) fn dispatch(
    shared: &Shared,
    message: &Arc<Message>,
    origin: Option<Origin>,
) -> (RouteOutcome, Option<StoreWrite>) {
    let queue_qos0 = shared.config.load().session.queue_qos0_offline;
    let mut outcome = RouteOutcome::default();
    let mut durable = Vec::new();
    for (session, delivery) in shared.router.targets(message, &shared.sessions) {
        let epoch = match (&shared.durable, delivery.qos) {
            (Some(_), QoS::AtLeastOnce | QoS::ExactlyOnce) => session.lock().durable,
            _ => None,
        };
        match epoch {
            Some(epoch) => durable.push((session, epoch, delivery)),
            None => outcome.enqueue(&session, delivery, queue_qos0),
        }
    }
    if message.retain {
        let count = shared.router.retain(message);
        shared.metrics.retained.set(count as i64);
    }
    let Some(store) = shared.durable.clone() else {
        return (outcome, None);
    };
    if durable.is_empty() && !message.retain {
        return (outcome, None);
    }
    outcome.delivered += durable.len();
    let message = Arc::clone(message);
    let (write_seconds, stored_total, errors) = (
        shared.metrics.store_write_seconds.clone(),
        shared.metrics.messages_stored.clone(),
        shared.metrics.storage_errors.clone(),
    );
    let started = Instant::now();
    let write = async move {
        let appending = if durable.is_empty() {
            None
        } else {
            let publisher = message.publisher.as_deref().unwrap_or_default();
            let partition = store.partition_for(publisher);
            Some((partition, store.begin_append(partition)))
        };
        let append = async {
            let Some((partition, _)) = &appending else {
                return Ok(None);
            };
            let record = Record::Publish {
                publish: record::message_publish(&message),
                expires_at_ms: record::expiry_to_unix(&message, Instant::now()),
                origin,
                recipients: durable
                    .iter()
                    .map(|(session, epoch, delivery)| Recipient {
                        key: session.key.to_string(),
                        epoch: *epoch,
                        qos: delivery.qos,
                        retain: delivery.retain,
                        subscription_ids: delivery.subscription_ids.clone(),
                    })
                    .collect(),
            };
            let offset = store.append(*partition, &record).await?;
            Ok(Some(DiskRef {
                partition: *partition,
                offset,
            }))
        };
        let retain = async {
            if message.retain {
                store.put_retained(&message).await
            } else {
                Ok(())
            }
        };
        let (at, ()) = futures_util::future::try_join(append, retain)
            .await
            .inspect_err(|_| errors.inc())?;
        write_seconds.observe(started.elapsed().as_secs_f64());
        if at.is_some() {
            stored_total.inc();
        }
        for (_, _, delivery) in &mut durable {
            delivery.stored = at;
        }
        Ok(Stored {
            deliveries: durable,
            store,
            _appending: appending.map(|(_, guard)| guard),
        })
    };
    (outcome, Some(write.boxed()))
}

/// Routes a message nobody waits for (a will): stored deliveries are
/// queued when their write completes.
pub(crate) fn publish_detached(shared: &Arc<Shared>, message: &Arc<Message>) {
    let (outcome, write) = dispatch(shared, message, None);
    outcome.count_drops(&shared.metrics);
    if let Some(write) = write {
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            match write.await {
                Ok(stored) => stored.enqueue(&shared.metrics),
                Err(e) => {
                    count_storage_error(&shared.metrics);
                    warn!(error = %e, "cannot store a will for its persistent subscribers");
                }
            }
        });
    }
}

/// Counts a failed write to the message store.
pub(crate) fn count_storage_error(metrics: &BrokerMetrics) {
    metrics.storage_errors.inc();
}
