//! Node configuration (the broker, the in-process meta service, the
//! runtimes and the HTTP endpoint): a TOML file, `TIDEMQ_`-prefixed
//! environment overrides, then command-line flags, in that order of
//! precedence.
//!
//! Every key and its default is listed, with comments, in `config/tidemq.toml`.
//! An environment variable names a key by its path with `__` between
//! sections: `TIDEMQ_LISTENER__BIND=0.0.0.0:1883`,
//! `TIDEMQ_MQTT__MAX_PACKET_SIZE=65536`, `TIDEMQ_META__GRPC_ADDR=127.0.0.1:1229`,
//! `TIDEMQ_DATA_DIR=/var/lib/tidemq`. Values are parsed as TOML (numbers,
//! booleans, arrays such as `TIDEMQ_META__JOIN='["10.0.0.1:1228"]'`) and fall
//! back to plain strings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod cluster;
mod listener;
mod meta;
pub use cluster::ClusterConfig;
pub use listener::{CertificateIdentity, ListenerConfig, ListenerKind};
pub use meta::MetaServiceConfig;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file or an override is not valid TOML for this schema.
    #[error("invalid configuration{}: {message}", origin.as_deref().map(|o| format!(" in {o}")).unwrap_or_default())]
    Invalid {
        /// File or environment variable the error came from.
        origin: Option<String>,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration of a node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Root of the node's data: the meta service keeps its RocksDB and
    /// snapshots in `{data_dir}/meta`.
    pub data_dir: PathBuf,
    /// The first MQTT listener (by default plain TCP on 127.0.0.1:1883).
    pub listener: ListenerConfig,
    /// Further listeners (`[[listeners]]`), each with its own transport,
    /// address, tenant, limits and authentication settings.
    pub listeners: Vec<ListenerConfig>,
    /// Protocol limits and features.
    pub mqtt: MqttConfig,
    /// Session and queue limits.
    pub session: SessionConfig,
    /// Authentication and authorization.
    pub auth: AuthConfig,
    /// Logging and diagnostics.
    pub diagnostics: DiagnosticsConfig,
    /// Worker threads of the node's runtimes.
    pub runtime: RuntimeConfig,
    /// The in-process meta service.
    pub meta: MetaServiceConfig,
    /// The HTTP endpoint (`/metrics`, `/health`).
    pub http: HttpConfig,
    /// The message store of persistent sessions (`{data_dir}/messages`).
    pub storage: StorageConfig,
    /// Routing between the nodes of a cluster.
    pub cluster: ClusterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            listener: ListenerConfig::default(),
            listeners: Vec::new(),
            mqtt: MqttConfig::default(),
            session: SessionConfig::default(),
            auth: AuthConfig::default(),
            diagnostics: DiagnosticsConfig::default(),
            runtime: RuntimeConfig::default(),
            meta: MetaServiceConfig::default(),
            http: HttpConfig::default(),
            storage: StorageConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// `[mqtt]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Largest packet accepted (and announced in 5.0 CONNACK), in bytes.
    pub max_packet_size: u32,
    /// QoS 1/2 publications a client may have unacknowledged towards the
    /// broker (5.0 receive maximum).
    pub receive_maximum: u16,
    /// Outbound QoS 1/2 publications in flight per client when the client
    /// announces no receive maximum (3.1.1).
    pub max_inflight: u16,
    /// Highest inbound topic alias accepted (5.0); 0 disables aliases.
    pub topic_alias_maximum: u16,
    /// Keep alive forced on clients (5.0 server keep alive); 0 keeps the client's.
    pub server_keep_alive: u16,
    /// Longest keep alive a client may use, in seconds; 0: no limit. A 5.0
    /// client asking for more (or for 0, no keep alive) is told this value
    /// in CONNACK (server keep alive); a 3.1/3.1.1 client, which cannot be
    /// told, is refused (CONNACK 0x02, identifier rejected, as Mosquitto does).
    pub max_keep_alive: u16,
    /// Seconds a client may leave the broker's writes unread (its socket
    /// buffer full) before it is disconnected.
    pub write_timeout_secs: u64,
    /// Topic filters one SUBSCRIBE may carry; the rest are refused (5.0
    /// 0x97, 3.1.1 0x80).
    pub max_subscribe_filters: usize,
    /// User properties one PUBLISH may carry (5.0); a message with more is
    /// not routed and its PUBACK/PUBREC says 0x97 (quota exceeded).
    pub max_user_properties: usize,
    /// Upper bound on the session expiry a client may ask for, in seconds
    /// (also what a 3.1.1 clean-session-0 client gets). An offline session
    /// holds its stored messages on disk until it expires.
    pub max_session_expiry_secs: u32,
    /// Topics with a retained message, at most.
    pub max_retained_messages: usize,
    /// Bytes the retained messages hold (topic, payload, properties), at
    /// most. A retained PUBLISH past either limit is not routed (5.0:
    /// PUBACK/PUBREC 0x97).
    pub max_retained_bytes: usize,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Seconds between publications of the `$SYS/broker/...` topics; 0: none.
    pub sys_interval: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 10,
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            max_inflight: 64,
            topic_alias_maximum: 64,
            server_keep_alive: 0,
            max_keep_alive: 0,
            write_timeout_secs: 30,
            max_subscribe_filters: 256,
            max_user_properties: 64,
            max_session_expiry_secs: 7 * 24 * 3600,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 1024 * 1024 * 1024,
            retain_available: true,
            sys_interval: 10,
        }
    }
}

impl MqttConfig {
    /// The bounds on retained messages.
    pub fn retain_limits(&self) -> crate::router::RetainLimits {
        crate::router::RetainLimits {
            max_messages: self.max_retained_messages,
            max_bytes: self.max_retained_bytes,
        }
    }

    /// The CONNECT timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs.max(1))
    }
}

/// `[session]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Messages queued per session (offline, or beyond the inflight window)
    /// before new ones are dropped.
    pub max_queued_messages: usize,
    /// Payload bytes queued per session before new messages are dropped.
    pub max_queued_bytes: usize,
    /// Queue QoS 0 messages for offline persistent sessions too.
    pub queue_qos0_offline: bool,
    /// Messages a persistent session may have stored (they are on disk;
    /// memory holds about 32 bytes for each one an offline session has).
    pub max_stored_messages: usize,
    /// Subscriptions one session may hold; a SUBSCRIBE adding more is
    /// refused for those filters (5.0 0x97, 3.1.1 0x80).
    pub max_subscriptions: usize,
    /// Stored messages older than this (seconds) are dropped from the
    /// sessions still waiting for them, so that their space can be given
    /// back; 0 keeps them until their sessions take them or expire.
    pub max_message_age_secs: u64,
    /// Sessions the node holds at once, connected or not; a CONNECT that
    /// would start one more is refused (5.0: 0x97, 3.1.1: 0x03).
    pub max_sessions: usize,
    /// Stored messages all sessions together may wait for (counted at each
    /// trim); at it, new messages are not stored for any of them.
    pub max_stored_messages_total: usize,
}

impl SessionConfig {
    /// `max_message_age_secs` as a duration; `None` when it is 0 (no limit).
    pub fn max_message_age(&self) -> Option<Duration> {
        (self.max_message_age_secs > 0).then(|| Duration::from_secs(self.max_message_age_secs))
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            queue_qos0_offline: false,
            max_stored_messages: 1_000_000,
            max_subscriptions: 10_000,
            max_message_age_secs: 7 * 24 * 3600,
            max_sessions: 1_000_000,
            max_stored_messages_total: 10_000_000,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// File of `username:argon2-hash` lines; when set, clients that send a
    /// user name must match it.
    pub password_file: Option<PathBuf>,
    /// ACL rules file; when unset everything is allowed.
    pub acl_file: Option<PathBuf>,
    /// What the ACL decides when no rule matches.
    pub acl_default_allow: bool,
    /// Whether a session belongs to the user name that created it: a
    /// CONNECT by another user with its client id is refused (5.0 0x87,
    /// 3.1.1 0x05) instead of taking it over. Sessions of anonymous
    /// clients belong to nobody.
    pub sessions_belong_to_their_user: bool,
    /// Password verifications (argon2) run at once, on threads of their
    /// own, never on the broker's workers.
    pub verify_threads: usize,
    /// Wait before the next login attempt from an address, or for a user
    /// name, after a failed one, in milliseconds; doubles with each further
    /// failure (forgotten after a quiet minute or a success).
    pub failure_delay_ms: u64,
    /// The longest such wait, in milliseconds.
    pub failure_delay_max_ms: u64,
    /// How long a login argon2 verified is remembered, in seconds: the
    /// same user name and password skip argon2 until then (0: never).
    pub verified_cache_secs: u64,
    /// Logins remembered at most; past it a new one is not remembered
    /// until older ones expire.
    pub verified_cache_max: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            password_file: None,
            acl_file: None,
            acl_default_allow: false,
            sessions_belong_to_their_user: true,
            verify_threads: 2,
            failure_delay_ms: 200,
            failure_delay_max_ms: 10_000,
            verified_cache_secs: 600,
            verified_cache_max: 100_000,
        }
    }
}

/// `[diagnostics]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DiagnosticsConfig {
    /// A CONNECT whose handling takes longer than this is logged at WARN
    /// with the time of each step.
    pub slow_connect_ms: u64,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        Self {
            slow_connect_ms: 50,
        }
    }
}

/// `[runtime]`: one tokio runtime per role, so that a busy role cannot
/// delay another's tasks (MQTT traffic never delays Raft heartbeats).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads of the `broker` runtime (MQTT connections).
    pub broker_workers: usize,
    /// Worker threads of the `meta-raft` runtime (every Raft group).
    pub meta_raft_workers: usize,
    /// Worker threads of the `meta-grpc` runtime (gRPC and HTTP serving).
    pub meta_grpc_workers: usize,
    /// How often the `runtime_*` gauges are sampled, in milliseconds.
    pub monitor_interval_ms: u64,
    /// Busy publishers (connections whose publishes lately outlasted a
    /// turn on a worker) handling their input at once; the others queue
    /// for a lane, so that calm clients are served first. Unset: half of
    /// `broker_workers` (at least one); 0: no lanes (busy connections only
    /// yield).
    pub busy_lanes: Option<usize>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            broker_workers: 2,
            meta_raft_workers: 1,
            meta_grpc_workers: 1,
            monitor_interval_ms: 1000,
            busy_lanes: None,
        }
    }
}

impl RuntimeConfig {
    /// `busy_lanes`, or half the broker's workers (at least one).
    pub fn busy_lanes(&self) -> usize {
        self.busy_lanes.unwrap_or((self.broker_workers / 2).max(1))
    }

    /// The sampling interval of the runtime monitor.
    pub fn monitor_interval(&self) -> Duration {
        Duration::from_millis(self.monitor_interval_ms)
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP endpoint serving `GET /metrics` and `GET /health`.
    pub bind: SocketAddr,
    /// File holding a token (16 or more printable characters) every request
    /// must carry as `authorization: Bearer ...`; unset: none is asked for.
    pub token_file: Option<PathBuf>,
    /// Serve a non-loopback `bind` without a token.
    pub allow_unauthenticated_on_public_address: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token_file: None,
            allow_unauthenticated_on_public_address: false,
        }
    }
}

impl HttpConfig {
    /// The token read from `token_file`, if one is set.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = read_secret(path)?;
        let token = text.trim();
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::Invalid {
                origin: Some(path.display().to_string()),
                message: "http.token_file: the token must be 16 or more printable characters"
                    .into(),
            });
        }
        Ok(Some(token.to_string()))
    }

    fn check_exposure(&self) -> Result<(), ConfigError> {
        check_guarded(
            self.bind,
            self.token_file.is_some() || self.allow_unauthenticated_on_public_address,
            "/metrics and /health",
            "set http.token_file, or set http.allow_unauthenticated_on_public_address = true",
        )
    }
}

/// Refuses to serve `what` on `addr` when it is not a loopback address and
/// nothing guards it; `fix` says how to.
fn check_guarded(
    addr: SocketAddr,
    guarded: bool,
    what: &str,
    fix: &str,
) -> Result<(), ConfigError> {
    if addr.ip().is_loopback() || guarded {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        origin: None,
        message: format!(
            "refusing to serve {what} unauthenticated on non-loopback address {addr}: {fix}"
        ),
    })
}

/// The text of a secret's file, read when the node starts.
fn read_secret(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// `[storage]`: where persistent sessions keep their messages.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Keep persistent sessions, their messages and retained messages on
    /// disk. When off, a restart loses them.
    pub enabled: bool,
    /// Message partitions (publishers are spread over them by client id).
    pub partitions: u32,
    /// io_uring threads of the storage engine.
    pub io_threads: usize,
    /// Pin the I/O threads to cores.
    pub pin_cores: bool,
    /// `"always"` (fsync before PUBACK, group-committed), `"never"`, or a
    /// sync interval in milliseconds (`100`: a crash loses up to 100 ms).
    pub sync: SyncSetting,
    /// Segment file size in bytes; space is given back a segment at a time.
    /// A message with its list of persistent recipients must fit in one.
    pub segment_bytes: u64,
    /// Zeros kept written past the end of each partition's active segment
    /// (0 = off): synced appends then write over existing blocks and their
    /// fdatasync commits nothing to the filesystem's journal.
    pub preallocate_bytes: u64,
    /// How often space no session needs any more is given back.
    pub trim_interval_ms: u64,
    /// Bytes of records waiting for the partition writers above which
    /// connections stop reading until the writers catch up.
    pub max_backlog_bytes: usize,
    /// Free space the message store leaves on its disk: below it, messages
    /// that must be stored are refused (5.0: PUBACK/PUBREC 0x97) until space
    /// is freed.
    pub min_free_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            partitions: 1,
            io_threads: 1,
            pin_cores: false,
            sync: SyncSetting::Named("always".into()),
            segment_bytes: 64 * 1024 * 1024,
            preallocate_bytes: 256 * 1024,
            trim_interval_ms: 5_000,
            max_backlog_bytes: 64 * 1024 * 1024,
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

impl StorageConfig {
    /// The sync policy `sync` names.
    pub fn sync_policy(&self) -> Result<tidemq_storage_engine::SyncPolicy, ConfigError> {
        use tidemq_storage_engine::SyncPolicy;
        match &self.sync {
            SyncSetting::Named(name) if name == "always" => Ok(SyncPolicy::Always),
            SyncSetting::Named(name) if name == "never" => Ok(SyncPolicy::Never),
            SyncSetting::Millis(ms) if *ms > 0 => {
                Ok(SyncPolicy::Interval(Duration::from_millis(*ms)))
            }
            other => Err(ConfigError::Invalid {
                origin: None,
                message: format!(
                    "storage.sync must be \"always\", \"never\" or milliseconds above 0, not {other:?}"
                ),
            }),
        }
    }
}

/// `storage.sync`: a policy name or a sync interval in milliseconds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SyncSetting {
    /// `"always"` or `"never"`.
    Named(String),
    /// Milliseconds between syncs.
    Millis(u64),
}

impl Config {
    /// Loads `path` (if given), then applies `TIDEMQ_*` variables from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut table, origin) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| ConfigError::Invalid {
                        origin: Some(path.display().to_string()),
                        message: e.to_string(),
                    })?;
                (table, Some(path.display().to_string()))
            }
            None => (toml::Table::new(), None),
        };
        let mut overridden = Vec::new();
        for (name, value) in env {
            let Some(key) = name.strip_prefix("TIDEMQ_") else {
                continue;
            };
            let keys: Vec<String> = key.split("__").map(|k| k.to_ascii_lowercase()).collect();
            if keys.iter().any(String::is_empty) {
                continue;
            }
            set_path(&mut table, &keys, parse_value(&value));
            overridden.push(name);
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let origin = match (&origin, overridden.is_empty()) {
                        (Some(file), true) => Some(file.clone()),
                        (file, false) => Some(format!(
                            "{}environment ({})",
                            file.as_ref()
                                .map(|f| format!("{f} or "))
                                .unwrap_or_default(),
                            overridden.join(", ")
                        )),
                        (None, true) => None,
                    };
                    ConfigError::Invalid {
                        origin,
                        message: e.to_string(),
                    }
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: &str| {
            Err(ConfigError::Invalid {
                origin: None,
                message: message.to_string(),
            })
        };
        for listener in self.all_listeners() {
            listener.validate()?;
        }
        let mut binds: Vec<SocketAddr> = self.all_listeners().map(|l| l.bind).collect();
        binds.sort();
        if binds.windows(2).any(|w| w[0] == w[1] && w[0].port() != 0) {
            return invalid("two listeners bind the same address");
        }
        self.storage.sync_policy()?;
        if self.storage.partitions == 0
            || self.storage.io_threads == 0
            || self.storage.segment_bytes < 4096
            || self.storage.trim_interval_ms == 0
        {
            return invalid(
                "storage.partitions, io_threads and trim_interval_ms must be at least 1, segment_bytes at least 4096",
            );
        }
        let c = &self.cluster;
        if c.link_queue_messages == 0 || c.link_batch_messages == 0 || c.link_batch_bytes == 0 {
            return invalid(
                "cluster.link_queue_messages, link_batch_messages and link_batch_bytes must be at least 1",
            );
        }
        if self.mqtt.max_packet_size < 64 {
            return invalid("mqtt.max_packet_size must be at least 64 bytes");
        }
        if self.mqtt.receive_maximum == 0 || self.mqtt.max_inflight == 0 {
            return invalid("mqtt.receive_maximum and mqtt.max_inflight must be at least 1");
        }
        let r = &self.runtime;
        if r.broker_workers == 0 || r.meta_raft_workers == 0 || r.meta_grpc_workers == 0 {
            return invalid("runtime.*_workers must be at least 1");
        }
        if r.monitor_interval_ms == 0 {
            return invalid("runtime.monitor_interval_ms must be at least 1");
        }
        let m = &self.meta;
        if m.node_id == 0 {
            return invalid("meta.node_id must not be 0");
        }
        let members = m.members()?;
        if !members.is_empty() && !members.iter().any(|(id, _)| *id == m.node_id) {
            return invalid("meta.peers must list this node (meta.node_id) too");
        }
        let [min, max] = m.election_timeout_ms;
        // openraft gets half of each bound (see MetaConfig::election_timeout),
        // and its minimum must exceed the heartbeat.
        if m.heartbeat_ms == 0 || min / 2 <= m.heartbeat_ms || max <= min {
            return invalid(
                "meta.election_timeout_ms must be [min, max] with 2 * heartbeat_ms < min < max",
            );
        }
        if m.batch_max_requests == 0 || m.batch_max_bytes == 0 || m.batch_max_inflight == 0 {
            return invalid("meta.batch_max_* must be at least 1");
        }
        Ok(())
    }

    /// Every listener: `[listener]` first, then `[[listeners]]` in order.
    pub fn all_listeners(&self) -> impl Iterator<Item = &ListenerConfig> {
        std::iter::once(&self.listener).chain(&self.listeners)
    }

    /// [`Config::all_listeners`], to change them.
    pub fn all_listeners_mut(&mut self) -> impl Iterator<Item = &mut ListenerConfig> {
        std::iter::once(&mut self.listener).chain(&mut self.listeners)
    }

    /// Refuses an anonymous listener on a non-loopback address unless the
    /// configuration explicitly allows it.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        let have_passwords = self.auth.password_file.is_some();
        for listener in self.all_listeners() {
            listener.check_exposure(have_passwords)?;
        }
        self.meta.check_exposure()?;
        self.http.check_exposure()
    }
}

fn parse_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) {
    let Some((last, parents)) = keys.split_last() else {
        return;
    };
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(next) => current = next,
            _ => return,
        }
    }
    current.insert(last.clone(), value);
}

#[cfg(test)]
mod tests;
