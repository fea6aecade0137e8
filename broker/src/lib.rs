//! # tidemq-broker
//!
//! The MQTT 3.1, 3.1.1 and 5.0 broker on tokio, and the `tidemq` binary that
//! runs a node.
//!
//! ## Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`broker`] | [`Broker::start`]: shared state, the listener, shutdown |
//! | `connection` | one task per client: CONNECT handshake, the `select!` loop, packet handlers, close |
//! | [`session`] | sessions, their queues and inflight windows, the flat-keyed registry |
//! | [`router`] | subscription matching, shared subscriptions, retained messages |
//! | [`topic_tree`] | the tries behind the router |
//! | [`auth`] | password file (argon2) and ACL rules |
//! | [`config`] | TOML + `TIDEMQ_` environment configuration |
//! | [`metrics`] | Prometheus metrics |
//!
//! ## Concurrency
//!
//! Hot configuration and credentials sit in `ArcSwap`s (one atomic load per
//! use, never a lock). Sessions live in a `DashMap` keyed by the flat string
//! `{tenant}/{client_id}` with a separate tenant index. Subscriptions and
//! retained messages sit in tries behind std `RwLock`s that are never held
//! across an `.await`. No async `RwLock` is on the connect path.
//!
//! ## Example
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

pub mod auth;
pub mod broker;
pub mod config;
mod connection;
pub mod message;
pub mod metrics;
pub mod router;
pub mod session;
pub mod topic_tree;

pub use broker::{Broker, BrokerError};
pub use config::Config;
