//! Broker configuration: a TOML file, `TIDEMQ_`-prefixed environment
//! overrides, then command-line flags, in that order of precedence.
//!
//! Every key and its default is listed, with comments, in `config/tidemq.toml`.
//! An environment variable names a key by its path with `__` between
//! sections: `TIDEMQ_LISTENER__BIND=0.0.0.0:1883`,
//! `TIDEMQ_MQTT__MAX_PACKET_SIZE=65536`. Values are parsed as TOML
//! (numbers, booleans) and fall back to plain strings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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

/// The whole configuration of a broker.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The MQTT listener.
    pub listener: ListenerConfig,
    /// Protocol limits and features.
    pub mqtt: MqttConfig,
    /// Session and queue limits.
    pub session: SessionConfig,
    /// Authentication and authorization.
    pub auth: AuthConfig,
    /// Logging and diagnostics.
    pub diagnostics: DiagnosticsConfig,
}

/// `[listener]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address the MQTT listener binds.
    pub bind: SocketAddr,
    /// Connections accepted at once; further ones are refused.
    pub max_connections: usize,
    /// Accept clients that send no user name.
    pub allow_anonymous: bool,
    /// Allow anonymous clients on a non-loopback address. Off by default so
    /// that exposing the port needs a deliberate choice.
    pub allow_anonymous_on_public_address: bool,
    /// Tenant of this listener's clients (sessions are keyed `{tenant}/{client_id}`).
    pub tenant: String,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_connections: 100_000,
            allow_anonymous: true,
            allow_anonymous_on_public_address: false,
            tenant: "default".into(),
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
    /// Upper bound on the session expiry a client may ask for, in seconds.
    pub max_session_expiry_secs: u32,
    /// Whether retained messages are supported.
    pub retain_available: bool,
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
            max_session_expiry_secs: u32::MAX,
            retain_available: true,
        }
    }
}

impl MqttConfig {
    /// The CONNECT timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
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
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            queue_qos0_offline: false,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// File of `username:argon2-hash` lines; when set, clients that send a
    /// user name must match it.
    pub password_file: Option<PathBuf>,
    /// ACL rules file; when unset everything is allowed.
    pub acl_file: Option<PathBuf>,
    /// What the ACL decides when no rule matches.
    pub acl_default_allow: bool,
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
        if self.listener.max_connections == 0 {
            return invalid("listener.max_connections must be at least 1");
        }
        if self.mqtt.max_packet_size < 64 {
            return invalid("mqtt.max_packet_size must be at least 64 bytes");
        }
        if self.mqtt.receive_maximum == 0 || self.mqtt.max_inflight == 0 {
            return invalid("mqtt.receive_maximum and mqtt.max_inflight must be at least 1");
        }
        if self.listener.tenant.is_empty() || self.listener.tenant.contains('/') {
            return invalid("listener.tenant must be non-empty and contain no '/'");
        }
        Ok(())
    }

    /// Refuses an anonymous listener on a non-loopback address unless the
    /// configuration explicitly allows it.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        let l = &self.listener;
        let anonymous = l.allow_anonymous || self.auth.password_file.is_none();
        if !l.bind.ip().is_loopback() && anonymous && !l.allow_anonymous_on_public_address {
            return Err(ConfigError::Invalid {
                origin: None,
                message: format!(
                    "refusing to accept anonymous clients on non-loopback address {}: set \
                     auth.password_file and listener.allow_anonymous = false, or set \
                     listener.allow_anonymous_on_public_address = true",
                    l.bind
                ),
            });
        }
        Ok(())
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
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_loopback_and_anonymous() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.listener.bind, SocketAddr::from(([127, 0, 0, 1], 1883)));
        assert!(c.listener.allow_anonymous);
        c.check_exposure().unwrap();
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "[mqtt]\nmax_packet_size = 4096\n[listener]\nbind = \"127.0.0.1:1999\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[("TIDEMQ_MQTT__MAX_PACKET_SIZE", "8192"), ("OTHER", "x")]),
        )
        .unwrap();
        assert_eq!(c.mqtt.max_packet_size, 8192);
        assert_eq!(c.listener.bind.port(), 1999);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let err = Config::load(None, env(&[("TIDEMQ_MQTT__NO_SUCH_KEY", "1")])).unwrap_err();
        assert!(
            err.to_string().contains("TIDEMQ_MQTT__NO_SUCH_KEY"),
            "{err}"
        );
        let err = Config::load(None, env(&[("TIDEMQ_MQTT__MAX_PACKET_SIZE", "big")])).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }));
    }

    #[test]
    fn example_file_lists_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tidemq.toml");
        let c = Config::load(Some(&path), env(&[])).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn anonymous_public_listener_is_refused() {
        let c = Config::load(None, env(&[("TIDEMQ_LISTENER__BIND", "0.0.0.0:1883")])).unwrap();
        assert!(c.check_exposure().is_err());
        let c = Config::load(
            None,
            env(&[
                ("TIDEMQ_LISTENER__BIND", "0.0.0.0:1883"),
                ("TIDEMQ_LISTENER__ALLOW_ANONYMOUS_ON_PUBLIC_ADDRESS", "true"),
            ]),
        )
        .unwrap();
        c.check_exposure().unwrap();
    }
}
