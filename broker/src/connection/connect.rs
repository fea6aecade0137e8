//! The CONNECT handshake: read, validate, authenticate, attach the session
//! (taking it over from another connection if needed), answer CONNACK.
//!
//! Each step is timed ([`super::steps`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemq_proto::mqtt::{
    self, ConnAck, ConnAckProperties, Connect, DecodeError, Packet, Protocol, ReasonCode,
};
use tracing::{debug, warn};

use super::acks::AckQueue;
use super::adopt::{self, Adopted};
use super::alias::TopicAliases;
use super::limits::Limits;
use super::ordered::Ordered;
use super::steps::Steps;
use super::turn::{Budget, Busy};
use super::{Connection, Io, close};
use crate::auth::Subscription;
use crate::broker::Shared;
use crate::config::Config;
use crate::delivery::StoreSink;
use crate::durable::record::unix_ms;
use crate::durable::{DurableError, catalog};
use crate::metrics::ConnectStep;
use crate::session::{
    Attachment, Claim, MemoryQueue, Refusal, Session, SessionKey, SubscriptionEntry,
};
use crate::transport::ListenerInfo;

/// Where a connection came from.
pub(super) struct Origin {
    /// The listener it came in on.
    pub listener: Arc<ListenerInfo>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The user name its verified client certificate stands for.
    pub certificate_user: Option<String>,
}

/// Runs the handshake. `None` when the client was refused or went away.
pub(super) async fn handshake(
    shared: &Arc<Shared>,
    io: &mut Io,
    origin: Origin,
) -> Option<Connection> {
    let config = shared.config.load_full();
    let mut steps = Steps::new();
    let mut connect = read_connect(shared, &config, io).await?;
    // A certificate identity replaces the CONNECT's user name (and needs no
    // password), so ACL `user:` rules apply to it.
    if let Some(user) = origin.certificate_user.clone() {
        connect.username = Some(user);
        connect.password = None;
    }
    steps.mark(ConnectStep::ReadConnect);
    let protocol = connect.protocol;
    let (client_id, assigned) = match validate(&config, &connect) {
        Ok(found) => found,
        Err(reason) => {
            refuse(shared, io, protocol, reason).await;
            return None;
        }
    };
    tracing::Span::current().record("client_id", client_id.as_str());
    if shared.cluster.as_ref().is_some_and(|c| !c.caught_up()) {
        // Its publishes would miss subscribers on other nodes.
        refuse(shared, io, protocol, ReasonCode::ServerUnavailable).await;
        return None;
    }
    steps.mark(ConnectStep::Validate);
    if let Err(reason) = authenticate(shared, &origin, &connect).await {
        refuse(shared, io, protocol, reason).await;
        return None;
    }
    steps.mark(ConnectStep::Auth);
    let attached = attach(shared, &config, &origin, &connect, client_id.clone()).await;
    let (mut connection, session_present, existed, adopted) = match attached {
        Ok(attached) => attached,
        Err(reason) => {
            refuse(shared, io, protocol, reason).await;
            return None;
        }
    };
    connection.sys_readable = origin.listener.loopback;
    steps.mark(ConnectStep::Session);

    // A persistent session is on disk before CONNACK says it exists.
    if let Err(e) = persist(
        shared,
        &config,
        &connection.session,
        connect.clean_start,
        existed,
    )
    .await
    {
        warn!(client_id, error = %e, "cannot store the session");
        crate::delivery::count_storage_error(&shared.metrics);
        refuse(shared, io, protocol, ReasonCode::ServerUnavailable).await;
        connection.abandon(existed);
        return None;
    }
    if let Some(adopted) = adopted {
        adopted.complete(shared, &config).await;
    }
    steps.mark(ConnectStep::Persist);

    let connack = connack(&config, &connect, &client_id, assigned, session_present);
    connection.send(io, &connack);
    // A resumed session first gets what was in flight, then its queue.
    connection.resend_inflight(io);
    if io.flush_within(config.mqtt.write_timeout()).await.is_err() {
        connection.close(super::End::Dropped, io).await;
        return None;
    }
    steps.mark(ConnectStep::Connack);
    count(shared, "success");
    steps.report(shared, &client_id, config.diagnostics.slow_connect_ms);
    debug!(?protocol, session_present, "client connected");
    Some(connection)
}

/// Reads the CONNECT packet, within the connect timeout.
async fn read_connect(shared: &Shared, config: &Config, io: &mut Io) -> Option<Connect> {
    let max_in = config.mqtt.max_packet_size as usize;
    let mut shutdown = shared.shutdown.clone();
    // A broker shutting down does not wait for CONNECTs still to come.
    let read = tokio::select! {
        read = tokio::time::timeout(
            config.mqtt.connect_timeout(),
            io.read_packet(Protocol::V5, max_in),
        ) => read,
        _ = shutdown.wait_for(|stopping| *stopping) => return None,
    };
    let connect = match read {
        Err(_) => {
            debug!("no CONNECT in time");
            count(shared, "connect_timeout");
            return None;
        }
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(Packet::Connect(connect)))) => connect,
        Ok(Ok(Some(other))) => {
            debug!(packet = other.name(), "first packet is not CONNECT");
            count(shared, "protocol_error");
            return None;
        }
        Ok(Err(DecodeError::UnsupportedProtocol { level, .. })) => {
            let protocol = if level == 5 {
                Protocol::V5
            } else {
                Protocol::V3_1_1
            };
            refuse(shared, io, protocol, ReasonCode::UnsupportedProtocolVersion).await;
            return None;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "malformed CONNECT");
            count(shared, "malformed");
            return None;
        }
    };
    if let Some(counter) = shared.metrics.packets_in.of("CONNECT") {
        counter.inc();
    }
    Some(connect)
}

/// Checks what the broker's settings allow of the CONNECT; returns the
/// client id to use and whether the broker assigned it.
fn validate(config: &Config, connect: &Connect) -> Result<(String, bool), ReasonCode> {
    if let Some(will) = &connect.will
        && will.retain
        && !config.mqtt.retain_available
    {
        return Err(ReasonCode::RetainNotSupported);
    }
    let max = config.mqtt.max_keep_alive;
    if max > 0 && !connect.protocol.is_v5() && connect.keep_alive > max {
        // 3.1/3.1.1 has no way to tell the client a shorter keep alive (as
        // in Mosquitto, 0 is accepted: the client sends no PINGREQ).
        return Err(ReasonCode::ClientIdentifierNotValid);
    }
    client_identifier(connect)
}

/// The keep alive in force, and the 5.0 server keep alive to announce.
fn keep_alive(config: &Config, connect: &Connect) -> (u16, Option<u16>) {
    let mqtt = &config.mqtt;
    if !connect.protocol.is_v5() {
        return (connect.keep_alive, None);
    }
    let forced = if mqtt.server_keep_alive > 0 {
        Some(mqtt.server_keep_alive)
    } else {
        None
    };
    let capped = forced.unwrap_or(connect.keep_alive);
    let server = match mqtt.max_keep_alive {
        0 => forced,
        max if capped == 0 || capped > max => Some(max),
        _ => forced,
    };
    (server.unwrap_or(connect.keep_alive), server)
}

/// The CONNACK of an accepted CONNECT.
fn connack(
    config: &Config,
    connect: &Connect,
    client_id: &str,
    assigned: bool,
    session_present: bool,
) -> Packet {
    let mut properties = ConnAckProperties::default();
    if connect.protocol.is_v5() {
        properties.assigned_client_identifier = assigned.then(|| client_id.to_string());
        properties.receive_maximum = Some(config.mqtt.receive_maximum);
        properties.maximum_packet_size = Some(config.mqtt.max_packet_size);
        properties.topic_alias_maximum = Some(config.mqtt.topic_alias_maximum);
        properties.retain_available = Some(config.mqtt.retain_available);
        properties.wildcard_subscription_available = Some(true);
        properties.subscription_identifiers_available = Some(true);
        properties.shared_subscription_available = Some(true);
        properties.server_keep_alive = keep_alive(config, connect).1;
        let asked = connect.properties.session_expiry_interval.unwrap_or(0);
        let expiry = session_expiry(connect, config);
        properties.session_expiry_interval = (asked != expiry).then_some(expiry);
    }
    Packet::ConnAck(ConnAck {
        session_present,
        reason: ReasonCode::Success,
        properties,
    })
}

/// Attaches the connection to its session, taking it over from a live
/// connection in one step (the registry entry, its attachment and its
/// generation change together), then waits until that connection has
/// detached: never two live connections on one session. Returns the new
/// connection, whether the session is present, and whether it existed.
async fn attach(
    shared: &Arc<Shared>,
    config: &Config,
    origin: &Origin,
    connect: &Connect,
    client_id: String,
) -> Result<(Connection, bool, bool, Option<Adopted>), ReasonCode> {
    let tenant = &origin.listener.tenant;
    let key = SessionKey::new(tenant, &client_id);
    let claim = if config.auth.sessions_belong_to_their_user {
        Claim::Owned {
            username: connect.username.as_deref(),
        }
    } else {
        Claim::Anyone
    };
    // Held by another node of the cluster: taken over from there first.
    let adopted = adopt::take_from_elsewhere(shared, config, &key, connect, claim).await?;
    let connection_id = shared.sessions.next_connection_id();
    let mut attachment = Attachment { connection_id };
    // A new session past the node's limit is refused (5.0: 0x97, 3.1.1:
    // 0x03); an existing one may always be resumed.
    if shared.sessions.len() >= config.session.max_sessions && shared.sessions.get(&key).is_none() {
        debug!(client_id, "the node holds its maximum of sessions");
        return Err(ReasonCode::QuotaExceeded);
    }
    // A session that has just ended leaves the registry in a moment: wait
    // for that, then start a new one.
    let mut tries = 0u32;
    let (session, existed, attached) = loop {
        let (session, existed) = shared.sessions.get_or_insert_with(&key, || {
            Session::new(
                key.clone(),
                connect.protocol,
                MemoryQueue::new(
                    config.session.max_queued_messages,
                    config.session.max_queued_bytes,
                ),
            )
        });
        match session.attach(attachment, claim, !connect.clean_start) {
            Ok(attached) => break (session, existed, attached),
            Err((_, Refusal::NotOwner)) => {
                debug!(client_id, "the session belongs to another user");
                return Err(ReasonCode::NotAuthorized);
            }
            Err((back, Refusal::Ended)) if tries < 10_000 => {
                attachment = back;
                tries += 1;
                tokio::task::yield_now().await;
            }
            Err((_, Refusal::Ended)) => {
                warn!(client_id, "a session that ended is still registered");
                return Err(ReasonCode::ServerUnavailable);
            }
        }
    };
    if let Some(previous) = attached.previous {
        let limit = Duration::from_secs(5);
        if !shared
            .sessions
            .wait_departure(&session, previous.connection_id, limit)
            .await
        {
            warn!(client_id, "the connection taken over did not close in time");
        }
    }
    let session_present = existed && attached.resumable && !connect.clean_start;
    if connect.clean_start {
        shared.router.remove_session(&session);
    }
    {
        let mut state = session.lock();
        if connect.clean_start || !existed {
            state.reset();
        }
        state.protocol = connect.protocol;
        state.username = connect.username.clone();
        state.expiry_interval = session_expiry(connect, config);
    }
    if session_present {
        recheck_subscriptions(
            shared,
            &session,
            connect.username.as_deref(),
            origin.listener.loopback,
        );
    }
    // A clean start ends the old session: its delayed will goes out now.
    if let Some(pending) = attached.pending_will.filter(|_| connect.clean_start) {
        close::publish_will(
            shared,
            &session.key,
            pending.username.as_deref(),
            pending.will,
        );
    }
    shared.metrics.sessions.set(shared.sessions.len() as i64);
    Ok((
        Connection::new(shared, config, connect, session, connection_id),
        session_present,
        existed,
        adopted,
    ))
}

/// Checks a resumed session's subscriptions against the ACL in force now
/// (it may have changed since they were granted): one it denies entirely is
/// dropped and logged, and each one's per-message check is set anew.
fn recheck_subscriptions(
    shared: &Shared,
    session: &Session,
    username: Option<&str>,
    sys_readable: bool,
) {
    let auth = shared.auth.load();
    if auth.acl.is_none() && sys_readable {
        return;
    }
    let subscriptions: Vec<(String, SubscriptionEntry)> = session
        .lock()
        .subscriptions
        .iter()
        .map(|(filter, entry)| (filter.to_string(), *entry))
        .collect();
    // The router's lock is never taken under the session's.
    for (filter, mut entry) in subscriptions {
        match auth.subscription(username, session.client_id(), &filter, sys_readable) {
            Subscription::Refused => {
                warn!(client = %session.client_id(), %filter, "the ACL now denies a subscription: dropped");
                session.lock().subscriptions.remove(&filter);
                shared.router.unsubscribe(&session.key, &filter);
            }
            decision => {
                let filtered = decision == Subscription::Filtered;
                if entry.acl_filtered != filtered {
                    entry.acl_filtered = filtered;
                    session.lock().subscriptions.insert(&filter, entry);
                    shared.router.subscribe(&session.key, &filter, entry);
                }
            }
        }
    }
}

impl Connection {
    fn new(
        shared: &Arc<Shared>,
        config: &Config,
        connect: &Connect,
        session: Arc<Session>,
        connection_id: u64,
    ) -> Connection {
        let protocol = connect.protocol;
        let keep_alive = keep_alive(config, connect).0;
        let now = Instant::now();
        Connection {
            shared: Arc::clone(shared),
            session,
            connection_id,
            protocol,
            username: connect.username.as_deref().map(Box::from),
            sys_readable: false,
            limits: Limits::new(config, connect, keep_alive),
            will: connect.will.clone().map(Box::new),
            connect_expiry: connect.properties.session_expiry_interval.unwrap_or(0),
            aliases: TopicAliases::new(
                if protocol.is_v5() {
                    config.mqtt.topic_alias_maximum
                } else {
                    0
                },
                connect.properties.topic_alias_maximum.unwrap_or(0),
            ),
            last_packet: now,
            write_blocked_since: None,
            acks: AckQueue::new(StoreSink(Arc::clone(shared))),
            // Packets that came in the CONNECT's read wait in the buffer.
            input_held: true,
            loading: Ordered::new(),
            completions: Vec::new(),
            budget: Budget::new(super::TURN_BUDGET),
            busy: Busy::default(),
        }
    }
}

/// Writes a persistent session's state to the message store (a clean start
/// begins a new epoch, whose messages alone it receives), or records the
/// end of one that is no longer persistent. Nothing to do without a store.
async fn persist(
    shared: &Shared,
    config: &Config,
    session: &Session,
    clean_start: bool,
    existed: bool,
) -> Result<(), DurableError> {
    let Some(store) = &shared.durable else {
        return Ok(());
    };
    let write = {
        let mut state = session.lock();
        if state.expiry_interval == 0 {
            state.durable.take().map(|_| None)
        } else {
            let epoch = match state.durable {
                Some(epoch) if existed && !clean_start => epoch,
                previous => unix_ms().max(previous.map_or(0, |e| e + 1)),
            };
            state.durable = Some(epoch);
            state
                .queue
                .set_max_messages(config.session.max_stored_messages);
            state.stored(&session.key).map(Some)
        }
    };
    match write {
        Some(Some(stored)) => catalog::put_session(store, &shared.catalog, stored).await,
        Some(None) => catalog::end_session(store, &shared.catalog, &session.key).await,
        None => Ok(()),
    }
}

/// The client id to use, and whether the broker assigned it.
fn client_identifier(connect: &Connect) -> Result<(String, bool), ReasonCode> {
    if !connect.client_id.is_empty() {
        if connect.protocol == Protocol::V3_1 && connect.client_id.len() > 23 {
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
        return Ok((connect.client_id.clone(), false));
    }
    // An empty id gets a generated one, except where the spec says to
    // refuse: 3.1, and 3.1.1 asking to keep its session.
    match connect.protocol {
        Protocol::V5 => Ok((generate_client_id(), true)),
        Protocol::V3_1_1 if connect.clean_start => Ok((generate_client_id(), true)),
        _ => Err(ReasonCode::ClientIdentifierNotValid),
    }
}

fn generate_client_id() -> String {
    format!("tidemq-{:016x}", rand::random::<u64>())
}

/// Checks credentials against the password file and the anonymous policy
/// of the listener; a client whose certificate named it is authenticated
/// already. Password checks run off the tokio workers and slow down after
/// failures ([`crate::auth::Login`]).
async fn authenticate(
    shared: &Shared,
    origin: &Origin,
    connect: &Connect,
) -> Result<(), ReasonCode> {
    if origin.certificate_user.is_some() {
        return Ok(());
    }
    let allow_anonymous = origin.listener.allow_anonymous;
    let peer = origin.peer;
    let auth = shared.auth.load_full();
    match (&connect.username, &auth.passwords) {
        (None, _) if allow_anonymous => Ok(()),
        (None, _) => Err(ReasonCode::NotAuthorized),
        (Some(user), Some(_)) => {
            let password = connect.password.clone().unwrap_or_default();
            let cached = auth.verified.contains(user, &password);
            if cached {
                shared.metrics.logins_cached.inc();
            }
            let check = {
                let (auth, name, password) = (Arc::clone(&auth), user.clone(), password.clone());
                move || {
                    auth.passwords
                        .as_ref()
                        .is_some_and(|passwords| passwords.verify(&name, &password))
                }
            };
            if shared.login.verify(peer.ip(), user, cached, check).await {
                if !cached {
                    auth.verified.insert(user, &password);
                    shared
                        .metrics
                        .logins_remembered
                        .set(auth.verified.len() as i64);
                }
                Ok(())
            } else {
                Err(ReasonCode::BadUserNameOrPassword)
            }
        }
        (Some(_), None) if allow_anonymous => Ok(()),
        (Some(_), None) => Err(ReasonCode::BadUserNameOrPassword),
    }
}

/// The session expiry in force: 3.1.1 clean session 0 keeps the session
/// forever (bounded by configuration), 5.0 uses the property.
pub(super) fn session_expiry(connect: &Connect, config: &Config) -> u32 {
    let asked = match connect.protocol {
        Protocol::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
        _ if connect.clean_start => 0,
        _ => u32::MAX,
    };
    asked.min(config.mqtt.max_session_expiry_secs)
}

/// Answers CONNECT with a failure and counts it.
async fn refuse(shared: &Shared, io: &mut Io, protocol: Protocol, reason: ReasonCode) {
    count(shared, reason_label(reason));
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason,
        properties: ConnAckProperties::default(),
    });
    if mqtt::encode(&connack, protocol, io.out()).is_ok() {
        shared.metrics.packets_out.count(&connack);
        let _ = io.flush_within(Duration::from_secs(5)).await;
    }
}

fn count(shared: &Shared, label: &str) {
    shared.metrics.connects.with_label_values(&[label]).inc();
}

/// A metric label for a reason code.
pub(crate) fn reason_label(reason: ReasonCode) -> &'static str {
    match reason {
        ReasonCode::Success => "success",
        ReasonCode::UnsupportedProtocolVersion => "unsupported_protocol_version",
        ReasonCode::ClientIdentifierNotValid => "client_identifier_not_valid",
        ReasonCode::BadUserNameOrPassword => "bad_username_or_password",
        ReasonCode::NotAuthorized => "not_authorized",
        ReasonCode::MalformedPacket => "malformed_packet",
        ReasonCode::ProtocolError => "protocol_error",
        ReasonCode::PacketTooLarge => "packet_too_large",
        ReasonCode::TopicAliasInvalid => "topic_alias_invalid",
        ReasonCode::ReceiveMaximumExceeded => "receive_maximum_exceeded",
        ReasonCode::TopicNameInvalid => "topic_name_invalid",
        ReasonCode::TopicFilterInvalid => "topic_filter_invalid",
        ReasonCode::KeepAliveTimeout => "keep_alive_timeout",
        ReasonCode::RetainNotSupported => "retain_not_supported",
        ReasonCode::QuotaExceeded => "quota_exceeded",
        ReasonCode::ServerUnavailable => "server_unavailable",
        _ => "other",
    }
}
