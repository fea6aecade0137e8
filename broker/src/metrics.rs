//! Prometheus metrics of the broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tidemq_proto::mqtt::{PACKET_TYPE_NAMES, Packet};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, exponential_buckets,
};

/// The steps of CONNECT handling, each timed in
/// `tidemq_connect_step_duration_seconds{step}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStep {
    /// Reading the CONNECT packet.
    ReadConnect,
    /// Checking it.
    Validate,
    /// Checking the credentials.
    Auth,
    /// Attaching the session.
    Session,
    /// Storing a persistent session.
    Persist,
    /// Writing CONNACK.
    Connack,
}

impl ConnectStep {
    /// Every step, in order.
    pub const ALL: [ConnectStep; 6] = [
        ConnectStep::ReadConnect,
        ConnectStep::Validate,
        ConnectStep::Auth,
        ConnectStep::Session,
        ConnectStep::Persist,
        ConnectStep::Connack,
    ];

    /// The `step` label.
    pub fn label(self) -> &'static str {
        match self {
            ConnectStep::ReadConnect => "read_connect",
            ConnectStep::Validate => "validate",
            ConnectStep::Auth => "auth",
            ConnectStep::Session => "session",
            ConnectStep::Persist => "persist",
            ConnectStep::Connack => "connack",
        }
    }
}

/// Every broker metric, registered in one registry.
#[derive(Clone)]
pub struct BrokerMetrics {
    /// Open network connections.
    pub connections: IntGauge,
    /// CONNECT outcomes by reason code name.
    pub connects: IntCounterVec,
    /// Connections refused at accept because of `max_connections`.
    pub connections_refused: IntCounter,
    /// Failed `accept()` calls, usually for want of file descriptors.
    pub accept_errors: IntCounter,
    /// Turns a connection ended with work left, its budget spent.
    pub turns_yielded: IntCounter,
    /// Times a busy connection found every lane taken (`runtime.busy_lanes`).
    pub lane_waits: IntCounter,
    /// Sessions held (connected or not).
    pub sessions: IntGauge,
    /// Subscription tree entries.
    pub subscriptions: IntGauge,
    /// Retained messages held.
    pub retained: IntGauge,
    /// Packets received, by type.
    pub packets_in: PacketCounters,
    /// Packets sent, by type.
    pub packets_out: PacketCounters,
    /// PUBLISH messages accepted from clients.
    pub messages_in: IntCounter,
    /// PUBLISH messages sent to clients.
    pub messages_out: IntCounter,
    /// Messages dropped, by reason.
    pub messages_dropped: IntCounterVec,
    /// Connections closed for a protocol violation, by reason code name.
    pub protocol_errors: IntCounterVec,
    /// Connections the broker closed for a limit (write timeout, keep
    /// alive), by reason.
    pub disconnects: IntCounterVec,
    /// Login attempts made to wait after earlier failures.
    pub logins_delayed: IntCounter,
    /// Subscriptions refused, by reason.
    pub subscribe_refused: IntCounterVec,
    /// Connections closed at once for a listener limit, by limit.
    pub connections_limited: IntCounterVec,
    /// Duration of each CONNECT step.
    pub connect_step_seconds: HistogramVec,
    /// Its histograms, looked up once: index [`ConnectStep`] `as usize`.
    pub connect_steps: Vec<Histogram>,
    /// Handshakes slower than `diagnostics.slow_connect_ms`.
    pub slow_connects: IntCounter,
    /// Whole CONNECT handling duration.
    pub connect_seconds: Histogram,
    /// Messages written to the message store for persistent sessions.
    pub messages_stored: IntCounter,
    /// Time from a publish to its store write being on disk.
    pub store_write_seconds: Histogram,
    /// Failed writes to the message store.
    pub storage_errors: IntCounter,
    /// Messages queued for offline persistent sessions, held on disk.
    pub stored_backlog: IntGauge,
    /// Bytes read from clients (MQTT bytes, after TLS and WebSocket).
    pub bytes_in: IntCounter,
    /// Bytes written to clients (MQTT bytes, before TLS and WebSocket).
    pub bytes_out: IntCounter,
    /// Clients past CONNACK, connected now.
    pub clients_connected: IntGauge,
    /// Connections parked idle: nothing in flight, no buffer held.
    pub connections_idle: IntGauge,
    /// Logins that skipped argon2: verified recently with the same password.
    pub logins_cached: IntCounter,
    /// Logins remembered (`auth.verified_cache_max` at most).
    pub logins_remembered: IntGauge,
    /// The most clients connected at once since the start (`$SYS`).
    pub clients_maximum: Arc<AtomicI64>,
    /// TLS handshakes and WebSocket upgrades that failed, by listener and reason.
    pub handshake_failures: IntCounterVec,
    /// Seconds until each TLS listener's certificate expires.
    pub certificate_expiry: IntGaugeVec,
    /// Reloads asked for (SIGHUP).
    pub reloads: IntCounter,
    /// Files a reload could not use (the old settings stay), by what they hold.
    pub reload_failures: IntCounterVec,
}

impl BrokerMetrics {
    /// Counts a client past CONNACK.
    pub fn client_connected(&self) {
        self.clients_connected.inc();
        self.clients_maximum
            .fetch_max(self.clients_connected.get(), Ordering::Relaxed);
    }

    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let latency = exponential_buckets(0.000_05, 2.0, 16)?;
        let connect_step_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tidemq_connect_step_duration_seconds",
                "Duration of each step of CONNECT handling",
            )
            .buckets(latency.clone()),
            &["step"],
        )?;
        let connect_steps = ConnectStep::ALL
            .iter()
            .map(|step| connect_step_seconds.get_metric_with_label_values(&[step.label()]))
            .collect::<prometheus::Result<_>>()?;
        let metrics = Self {
            connections: IntGauge::new("tidemq_connections", "Open MQTT network connections")?,
            connects: IntCounterVec::new(
                Opts::new("tidemq_connects_total", "CONNECT outcomes by reason"),
                &["reason"],
            )?,
            connections_refused: IntCounter::new(
                "tidemq_connections_refused_total",
                "Connections refused because max_connections was reached",
            )?,
            turns_yielded: IntCounter::new(
                "tidemq_connection_turns_yielded_total",
                "Times a connection gave its worker to others with work left (its turn's budget spent)",
            )?,
            lane_waits: IntCounter::new(
                "tidemq_connection_lane_waits_total",
                "Times a busy publisher waited for a lane (runtime.busy_lanes) before handling more input",
            )?,
            sessions: IntGauge::new("tidemq_sessions", "Sessions held, connected or not")?,
            subscriptions: IntGauge::new("tidemq_subscriptions", "Subscription entries")?,
            retained: IntGauge::new("tidemq_retained_messages", "Retained messages held")?,
            packets_in: PacketCounters::new(IntCounterVec::new(
                Opts::new(
                    "tidemq_packets_received_total",
                    "MQTT packets received by type",
                ),
                &["type"],
            )?),
            packets_out: PacketCounters::new(IntCounterVec::new(
                Opts::new("tidemq_packets_sent_total", "MQTT packets sent by type"),
                &["type"],
            )?),
            messages_in: IntCounter::new(
                "tidemq_messages_received_total",
                "PUBLISH messages accepted from clients",
            )?,
            messages_out: IntCounter::new(
                "tidemq_messages_sent_total",
                "PUBLISH messages sent to clients",
            )?,
            messages_dropped: IntCounterVec::new(
                Opts::new(
                    "tidemq_messages_dropped_total",
                    "Messages dropped by reason",
                ),
                &["reason"],
            )?,
            protocol_errors: IntCounterVec::new(
                Opts::new(
                    "tidemq_protocol_errors_total",
                    "Connections closed for a protocol violation, by reason",
                ),
                &["reason"],
            )?,
            connections_limited: IntCounterVec::new(
                Opts::new(
                    "tidemq_connections_limited_total",
                    "Connections closed at once for a listener limit, by limit",
                ),
                &["reason"],
            )?,
            subscribe_refused: IntCounterVec::new(
                Opts::new(
                    "tidemq_subscribe_refused_total",
                    "Subscriptions refused, by reason",
                ),
                &["reason"],
            )?,
            logins_delayed: IntCounter::new(
                "tidemq_logins_delayed_total",
                "Login attempts made to wait after failed ones from the same address or user name",
            )?,
            disconnects: IntCounterVec::new(
                Opts::new(
                    "tidemq_disconnects_total",
                    "Connections the broker closed for a limit, by reason",
                ),
                &["reason"],
            )?,
            connect_step_seconds,
            connect_steps,
            accept_errors: IntCounter::new(
                "tidemq_accept_errors_total",
                "Failed accepts, usually the open-file limit: the connection waits in the listen backlog (logged at WARN once a second at most)",
            )?,
            slow_connects: IntCounter::new(
                "tidemq_slow_connects_total",
                "Handshakes slower than diagnostics.slow_connect_ms (logged at WARN once a second at most)",
            )?,
            connect_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tidemq_connect_duration_seconds",
                    "Duration of CONNECT handling, from the first byte to CONNACK",
                )
                .buckets(latency.clone()),
            )?,
            messages_stored: IntCounter::new(
                "tidemq_messages_stored_total",
                "Messages written to the message store for persistent sessions",
            )?,
            store_write_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tidemq_store_write_duration_seconds",
                    "Time from a publish to its message-store write being on disk",
                )
                .buckets(latency),
            )?,
            storage_errors: IntCounter::new(
                "tidemq_storage_errors_total",
                "Failed writes to the message store",
            )?,
            stored_backlog: IntGauge::new(
                "tidemq_stored_backlog_messages",
                "Messages persistent sessions still have to receive (on disk), as of the last trim",
            )?,
            bytes_in: IntCounter::new(
                "tidemq_bytes_received_total",
                "MQTT bytes read from clients",
            )?,
            bytes_out: IntCounter::new("tidemq_bytes_sent_total", "MQTT bytes written to clients")?,
            clients_connected: IntGauge::new(
                "tidemq_clients_connected",
                "Clients connected (past CONNACK)",
            )?,
            connections_idle: IntGauge::new(
                "tidemq_connections_idle",
                "Connections parked with nothing in flight and no buffers (they wait in the smallest state)",
            )?,
            logins_cached: IntCounter::new(
                "tidemq_logins_cached_total",
                "Logins that skipped argon2: the same user name and password were verified within auth.verified_cache_secs",
            )?,
            logins_remembered: IntGauge::new(
                "tidemq_logins_remembered",
                "Verified logins remembered (auth.verified_cache_max at most; expired ones until pruned)",
            )?,
            clients_maximum: Arc::default(),
            handshake_failures: IntCounterVec::new(
                Opts::new(
                    "tidemq_handshake_failures_total",
                    "TLS handshakes and WebSocket upgrades that failed, by listener and reason",
                ),
                &["listener", "reason"],
            )?,
            certificate_expiry: IntGaugeVec::new(
                Opts::new(
                    "tidemq_tls_certificate_expiry_seconds",
                    "Seconds until the listener's TLS certificate expires (negative: expired)",
                ),
                &["listener"],
            )?,
            reloads: IntCounter::new("tidemq_reloads_total", "Reloads asked for (SIGHUP)")?,
            reload_failures: IntCounterVec::new(
                Opts::new(
                    "tidemq_reload_failures_total",
                    "Files a reload could not use (the old settings stay), by what they hold",
                ),
                &["what"],
            )?,
        };
        registry.register(Box::new(metrics.connections.clone()))?;
        registry.register(Box::new(metrics.connects.clone()))?;
        registry.register(Box::new(metrics.connections_refused.clone()))?;
        registry.register(Box::new(metrics.turns_yielded.clone()))?;
        registry.register(Box::new(metrics.lane_waits.clone()))?;
        registry.register(Box::new(metrics.sessions.clone()))?;
        registry.register(Box::new(metrics.subscriptions.clone()))?;
        registry.register(Box::new(metrics.retained.clone()))?;
        registry.register(Box::new(metrics.packets_in.vec.clone()))?;
        registry.register(Box::new(metrics.packets_out.vec.clone()))?;
        registry.register(Box::new(metrics.messages_in.clone()))?;
        registry.register(Box::new(metrics.messages_out.clone()))?;
        registry.register(Box::new(metrics.messages_dropped.clone()))?;
        registry.register(Box::new(metrics.protocol_errors.clone()))?;
        registry.register(Box::new(metrics.disconnects.clone()))?;
        registry.register(Box::new(metrics.logins_delayed.clone()))?;
        registry.register(Box::new(metrics.subscribe_refused.clone()))?;
        registry.register(Box::new(metrics.connections_limited.clone()))?;
        registry.register(Box::new(metrics.connect_step_seconds.clone()))?;
        registry.register(Box::new(metrics.connect_seconds.clone()))?;
        registry.register(Box::new(metrics.slow_connects.clone()))?;
        registry.register(Box::new(metrics.accept_errors.clone()))?;
        registry.register(Box::new(metrics.messages_stored.clone()))?;
        registry.register(Box::new(metrics.store_write_seconds.clone()))?;
        registry.register(Box::new(metrics.storage_errors.clone()))?;
        registry.register(Box::new(metrics.stored_backlog.clone()))?;
        registry.register(Box::new(metrics.bytes_in.clone()))?;
        registry.register(Box::new(metrics.bytes_out.clone()))?;
        registry.register(Box::new(metrics.clients_connected.clone()))?;
        registry.register(Box::new(metrics.connections_idle.clone()))?;
        registry.register(Box::new(metrics.logins_cached.clone()))?;
        registry.register(Box::new(metrics.logins_remembered.clone()))?;
        registry.register(Box::new(metrics.handshake_failures.clone()))?;
        registry.register(Box::new(metrics.certificate_expiry.clone()))?;
        registry.register(Box::new(metrics.reloads.clone()))?;
        registry.register(Box::new(metrics.reload_failures.clone()))?;
        Ok(metrics)
    }
}

/// Packets by type: the counter of each type looked up once, not per
/// packet (a label lookup hashes the label value every time).
#[derive(Clone)]
pub struct PacketCounters {
    vec: IntCounterVec,
    /// By packet type number, from 1 (CONNECT) at index 0.
    by_type: [IntCounter; 15],
}

impl PacketCounters {
    fn new(vec: IntCounterVec) -> Self {
        let by_type = std::array::from_fn(|i| vec.with_label_values(&[PACKET_TYPE_NAMES[i + 1]]));
        Self { vec, by_type }
    }

    /// Counts one packet.
    pub fn count(&self, packet: &Packet) {
        let index = usize::from(packet.type_number()).wrapping_sub(1);
        if let Some(counter) = self.by_type.get(index) {
            counter.inc();
        }
    }

    /// Packets of every type counted so far.
    pub fn total(&self) -> u64 {
        self.by_type.iter().map(IntCounter::get).sum()
    }

    /// The counter of one packet type, by its name (`"CONNACK"`).
    pub fn of(&self, name: &str) -> Option<&IntCounter> {
        let index = PACKET_TYPE_NAMES[1..].iter().position(|t| *t == name)?;
        self.by_type.get(index)
    }
}

#[cfg(test)]
mod tests {
    use tidemq_proto::mqtt::{PACKET_TYPE_NAMES, Packet};

    use super::BrokerMetrics;

    #[test]
    fn each_packet_type_counts_under_its_own_name() {
        let registry = prometheus::Registry::new();
        let metrics = BrokerMetrics::register(&registry).expect("metrics");
        metrics.packets_in.count(&Packet::PingReq);
        metrics.packets_in.count(&Packet::PingReq);
        for name in &PACKET_TYPE_NAMES[1..] {
            let expected = if *name == Packet::PingReq.name() {
                2
            } else {
                0
            };
            let counted = metrics.packets_in.vec.with_label_values(&[name]).get();
            assert_eq!(counted, expected, "{name}");
        }
        let reserved = registry
            .gather()
            .iter()
            .flat_map(|family| family.get_metric())
            .flat_map(|metric| metric.get_label())
            .any(|label| label.value() == PACKET_TYPE_NAMES[0]);
        assert!(!reserved, "no series for the reserved type");
    }
}
