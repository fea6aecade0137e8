//! The broker: shared state, the listener, and its lifecycle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::Registry;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::auth::{AclRules, AuthError, Login, PasswordFile, Subscription, Verified};
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError};
use crate::connection;
use crate::durable::{DurableError, DurableStore, Recovered, SessionCatalog};
use crate::metrics::BrokerMetrics;
use crate::router::Router;
use crate::session::SessionRegistry;
use crate::transport::Listener;
use crate::transport::tls::TlsError;

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
    /// A listener's TLS certificate, key or CA bundle could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Credentials and access rules, swapped whole on reload.
#[derive(Default)]
pub struct AuthState {
    /// Verified user names and passwords.
    pub passwords: Option<PasswordFile>,
    /// Publish/subscribe rules.
    pub acl: Option<AclRules>,
    /// Logins of this password file verified recently.
    pub verified: Verified,
}

impl AuthState {
    /// What the ACL makes of a subscription. Without an ACL everything is
    /// granted, except `$SYS` to a client not `sys_readable` (one that did
    /// not come in on a loopback listener).
    pub fn subscription(
        &self,
        username: Option<&str>,
        client_id: &str,
        filter: &str,
        sys_readable: bool,
    ) -> Subscription {
        match &self.acl {
            Some(acl) => acl.check_subscribe(username, client_id, filter),
            None if !sys_readable && crate::sys::reads_sys(filter) => Subscription::Refused,
            None => Subscription::Granted,
        }
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
            verified: Verified::new(
                Duration::from_secs(config.auth.verified_cache_secs),
                config.auth.verified_cache_max,
            ),
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
    /// Routing to the other nodes, when the broker runs in a node.
    pub(crate) cluster: Option<Arc<Cluster>>,
}

/// A running broker. Dropping it without [`Broker::shutdown`] stops it
/// without waiting for its connections or closing its message store.
pub struct Broker {
    shared: Arc<Shared>,
    listeners: Vec<Arc<Listener>>,
    reloader: Arc<Reloader>,
    stop: watch::Sender<bool>,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
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
        Self::start_in(config, registry, store, catalog, None).await
    }

    /// Like [`Broker::start_with_store`], as one node of `cluster`: its
    /// subscriptions become routes and its publishes go to the other nodes
    /// too.
    pub(crate) async fn start_in(
        config: Config,
        registry: &Registry,
        store: Option<(DurableStore, Recovered)>,
        catalog: SessionCatalog,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<Broker, BrokerError> {
        config.validate()?;
        config.check_exposure()?;
        let auth = AuthState::load(&config)?;
        let metrics = BrokerMetrics::register(registry)?;
        let mut listeners = Vec::new();
        for listener in config.all_listeners() {
            listeners.push(Arc::new(Listener::bind(listener).await?));
        }
        let sys_interval = Duration::from_secs(config.mqtt.sys_interval);
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
            router: cluster.as_ref().map_or_else(Router::default, |c| {
                Router::in_cluster(c.local_filters(), c.retained_store())
            }),
            metrics,
            durable,
            catalog,
            shutdown,
            lanes,
            cluster,
        });
        shared
            .router
            .retained()
            .count_in(shared.metrics.retained.clone());
        if let Some(recovered) = recovered {
            crate::restore::restore(&shared, recovered).await?;
            tokio::spawn(crate::restore::trim_loop(
                Arc::clone(&shared),
                trim_interval,
            ));
        }
        if let Some(cluster) = &shared.cluster {
            let stale = shared.router.reconcile_routes();
            if stale > 0 {
                info!(
                    routes = stale,
                    "removing routes no subscription wants any more"
                );
            }
            cluster.serve(&shared);
        }
        if !sys_interval.is_zero() {
            tokio::spawn(crate::sys::publish_loop(Arc::clone(&shared), sys_interval));
        }
        let accept_tasks = listeners
            .iter()
            .map(|listener| tokio::spawn(Arc::clone(listener).accept_loop(Arc::clone(&shared))))
            .collect();
        let reloader = Arc::new(Reloader {
            shared: Arc::clone(&shared),
            listeners: listeners.clone(),
        });
        Ok(Broker {
            shared,
            listeners,
            reloader,
            stop,
            accept_tasks,
        })
    }

    /// The address the first listener (`[listener]`) is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners[0].local_addr()
    }

    /// Every listener's name and bound address, `[listener]` first.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|l| (l.label().to_string(), l.local_addr()))
            .collect()
    }

    /// Reads the password file, the ACL and every listener's TLS files
    /// again; see [`Reloader::reload`]. Returns whether all of it was taken.
    pub fn reload(&self) -> bool {
        self.reloader.reload().is_empty()
    }

    /// State shared with connections (for embedding and tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// What reloads the broker's files, for the HTTP endpoint.
    pub(crate) fn reloader(&self) -> Arc<Reloader> {
        Arc::clone(&self.reloader)
    }

    /// Tells the listeners and every connection to stop. Idle connections
    /// wait on their session's doorbell, not on the shutdown signal
    /// (`connection::idle`): ring them all. One that goes idle after this
    /// finds the ring kept for it.
    fn signal_stop(&self) {
        let _ = self.stop.send(true);
        self.shared
            .sessions
            .for_each(|session| session.doorbell.ring());
    }

    /// Stops accepting, sends every client DISCONNECT (5.0: 0x8B server
    /// shutting down), waits for the connections to close, then flushes
    /// and closes the message store (and a cluster node's hand-off logs).
    pub async fn shutdown(mut self) {
        self.signal_stop();
        for task in std::mem::take(&mut self.accept_tasks) {
            let _ = task.await;
        }
        if let Some(cluster) = &self.shared.cluster {
            cluster.close().await;
        }
        if let Some(store) = &self.shared.durable {
            match store.close().await {
                Ok(()) => info!("message store closed"),
                Err(e) => warn!(error = %e, "closing the message store failed"),
            }
        }
    }
}

impl Drop for Broker {
    /// Dropped without [`Broker::shutdown`]: its connections close as the
    /// shutdown signal tells them (the listeners already stop when the
    /// signal's sender is gone).
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// Reloads the files a running broker reads: passwords, ACL, certificates.
pub(crate) struct Reloader {
    shared: Arc<Shared>,
    listeners: Vec<Arc<Listener>>,
}

impl Reloader {
    /// Reads the password file, the ACL and every listener's TLS files
    /// again, without dropping a connection: new CONNECTs check the new
    /// passwords, the next ACL check uses the new rules, new handshakes the
    /// new certificates. What cannot be read or parsed keeps its old
    /// settings, is logged and is counted in
    /// `tidemq_reload_failures_total{what}`. Returns what failed (`auth` or
    /// a listener's name) and why; empty when everything was taken.
    pub(crate) fn reload(&self) -> Vec<(String, String)> {
        let shared = &self.shared;
        shared.metrics.reloads.inc();
        let mut failed = Vec::new();
        match AuthState::load(&shared.config.load()) {
            Ok(auth) => {
                shared.auth.store(Arc::new(auth));
                info!("reloaded the password file and the ACL");
            }
            Err(e) => {
                warn!(error = %e, "reload: keeping the old passwords and ACL");
                failed.push(("auth".to_string(), e.to_string()));
            }
        }
        for listener in &self.listeners {
            match listener.reload_tls(shared) {
                Ok(true) => info!(
                    listener = listener.label(),
                    "reloaded the TLS certificate and key"
                ),
                Ok(false) => {}
                Err(e) => {
                    warn!(listener = listener.label(), error = %e, "reload: keeping the old TLS settings");
                    failed.push((listener.label().to_string(), e.to_string()));
                }
            }
        }
        for (what, _) in &failed {
            shared
                .metrics
                .reload_failures
                .with_label_values(&[what])
                .inc();
        }
        failed
    }
}
