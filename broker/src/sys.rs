//! `$SYS/broker/...`: the broker's state as retained QoS 0 messages, in the
//! layout Mosquitto users know, published every `mqtt.sys_interval`
//! seconds.
//!
//! | topic | value |
//! |---|---|
//! | `version`, `uptime` | `tidemq 0.1.0`, `N seconds` |
//! | `clients/connected`, `disconnected`, `maximum`, `total` | clients past CONNACK, sessions without a connection, the most connected at once, sessions |
//! | `messages/received`, `messages/sent` | MQTT packets of any type |
//! | `publish/messages/received`, `sent`, `dropped` | PUBLISH messages |
//! | `bytes/received`, `bytes/sent` | MQTT bytes |
//! | `subscriptions/count`, `retained messages/count` | subscription entries, retained messages |
//! | `store/messages/count` | stored messages persistent sessions still have to receive |
//! | `load/{messages,publish,bytes}/{received,sent}/{1min,5min,15min}`, `load/publish/dropped/...`, `load/connections/...` | per-minute rates, averaged over 1, 5 and 15 minutes |
//!
//! Clients cannot publish to `$SYS` ([`is_sys`]). Without an ACL, `$SYS`
//! can be read on loopback listeners only; with one, the ACL decides as
//! for any topic. The retained copies live in memory only, apart from the
//! clients' retained messages (they count toward no limit and are not in
//! `retained messages/count`): they are rebuilt at the first tick after a
//! start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidemq_proto::mqtt::{PublishProperties, QoS};

use crate::broker::Shared;
use crate::message::Message;

/// Whether a topic name or filter is under `$SYS`.
pub(crate) fn is_sys(name: &str) -> bool {
    name == "$SYS" || name.starts_with("$SYS/")
}

/// Whether a subscription filter (shared or not) reads `$SYS`.
pub(crate) fn reads_sys(filter: &str) -> bool {
    match tidemq_proto::mqtt::parse_shared_filter(filter) {
        Ok(Some(shared)) => is_sys(shared.filter),
        _ => is_sys(filter),
    }
}

/// The averaging windows of the load topics.
const WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// A per-minute rate averaged exponentially over 1, 5 and 15 minutes, as
/// Unix load averages are.
struct Load {
    topic: &'static str,
    last: u64,
    averages: [f64; 3],
}

impl Load {
    fn new(topic: &'static str, now: u64) -> Self {
        Self {
            topic,
            last: now,
            averages: [0.0; 3],
        }
    }

    fn update(&mut self, now: u64, elapsed: f64) {
        let per_minute = now.saturating_sub(self.last) as f64 * 60.0 / elapsed;
        self.last = now;
        for (average, (_, window)) in self.averages.iter_mut().zip(WINDOWS) {
            let keep = (-elapsed / window).exp();
            *average = *average * keep + per_minute * (1.0 - keep);
        }
    }
}

/// The counters the load topics follow.
struct Counters {
    packets_in: u64,
    packets_out: u64,
    publish_in: u64,
    publish_out: u64,
    dropped: u64,
    bytes_in: u64,
    bytes_out: u64,
    connects: u64,
}

impl Counters {
    fn read(shared: &Shared) -> Self {
        let m = &shared.metrics;
        let connects = m.connects.with_label_values(&["success"]).get();
        Self {
            packets_in: m.packets_in.total(),
            packets_out: m.packets_out.total(),
            publish_in: m.messages_in.get(),
            publish_out: m.messages_out.get(),
            dropped: dropped(shared),
            bytes_in: m.bytes_in.get(),
            bytes_out: m.bytes_out.get(),
            connects,
        }
    }

    /// The values in the order of [`LOAD_TOPICS`].
    fn values(&self) -> [u64; 8] {
        [
            self.packets_in,
            self.packets_out,
            self.publish_in,
            self.publish_out,
            self.dropped,
            self.bytes_in,
            self.bytes_out,
            self.connects,
        ]
    }
}

const LOAD_TOPICS: [&str; 8] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
    "bytes/received",
    "bytes/sent",
    "connections",
];

fn dropped(shared: &Shared) -> u64 {
    use prometheus::core::Collector;
    shared
        .metrics
        .messages_dropped
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

/// Publishes the `$SYS` topics every `interval` until the broker shuts down.
pub(crate) async fn publish_loop(shared: Arc<Shared>, interval: Duration) {
    let started = Instant::now();
    let counters = Counters::read(&shared);
    let mut loads: Vec<Load> = LOAD_TOPICS
        .iter()
        .zip(counters.values())
        .map(|(topic, now)| Load::new(topic, now))
        .collect();
    let mut last = started;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        let elapsed = now.duration_since(last).as_secs_f64();
        last = now;
        let counters = Counters::read(&shared);
        if elapsed > 0.0 {
            for (load, value) in loads.iter_mut().zip(counters.values()) {
                load.update(value, elapsed);
            }
        }
        for (topic, value) in snapshot(&shared, &counters, now - started, &loads) {
            publish(&shared, topic, value);
        }
    }
}

/// Every topic and its value now.
fn snapshot(
    shared: &Shared,
    counters: &Counters,
    uptime: Duration,
    loads: &[Load],
) -> Vec<(String, String)> {
    let m = &shared.metrics;
    let connected = m.clients_connected.get();
    let sessions = shared.sessions.len() as i64;
    let maximum = m.clients_maximum.load(std::sync::atomic::Ordering::Relaxed);
    let mut out: Vec<(String, String)> = [
        ("version", format!("tidemq {}", env!("CARGO_PKG_VERSION"))),
        ("uptime", format!("{} seconds", uptime.as_secs())),
        ("clients/connected", connected.to_string()),
        (
            "clients/disconnected",
            (sessions - connected).max(0).to_string(),
        ),
        ("clients/maximum", maximum.to_string()),
        ("clients/total", sessions.max(connected).to_string()),
        ("messages/received", counters.packets_in.to_string()),
        ("messages/sent", counters.packets_out.to_string()),
        ("publish/messages/received", counters.publish_in.to_string()),
        ("publish/messages/sent", counters.publish_out.to_string()),
        ("publish/messages/dropped", counters.dropped.to_string()),
        ("bytes/received", counters.bytes_in.to_string()),
        ("bytes/sent", counters.bytes_out.to_string()),
        (
            "subscriptions/count",
            shared.router.subscription_count().to_string(),
        ),
        (
            "retained messages/count",
            shared.router.retained_count().to_string(),
        ),
        ("store/messages/count", m.stored_backlog.get().to_string()),
    ]
    .into_iter()
    .map(|(topic, value)| (format!("$SYS/broker/{topic}"), value))
    .collect();
    for load in loads {
        for ((window, _), average) in WINDOWS.iter().zip(load.averages) {
            out.push((
                format!("$SYS/broker/load/{}/{window}", load.topic),
                format!("{average:.2}"),
            ));
        }
    }
    out
}

/// Retains `value` on `topic` (in memory, apart from the clients'
/// retained messages and their limits) and sends it to the current
/// subscribers.
fn publish(shared: &Arc<Shared>, topic: String, value: String) {
    let message = |retain| Message {
        topic: topic.clone(),
        payload: Bytes::from(value.clone()),
        qos: QoS::AtMostOnce,
        retain,
        properties: PublishProperties::default(),
        publisher: None,
        expires_at: None,
        id: None,
    };
    shared.router.retain_sys(&Arc::new(message(true)));
    // Routed unretained: the store keeps retained messages on disk, and a
    // `$SYS` value is stale after a restart anyway.
    crate::delivery::publish_detached(
        shared,
        &Arc::new(message(false)),
        crate::delivery::Scope::Local,
    );
}
