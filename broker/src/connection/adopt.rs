//! A CONNECT for a session another node of the cluster holds: the session
//! is taken over from there before the client is answered (the protocol is
//! `crate::cluster`'s takeover module). A clean start only has the other
//! node end it.

use std::sync::Arc;

use tidemq_proto::mqtt::{Connect, ReasonCode};
use tracing::{info, warn};

use crate::broker::Shared;
use crate::cluster::{Taken, TakeoverError, store_handed};
use crate::config::Config;
use crate::durable::AppendGuard;
use crate::durable::record::unix_ms;
use crate::session::{Claim, MemoryQueue, Session, SessionKey, SubscriptionEntry};

/// A session taken from another node, built and subscribed here, whose
/// hand-over is not committed yet.
pub(super) struct Adopted {
    taken: Taken,
    session: Arc<Session>,
    /// Where in the queue what the other node queued since its copy goes:
    /// after the copy, ahead of what arrived here meanwhile.
    mark: usize,
    /// Keeps the trim off the handed messages until the session holds them.
    _stored: Option<AppendGuard>,
}

/// Takes the session `key` from the node that holds it, if another one
/// does (per the meta service), and builds it here: subscribed, with the
/// messages it had stored there. Refused (0x88) when that node does not
/// hand it over within `cluster.takeover_wait_ms`, unless the connection
/// wants a clean session that ends with it.
pub(super) async fn take_from_elsewhere(
    shared: &Arc<Shared>,
    config: &Config,
    key: &SessionKey,
    connect: &Connect,
    claim: Claim<'_>,
) -> Result<Option<Adopted>, ReasonCode> {
    let Some(cluster) = &shared.cluster else {
        return Ok(None);
    };
    if !shared.catalog.is_shared() || shared.sessions.get(key).is_some() {
        return Ok(None);
    }
    let wait = config.cluster.takeover_wait();
    let resume = !connect.clean_start;
    let asked = cluster.take_session(&shared.catalog, key, resume, claim);
    let why = match tokio::time::timeout(wait, asked).await {
        Ok(Ok(Some(taken))) => return build(shared, config, cluster, key, taken).await.map(Some),
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(TakeoverError::NotOwner)) => {
            info!(%key, "the session another node holds belongs to another user: CONNECT refused");
            return Err(ReasonCode::NotAuthorized);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "cluster.takeover_wait_ms passed".to_string(),
    };
    // A clean start of a session that ends with its connection needs
    // nothing from elsewhere, nor the meta service: it goes on, and a
    // session left on an unreachable node stays there until it expires.
    if connect.clean_start && super::connect::session_expiry(connect, config) == 0 {
        warn!(%key, why, "a session of this id elsewhere could not be ended: clean session goes on");
        cluster.count_takeover(false);
        return Ok(None);
    }
    Err(failed(shared, key, &why))
}

/// Stores what `taken` brought, builds the session from it and subscribes
/// it here.
async fn build(
    shared: &Arc<Shared>,
    config: &Config,
    cluster: &Arc<crate::cluster::Cluster>,
    key: &SessionKey,
    mut taken: Taken,
) -> Result<Adopted, ReasonCode> {
    let epoch = unix_ms();
    let messages = std::mem::take(&mut taken.messages);
    let (messages, stored) = store_handed(shared, key, epoch, messages)
        .await
        .map_err(|e| failed(shared, key, &e.to_string()))?;
    let subscriptions: Vec<(String, SubscriptionEntry)> = taken
        .session
        .subscriptions
        .iter()
        .map(|s| {
            let entry = SubscriptionEntry {
                options: s.options,
                id: s.id,
                // Checked against the ACL once attached, as for any resume.
                acl_filtered: false,
            };
            (s.filter.clone(), entry)
        })
        .collect();
    let queue = MemoryQueue::new(
        config.session.max_stored_messages,
        config.session.max_queued_bytes,
    );
    let session = Session::new(key.clone(), taken.session.protocol, queue);
    let (dropped, mark) = {
        let mut state = session.lock();
        let dropped = state.adopt(
            &taken.session,
            &subscriptions,
            &taken.inbound_qos2,
            epoch,
            messages,
        );
        (dropped, state.queue.len())
    };
    count_dropped(shared, dropped);
    let (session, existed) = shared.sessions.get_or_insert_with(key, || session);
    if existed {
        // A connection here made one meanwhile: the other node keeps its.
        return Err(failed(
            shared,
            key,
            "a session of this id started here meanwhile",
        ));
    }
    for (filter, entry) in &subscriptions {
        shared.router.subscribe(key, filter, *entry);
    }
    let filters = subscriptions
        .into_iter()
        .map(|(filter, _)| filter)
        .collect();
    if let Some(ready) = cluster.routes_ready(filters)
        && let Err(e) = ready.await
    {
        shared.router.remove_session(&session);
        shared.sessions.remove(&session);
        return Err(failed(shared, key, &e.to_string()));
    }
    Ok(Adopted {
        taken,
        session,
        mark,
        _stored: stored,
    })
}

impl Adopted {
    /// Once the session is recorded here: tells the other node, which stops
    /// routing to it, and puts what it queued since its copy in place.
    pub(super) async fn complete(self, shared: &Arc<Shared>, config: &Config) {
        let key = self.session.key.clone();
        let owner = self.taken.owner();
        let epoch = self.session.lock().durable.unwrap_or(0);
        let wait = config.cluster.takeover_wait();
        let rest = match tokio::time::timeout(wait, self.taken.commit()).await {
            Ok(Ok(rest)) => rest,
            Ok(Err(e)) => {
                return warn!(%key, owner, error = %e, "the hand-over of a session did not complete: the other node may keep a copy");
            }
            Err(_) => {
                return warn!(%key, owner, "the hand-over of a session did not complete in time: the other node may keep a copy");
            }
        };
        let rest = self.session.lock().adopted(rest);
        let rest = match store_handed(shared, &key, epoch, rest).await {
            Ok((rest, _stored)) => rest,
            Err(e) => {
                crate::delivery::count_storage_error(&shared.metrics);
                return warn!(%key, error = %e, "cannot store the last messages handed over with a session");
            }
        };
        let dropped = self.session.lock().take_messages(rest, self.mark);
        count_dropped(shared, dropped);
        if let Some(cluster) = &shared.cluster {
            cluster.count_takeover(true);
        }
        info!(%key, owner, "session taken over from another node");
    }
}

fn failed(shared: &Shared, key: &SessionKey, why: &str) -> ReasonCode {
    warn!(%key, why, "a session held by another node could not be taken over: CONNECT refused");
    if let Some(cluster) = &shared.cluster {
        cluster.count_takeover(false);
    }
    ReasonCode::ServerUnavailable
}

fn count_dropped(shared: &Shared, dropped: usize) {
    if dropped > 0 {
        shared
            .metrics
            .messages_dropped
            .with_label_values(&["queue_full"])
            .inc_by(dropped as u64);
    }
}
