//! # tidemq-broker
//!
//! The MQTT 3.1, 3.1.1 and 5.0 broker on tokio, the [`Node`] that runs it
//! together with the meta service and the HTTP endpoint, and the `tidemq`
//! binary that runs a node.
//!
//! ## Layout
//!
//! | module | what it holds |
//! |---|---|
//! | `node` | [`Node::start`]: the runtimes, the meta service, the broker and the HTTP endpoint of one node |
//! | `http` | `GET /metrics` and `GET /health` |
//! | `broker` | [`Broker::start`]: shared state, the listeners, reload, shutdown |
//! | `transport` | listeners and their byte streams: TCP, TLS (rustls), WebSocket, WebSocket over TLS |
//! | `admission` | which accepted connections are served: count, per-address and rate limits |
//! | `connection` | one task per client: CONNECT handshake, the working loop (a `select!`), the idle wait, packet handlers, close |
//! | `session` | sessions, their queues and inflight windows, the flat-keyed registry |
//! | `durable` | persistent sessions, their messages and retained messages in the storage engine |
//! | `router` | subscription matching, shared subscriptions, retained messages |
//! | `topic_tree` | the tries behind the router |
//! | `auth` | password file (argon2), logins verified recently, ACL rules |
//! | `sys` | the `$SYS/broker/...` topics |
//! | `config` | TOML + `TIDEMQ_` environment configuration of the whole node |
//! | `metrics` | Prometheus metrics |
//!
//! ## Concurrency
//!
//! Hot configuration and credentials sit in `ArcSwap`s (one atomic load per
//! use, never a lock). Sessions live in a `DashMap` keyed by the flat string
//! `{tenant}/{client_id}` with a separate tenant index. Subscriptions and
//! retained messages sit in tries behind std `RwLock`s that are never held
//! across an `.await`. No async `RwLock` is on the connect path.
//!
//! ## Examples
//!
//! A whole node, as the `tidemq` binary runs it (blocking calls: the node
//! owns its runtimes):
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = tidemq_broker::Config::default();
//! config.data_dir = "/tmp/tidemq-example".into();
//! let node = tidemq_broker::Node::start(config)?;
//! println!("MQTT on {}, metrics on http://{}/metrics", node.mqtt_addr(), node.http_addr());
//! node.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! The broker alone, on the caller's runtime:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = prometheus::Registry::new();
//! let broker = tidemq_broker::Broker::start(tidemq_broker::Config::default(), &registry).await?;
//! println!("MQTT on {}", broker.local_addr());
//! broker.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod admission;
mod auth;
mod broker;
mod cluster;
mod config;
mod connection;
mod delivery;
mod durable;
mod http;
mod log_every;
mod message;
mod metrics;
mod node;
mod restore;
mod router;
mod session;
mod sys;
mod topic_tree;
mod transport;

pub use auth::{AclRules, AuthError, PasswordFile};
pub use broker::{AuthState, Broker, BrokerError};
pub use config::{CertificateIdentity, Config, ConfigError, ListenerConfig, ListenerKind};
pub use durable::{DurableConfig, DurableError, DurableStore, SessionCatalog};
pub use node::{Node, NodeError};
pub use transport::WsStream;
pub use transport::tls::TlsError;
