//! One whole TideMQ node: the broker, the meta service and the HTTP
//! endpoint, each on its own runtime, sharing one metrics registry.
//!
//! | runtime | threads | what runs on it |
//! |---|---|---|
//! | `broker` | `broker-{i}` | MQTT listener and connections |
//! | `meta-raft` | `meta-raft-{i}` | every meta Raft group, its batcher and replication |
//! | `meta-grpc` | `meta-grpc-{i}` | the meta gRPC server and the HTTP endpoint |
//!
//! plus the meta store's own threads (`meta-rocksdb-{i}`, `meta-raft-log`)
//! and the `runtime-monitor` thread sampling the three runtimes.
//!
//! Data lives under [`Config::data_dir`]:
//!
//! ```text
//! {data_dir}/meta/       the meta service: RocksDB of every Raft group, snapshots
//! {data_dir}/messages/   the message store (storage engine): persistent
//!                        sessions, their queued messages, retained messages
//! ```
//!
//! The message store's I/O runs on the storage engine's own io_uring
//! threads (`storage-io-{i}`), never on a tokio worker.
//!
//! [`Node::start`] and [`Node::shutdown`] block: the node owns its runtimes,
//! so call them from plain threads (`main`, a `#[test]`, `spawn_blocking`),
//! never from inside a tokio runtime.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tidemq_meta::channels::ChannelPool;
use tidemq_meta::runtime::{RuntimeMonitor, build_runtime};
use tidemq_meta::{MetaClient, MetaError, MetaNodeHandle, MetaRuntimes};
use tokio::runtime::Runtime;
use tracing::{info, warn};

use crate::broker::{Broker, BrokerError};
use crate::cluster::{ClusterParts, HandoffSettings};
use crate::config::{Config, ConfigError};
use crate::durable::{DurableConfig, DurableError, DurableStore, SessionCatalog};
use crate::http::{Endpoints, HttpServer};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid or unsafe.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A runtime or the runtime monitor could not be created.
    #[error("cannot create the runtimes: {0}")]
    Runtime(#[source] MetaError),
    /// The data directory could not be created.
    #[error("cannot create {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The meta service did not start.
    #[error("cannot start the meta service: {0}")]
    Meta(#[source] MetaError),
    /// The message store could not be opened.
    #[error("cannot open the message store: {0}")]
    Storage(#[source] DurableError),
    /// The broker did not start.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A metric could not be registered.
    #[error("cannot register metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// The HTTP endpoint could not bind.
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How long [`Node::shutdown`] waits for the meta service to stop.
const META_SHUTDOWN: Duration = Duration::from_secs(10);

/// The three runtimes of a node.
struct Runtimes {
    broker: Runtime,
    raft: Runtime,
    grpc: Runtime,
}

impl Runtimes {
    /// Stops every runtime, the busiest-facing first; tasks still running
    /// get a few seconds.
    fn shutdown(self) {
        let grace = Duration::from_secs(5);
        self.broker.shutdown_timeout(grace);
        self.grpc.shutdown_timeout(grace);
        self.raft.shutdown_timeout(grace);
    }
}

/// A running node. Stop it with [`Node::shutdown`]; dropping it stops the
/// runtimes abruptly (and panics inside an async context).
pub struct Node {
    registry: Registry,
    broker: Broker,
    meta: MetaNodeHandle,
    http: HttpServer,
    // Declared before the runtimes: dropped first, it stops sampling them.
    monitor: RuntimeMonitor,
    runtimes: Runtimes,
}

impl Node {
    /// Validates `config`, builds the runtimes, starts the meta service
    /// (bootstrapping a single-node cluster on first start), then the
    /// broker, then the HTTP endpoint. Blocks until all are serving; on an
    /// error, whatever had started is stopped again.
    pub fn start(config: Config) -> Result<Node, NodeError> {
        config.validate()?;
        config.check_exposure()?;
        let meta_dir = config.data_dir.join("meta");
        let meta_config = config.meta.to_meta_config(&meta_dir)?;
        let secret = meta_config.secret.clone();
        let http_token = config.http.token()?;
        std::fs::create_dir_all(&meta_dir).map_err(|source| NodeError::DataDir {
            path: meta_dir.clone(),
            source,
        })?;

        let r = &config.runtime;
        let runtimes = Runtimes {
            broker: build_runtime("broker", r.broker_workers).map_err(NodeError::Runtime)?,
            raft: build_runtime("meta-raft", r.meta_raft_workers).map_err(NodeError::Runtime)?,
            grpc: build_runtime("meta-grpc", r.meta_grpc_workers).map_err(NodeError::Runtime)?,
        };
        let registry = Registry::new();
        let http_unauthorized = prometheus::IntCounter::new(
            "tidemq_http_unauthorized_total",
            "HTTP requests refused for want of the token of http.token_file",
        )
        .and_then(|counter| {
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        })
        .map_err(NodeError::Metrics)?;
        let monitor = RuntimeMonitor::start(
            &registry,
            r.monitor_interval(),
            [
                ("broker".to_string(), runtimes.broker.handle().clone()),
                ("meta-raft".to_string(), runtimes.raft.handle().clone()),
                ("meta-grpc".to_string(), runtimes.grpc.handle().clone()),
            ],
        )
        .map_err(NodeError::Runtime)?;

        // Meta first: the broker will keep its sessions there. Its gRPC
        // server carries the links between the brokers too.
        let node_id = config.meta.node_id;
        let (cluster_parts, link_service) =
            match ClusterParts::new(node_id, &config.cluster, &registry) {
                Ok(parts) => parts,
                Err(e) => {
                    drop(monitor);
                    runtimes.shutdown();
                    return Err(NodeError::Metrics(e));
                }
            };
        let meta_runtimes = MetaRuntimes {
            raft: runtimes.raft.handle().clone(),
            grpc: runtimes.grpc.handle().clone(),
        };
        let meta = match runtimes.grpc.block_on(MetaNodeHandle::start_serving(
            meta_config,
            &registry,
            meta_runtimes,
            Some(link_service),
        )) {
            Ok(meta) => meta,
            Err(e) => {
                drop(monitor);
                runtimes.shutdown();
                return Err(NodeError::Meta(e));
            }
        };

        let http_bind = config.http.bind;
        // One client of the local meta server for the route keeper and the
        // session catalog.
        let started = MetaClient::with_secret(
            [meta.local_addr().to_string()],
            config.meta.client_timeout(),
            secret.clone(),
        )
        .map_err(NodeError::Meta)
        .and_then(|client| {
            // What a peer cannot be sent now waits in a hand-off log, when
            // the node stores anything at all.
            let handoff = match config.storage.enabled {
                true => {
                    let settings = handoff_settings(&config)?;
                    let opened = runtimes
                        .broker
                        .block_on(cluster_parts.open_handoff(&settings));
                    Some(opened.map_err(|e| NodeError::Storage(e.into()))?)
                }
                false => None,
            };
            let channels = ChannelPool::new(secret);
            let start = cluster_parts.start(&meta, client.clone(), channels, handoff);
            let cluster = runtimes.broker.block_on(start).map_err(NodeError::Meta)?;
            Ok((client, cluster))
        });
        let (client, cluster) = match started {
            Ok(started) => started,
            Err(e) => {
                runtimes.grpc.block_on(meta.shutdown());
                drop(monitor);
                runtimes.shutdown();
                return Err(e);
            }
        };
        let store = if config.storage.enabled {
            let durable = DurableConfig {
                dir: config.data_dir.join("messages"),
                partitions: config.storage.partitions,
                io_threads: config.storage.io_threads,
                pin_cores: config.storage.pin_cores,
                sync: config.storage.sync_policy()?,
                segment_bytes: config.storage.segment_bytes,
                preallocate_bytes: config.storage.preallocate_bytes,
                max_backlog_bytes: config.storage.max_backlog_bytes,
                min_free_bytes: config.storage.min_free_bytes,
                max_message_age: config.session.max_message_age(),
            };
            // Session changes are written through the meta service too.
            let catalog = SessionCatalog::Meta { client, node_id };
            match runtimes
                .broker
                .block_on(DurableStore::open(&durable, &registry))
            {
                Ok(opened) => Some((opened, catalog)),
                Err(e) => {
                    runtimes.grpc.block_on(meta.shutdown());
                    drop(monitor);
                    runtimes.shutdown();
                    return Err(NodeError::Storage(e));
                }
            }
        } else {
            None
        };
        let (store, catalog) = match store {
            Some((store, catalog)) => (Some(store), catalog),
            None => (None, SessionCatalog::Local),
        };
        // The broker's accept loop and connections are spawned on the
        // runtime it is started from.
        let started = runtimes.broker.block_on(Broker::start_in(
            config,
            &registry,
            store,
            catalog,
            Some(Arc::clone(&cluster)),
        ));
        let broker = match started {
            Ok(broker) => broker,
            Err(e) => {
                runtimes.grpc.block_on(meta.shutdown());
                drop(monitor);
                runtimes.shutdown();
                return Err(e.into());
            }
        };

        // HTTP is served on the meta-grpc runtime: a scrape encodes every
        // histogram of the node in one burst, and there it never sits between
        // an MQTT socket and a broker worker; that runtime already serves the
        // node's other request/response traffic, and Raft (on meta-raft) is
        // untouched either way.
        let endpoints = Endpoints {
            registry: registry.clone(),
            node_id,
            mqtt: broker.local_addr(),
            grpc: meta.local_addr(),
            rafts: Arc::clone(meta.rafts()),
            token: http_token,
            unauthorized: http_unauthorized,
            reloader: broker.reloader(),
            cluster: Some(cluster),
        };
        let http = match HttpServer::start(runtimes.grpc.handle(), http_bind, endpoints) {
            Ok(http) => http,
            Err(source) => {
                runtimes.broker.block_on(broker.shutdown());
                runtimes.grpc.block_on(meta.shutdown());
                drop(monitor);
                runtimes.shutdown();
                return Err(NodeError::Http {
                    addr: http_bind,
                    source,
                });
            }
        };
        info!(
            node_id,
            mqtt = %broker.local_addr(),
            grpc = %meta.local_addr(),
            http = %http.local_addr(),
            "node started"
        );
        Ok(Node {
            registry,
            broker,
            meta,
            http,
            monitor,
            runtimes,
        })
    }

    /// The bound MQTT address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.broker.local_addr()
    }

    /// The bound gRPC address of the meta service.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.meta.local_addr()
    }

    /// The bound address of the HTTP endpoint.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// The registry every part of the node registers its metrics in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The meta service.
    pub fn meta(&self) -> &MetaNodeHandle {
        &self.meta
    }

    /// Runs `future` to completion on the broker runtime, blocking the
    /// calling thread (the binary waits for its shutdown signal this way).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtimes.broker.block_on(future)
    }

    /// Stops the node in dependency order: the broker stops accepting and
    /// disconnects its clients (5.0: DISCONNECT 0x8B), the HTTP endpoint
    /// stops, the meta service shuts every Raft group down and closes its
    /// store (given 10 s: its gRPC server waits for clients to close their
    /// connections), then the runtimes stop.
    pub fn shutdown(self) {
        let Node {
            registry: _,
            broker,
            meta,
            http,
            monitor,
            runtimes,
        } = self;
        runtimes.broker.block_on(broker.shutdown());
        runtimes.grpc.block_on(http.shutdown());
        // The meta gRPC server drains gracefully: it waits for its clients
        // to close their connections, without a bound of its own. A client
        // that never does must not keep the node from exiting; the store is
        // crash-safe, so stopping its runtimes then is only less tidy.
        let stopped = runtimes
            .grpc
            .block_on(async { tokio::time::timeout(META_SHUTDOWN, meta.shutdown()).await });
        if stopped.is_err() {
            warn!(
                "meta service still stopping after {META_SHUTDOWN:?} (a gRPC client holding \
                 its connection open?); stopping its runtimes anyway"
            );
        }
        drop(monitor);
        runtimes.shutdown();
        info!("node stopped");
    }
}

/// Where and how the hand-off logs are kept: `{data_dir}/handoff`, synced
/// like the message store.
fn handoff_settings(config: &Config) -> Result<HandoffSettings, NodeError> {
    Ok(HandoffSettings {
        dir: config.data_dir.join("handoff"),
        sync: config.storage.sync_policy()?,
        segment_bytes: config.storage.segment_bytes,
        min_free_bytes: config.storage.min_free_bytes,
        max_bytes: config.cluster.handoff_max_bytes,
    })
}
