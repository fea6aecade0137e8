//! Command-line flags of `tidemq-bench mqtt conn|pub|sub|offline`.

use std::time::Duration;

use clap::Args;
use tidemq_proto::mqtt::{Protocol, QoS};

use super::client::SessionKind;
use super::target::{Target, Transport};
use crate::storage::Output;

/// Flags every MQTT load shares: where the broker is, how many clients,
/// how they connect and how results are printed.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Transport: tcp, tls, ws or wss.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// CA bundle (PEM) the broker's certificate is checked against (tls, wss).
    #[arg(long)]
    pub cafile: Option<std::path::PathBuf>,
    /// HTTP path of the WebSocket endpoint (ws, wss).
    #[arg(long, default_value = "/mqtt")]
    pub ws_path: String,
    /// Connect from this many loopback addresses in turn (127.0.0.1 up):
    /// one address holds ~28,000 connections to one port.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub source_ips: u8,
    /// Number of clients (connections, publishers or subscribers).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// CONNECT handshakes in flight at once while clients connect.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// MQTT protocol level: 4 (3.1.1) or 5 (5.0).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub mqtt_version: u8,
    /// Client ids are `{prefix}-{c|p|s|o}-{index}`; give each concurrent
    /// process its own prefix (default: `b` and the process id).
    #[arg(long)]
    pub client_prefix: Option<String>,
    /// User name to log in with; `%c` stands for the client id (one user
    /// per client). Needs --password.
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    /// Password to log in with.
    #[arg(long, requires = "username")]
    pub password: Option<String>,
    /// Timeout for a connect, a SUBACK, and a PUBACK/PUBCOMP (milliseconds).
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Output format: per-second lines and the final report.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl CommonArgs {
    /// The protocol level to speak.
    pub fn protocol(&self) -> Protocol {
        if self.mqtt_version == 5 {
            Protocol::V5
        } else {
            Protocol::V3_1_1
        }
    }

    /// The connect and acknowledgement timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// `--client-prefix`, or `b` and the process id.
    pub fn prefix(&self) -> String {
        match &self.client_prefix {
            Some(prefix) => prefix.clone(),
            None => format!("b{}", std::process::id()),
        }
    }

    /// The client id of client `index` in role `role` (`c`, `p`, `s` or
    /// `o` for an offline session).
    pub fn client_id(&self, role: char, index: usize) -> String {
        format!("{}-{role}-{index}", self.prefix())
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Where and how to connect.
    pub fn target(&self) -> anyhow::Result<Target> {
        let target = Target::new(
            &self.host,
            self.port,
            self.transport,
            self.cafile.as_deref(),
            &self.ws_path,
        )?
        .with_loopback_sources(self.source_ips);
        Ok(match (&self.username, &self.password) {
            (Some(username), Some(password)) => target.with_login(username.clone(), password),
            _ => target,
        })
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.count > 0 && self.concurrency > 0,
            "--count and --concurrency must be above zero"
        );
        Ok(())
    }
}

/// Flags of `tidemq-bench mqtt conn`.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Keep every connection open this long once all are connected (they
    /// send nothing: keep alive 0).
    #[arg(long, default_value_t = 0)]
    pub hold_secs: u64,
    /// Each client subscribes to this filter (QoS 0; `%i` is replaced by
    /// its index) once connected.
    #[arg(long)]
    pub subscribe: Option<String>,
    /// Persistent sessions (clean session 0; 5.0: a session expiry): each
    /// CONNECT creates or resumes a session the broker keeps.
    #[arg(long)]
    pub persistent: bool,
    /// The broker's process id: its resident memory (VmRSS) is read before
    /// the connections open and while they are held, and the report gives
    /// the bytes per held connection.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// With `--broker-pid`: how long the broker settles, every connection
    /// held, before its memory is read. Allocators give back the pages
    /// freed after the connect burst over seconds (jemalloc: ~10 s), so a
    /// short settle reads part of the burst too.
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
}

impl ConnArgs {
    /// Connections only: none held longer, no subscription, no memory read.
    pub fn new(common: CommonArgs) -> ConnArgs {
        ConnArgs {
            common,
            hold_secs: 0,
            subscribe: None,
            persistent: false,
            broker_pid: None,
            settle_secs: 2,
        }
    }
}

/// Flags of `tidemq-bench mqtt pub`.
#[derive(Debug, Clone, Args)]
pub struct PubArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Topic of publisher i; `%i` is replaced by i.
    #[arg(long, default_value = "bench/%i")]
    pub topic: String,
    /// QoS of the publishes.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes per message (at least 8: the first 8 hold the send time).
    #[arg(long, default_value_t = 64)]
    pub payload_size: usize,
    /// How long to publish.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// QoS 0: messages per second per publisher.
    #[arg(long, default_value_t = 1000)]
    pub rate_per_client: u64,
    /// QoS 1/2: unacknowledged messages per publisher.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Publish with the retain flag (each publisher replaces its topic's
    /// retained message).
    #[arg(long)]
    pub retain: bool,
}

impl PubArgs {
    /// The QoS as the codec's type.
    pub fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or_default()
    }
}

/// Flags of `tidemq-bench mqtt sub`.
#[derive(Debug, Clone, Args)]
pub struct SubArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Topic filter of subscriber i; `%i` is replaced by i.
    #[arg(long, default_value = "bench/%i")]
    pub topic: String,
    /// Maximum QoS of the subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Stop after this long (counted from when every subscription is acknowledged).
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Stop once this many messages arrived, over all subscribers (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub expect: u64,
    /// Stop once no message arrived for this long after the first one (0: never).
    #[arg(long, default_value_t = 0)]
    pub idle_secs: u64,
    /// Filters each subscriber subscribes to, one SUBSCRIBE after the other:
    /// the first is `--topic`, the others `{topic}/f{j}`. The SUBACK rate
    /// and latency go to stderr (`subscribed:`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub filters_per_client: u32,
    /// Persistent sessions: clean session 0 (3.1.1) or a session expiry of
    /// 3600 s (5.0), so that the broker stores their QoS 1/2 messages. The
    /// sessions outlive the run.
    #[arg(long)]
    pub persistent: bool,
}

impl SubArgs {
    /// The QoS as the codec's type.
    pub fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or_default()
    }

    /// The kind of session the subscribers ask for.
    pub fn session(&self) -> SessionKind {
        if self.persistent {
            SessionKind::Persistent
        } else {
            SessionKind::Clean
        }
    }
}

/// Flags of `tidemq-bench mqtt offline`. The common `--count` is spelled
/// `--sessions` here; the publishers are counted by `--publishers`.
#[derive(Debug, Clone, Args)]
#[command(mut_arg("count", |arg| arg
    .long("sessions")
    .value_name("SESSIONS")
    .help("Persistent sessions: each subscribes to its own topic, then disconnects")))]
pub struct OfflineArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// QoS 1 messages published to each session's topic.
    #[arg(long, default_value_t = 10)]
    pub messages: u64,
    /// Payload bytes per message (at least 8: the first 8 hold the send time).
    #[arg(long, default_value_t = 64)]
    pub payload_size: usize,
    /// Publisher connections; the sessions' topics are spread over them.
    #[arg(long, default_value_t = 10)]
    pub publishers: usize,
    /// Unacknowledged messages per publisher.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Session i subscribes to `{prefix}/{i}` (default: `offline/` and the
    /// client prefix).
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Which phases to run: both, or one (`park`: leave the sessions
    /// offline; `publish`: publish to sessions parked before, say on
    /// another node of a cluster; `resume`: bring them back and read what
    /// was stored for them).
    #[arg(long, value_enum, default_value_t = Phases::Both)]
    pub phases: Phases,
}

/// `--phases` of `tidemq-bench mqtt offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phases {
    /// Park the sessions, then publish to them.
    Both,
    /// Only park the sessions.
    Park,
    /// Only publish to sessions parked before.
    Publish,
    /// Only bring sessions parked before back (to another node of a
    /// cluster, say: a takeover each) and read their `--messages`.
    Resume,
}

impl OfflineArgs {
    /// The topic of session `index`.
    pub fn topic(&self, index: usize) -> String {
        match &self.topic_prefix {
            Some(prefix) => format!("{prefix}/{index}"),
            None => format!("offline/{}/{index}", self.common.prefix()),
        }
    }

    /// Messages the run publishes: `--messages` to each session.
    pub fn expected(&self) -> u64 {
        self.messages.saturating_mul(self.common.count as u64)
    }
}

/// `topic` with `%i` replaced by `index`.
pub fn topic_for(topic: &str, index: usize) -> String {
    topic.replace("%i", &index.to_string())
}
