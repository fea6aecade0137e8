//! The broker: shared state, the listener, and its lifecycle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, info, warn};

use crate::admission::Admission;
use crate::auth::{AclRules, AuthError, Login, PasswordFile, Subscription};
use crate::config::{Config, ConfigError};
use crate::connection;
use crate::durable::{DurableError, DurableStore, Recovered, SessionCatalog};
use crate::metrics::BrokerMetrics;
use crate::router::Router;
use crate::session::SessionRegistry;

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The configuration is invalid or unsafe.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The password or ACL file could not be loaded.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The message store failed while restoring sessions.
    #[error("message store: {0}")]
    Durable(#[from] DurableError),
}

/// Credentials and access rules, swapped whole on reload.
#[derive(Default)]
pub struct AuthState {
    /// Verified user names and passwords.
    pub passwords: Option<PasswordFile>,
    /// Publish/subscribe rules.
    pub acl: Option<AclRules>,
}

impl AuthState {
    /// What the ACL makes of a subscription (granted when there is no ACL).
    pub fn subscription(
        &self,
        username: Option<&str>,
        client_id: &str,
        filter: &str,
    ) -> Subscription {
        self.acl.as_ref().map_or(Subscription::Granted, |acl| {
            acl.check_subscribe(username, client_id, filter)
        })
    }

    /// Whether a subscriber may receive a message published to `topic`.
    pub fn may_receive(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.check_receive(username, client_id, topic))
    }

    /// Loads the files the configuration names.
    pub fn load(config: &Config) -> Result<AuthState, AuthError> {
        Ok(AuthState {
            passwords: config
                .auth
                .password_file
                .as_deref()
                .map(PasswordFile::load)
                .transpose()?,
            acl: config
                .auth
                .acl_file
                .as_deref()
                .map(|path| AclRules::load(path, config.auth.acl_default_allow))
                .transpose()?,
        })
    }
}

/// State shared by the listener and every connection.
pub struct Shared {
    /// The configuration, read on every connect and publish; swapped whole.
    pub config: ArcSwap<Config>,
    /// Credentials and ACL; swapped whole.
    pub auth: ArcSwap<AuthState>,
    /// Password checks off the workers, and the record of failed logins.
    pub login: Login,
    /// Sessions by `{tenant}/{client_id}`.
    pub sessions: SessionRegistry,
    /// Subscriptions and retained messages.
    pub router: Router,
    /// Metrics.
    pub metrics: BrokerMetrics,
    /// The message store of persistent sessions, if storage is on.
    pub durable: Option<DurableStore>,
    /// Where persistent sessions are recorded besides the store.
    pub catalog: SessionCatalog,
    /// Flips to `true` when the broker shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// The lanes busy connections take turns through.
    pub(crate) lanes: connection::Lanes,
}

/// A running broker. Dropping it without [`Broker::shutdown`] leaves the
/// listener running until the runtime stops.
pub struct Broker {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Broker {
    /// Validates `config`, loads credentials, binds the listener and starts
    /// accepting connections on the current tokio runtime. Sessions live in
    /// memory only; see [`Broker::start_with_store`].
    pub async fn start(config: Config, registry: &Registry) -> Result<Broker, BrokerError> {
        Self::start_with_store(config, registry, None, SessionCatalog::Local).await
    }

    /// Like [`Broker::start`], keeping persistent sessions, their messages
    /// and retained messages in `store`, and recording persistent sessions
    /// in `catalog` too. What the store recovered is restored before the
    /// listener accepts anyone.
    pub async fn start_with_store(
        config: Config,
        registry: &Registry,
        store: Option<(DurableStore, Recovered)>,
        catalog: SessionCatalog,
    ) -> Result<Broker, BrokerError> {
        config.validate()?;
        config.check_exposure()?;
        let auth = AuthState::load(&config)?;
        let metrics = BrokerMetrics::register(registry)?;
        let addr = config.listener.bind;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| BrokerError::Bind { addr, source })?;
        let admission = Admission::new(
            config.listener.max_connections,
            config.listener.max_connections_per_address,
            config.listener.max_connect_rate,
        );
        let (stop, shutdown) = watch::channel(false);
        let trim_interval = Duration::from_millis(config.storage.trim_interval_ms);
        let (durable, recovered) = store.unzip();
        let login = Login::new(
            config.auth.verify_threads,
            Duration::from_millis(config.auth.failure_delay_ms),
            Duration::from_millis(config.auth.failure_delay_max_ms),
            metrics.logins_delayed.clone(),
        );
        let lanes = connection::Lanes::new(config.runtime.busy_lanes(), metrics.lane_waits.clone());
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            auth: ArcSwap::from_pointee(auth),
            login,
            sessions: SessionRegistry::default(),
            router: Router::default(),
            metrics,
            durable,
            catalog,
            shutdown,
            lanes,
        });
        if let Some(recovered) = recovered {
            crate::restore::restore(&shared, recovered).await?;
            tokio::spawn(crate::restore::trim_loop(
                Arc::clone(&shared),
                trim_interval,
            ));
        }
        info!(%local_addr, "MQTT listener started");
        let accept_task = tokio::spawn(accept_loop(Arc::clone(&shared), listener, admission));
        Ok(Broker {
            shared,
            local_addr,
            stop,
            accept_task,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// State shared with connections (for embedding and tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, sends every client DISCONNECT (5.0: 0x8B server
    /// shutting down), waits for the connections to close, then flushes
    /// and closes the message store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept_task.await;
        info!("MQTT listener stopped");
        if let Some(store) = &self.shared.durable {
            match store.close().await {
                Ok(()) => info!("message store closed"),
                Err(e) => warn!(error = %e, "closing the message store failed"),
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut admission: Admission) {
    let mut connections = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match admission.admit(peer.ip(), Instant::now()) {
                    Ok(admitted) => {
                        let shared = Arc::clone(&shared);
                        // Every event of the connection carries its address
                        // and, once CONNECT is read, its client id.
                        let span = tracing::info_span!(
                            "connection",
                            %peer,
                            client_id = tracing::field::Empty
                        );
                        connections.spawn(
                            async move {
                                connection::serve(shared, stream, peer).await;
                                drop(admitted);
                            }
                            .instrument(span),
                        );
                    }
                    Err(limit) => {
                        shared.metrics.connections_refused.inc();
                        shared
                            .metrics
                            .connections_limited
                            .with_label_values(&[limit.as_str()])
                            .inc();
                        tracing::debug!(%peer, limit = limit.as_str(), "refusing a connection");
                    }
                },
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    // Connections see the same shutdown signal and close themselves.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            remaining = connections.len(),
            "connections did not close in time"
        );
        connections.abort_all();
    }
}
