//! One listener: its socket, its limits, its TLS settings (swapped whole on
//! reload) and the accept loop that hands each connection, once its TLS
//! handshake and WebSocket upgrade are done, to [`crate::connection::serve`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::tls::{self, TlsError, TlsSettings};
use super::ws::Upgrade;
use super::{Duplex, Reader, Writer};
use crate::admission::Admission;
use crate::broker::Shared;
use crate::config::{CertificateIdentity, ListenerConfig, ListenerKind};
use crate::connection;
use crate::log_every::LogEvery;

/// Failed accepts logged so far, one a second at most across listeners.
static ACCEPT_ERROR_LOG: LogEvery = LogEvery::new(1000);

/// What a connection needs to know of the listener it came in on.
pub(crate) struct ListenerInfo {
    /// Name in logs and metric labels.
    pub label: String,
    /// Transport.
    pub kind: ListenerKind,
    /// Tenant of its clients.
    pub tenant: String,
    /// Whether clients without a user name are accepted.
    pub allow_anonymous: bool,
    /// Whether it listens on a loopback address (`$SYS` is readable there
    /// without an ACL).
    pub loopback: bool,
    /// Where a client certificate's user name comes from.
    pub username_from_certificate: CertificateIdentity,
}

/// A connection once its transport is set up.
pub(crate) struct Established {
    /// Read half.
    pub reader: Reader,
    /// Write half.
    pub writer: Writer,
    /// The user name the client certificate stands for, if the listener
    /// takes it from there and the client presented one.
    pub certificate_user: Option<String>,
}

/// A bound listener.
pub(crate) struct Listener {
    pub(crate) info: Arc<ListenerInfo>,
    config: ListenerConfig,
    socket: TcpListener,
    local_addr: SocketAddr,
    tls: Option<ArcSwap<TlsSettings>>,
}

/// A listening socket on `addr` with a listen backlog of `backlog`.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted broker binds its port again
    // while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog.max(1))
}

impl Listener {
    /// Loads the TLS settings, if any, and binds.
    pub(crate) async fn bind(config: &ListenerConfig) -> Result<Listener, crate::BrokerError> {
        let tls = if config.kind.is_tls() {
            Some(ArcSwap::from_pointee(TlsSettings::load(config)?))
        } else {
            None
        };
        let addr = config.bind;
        let bind_error = |source| crate::BrokerError::Bind { addr, source };
        let socket = listen(addr, config.backlog).map_err(bind_error)?;
        let local_addr = socket.local_addr().map_err(bind_error)?;
        let info = Arc::new(ListenerInfo {
            label: config.label_at(local_addr.port()),
            kind: config.kind,
            tenant: config.tenant.clone(),
            allow_anonymous: config.allow_anonymous,
            loopback: addr.ip().is_loopback(),
            username_from_certificate: config.username_from_certificate,
        });
        Ok(Listener {
            info,
            config: config.clone(),
            socket,
            local_addr,
            tls,
        })
    }

    /// Name in logs and metrics.
    pub(crate) fn label(&self) -> &str {
        &self.info.label
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reads the TLS files again (a listener without TLS has none). New
    /// handshakes use the new settings; connections keep theirs. On an
    /// error the old settings stay.
    pub(crate) fn reload_tls(&self, shared: &Shared) -> Result<bool, TlsError> {
        let Some(current) = &self.tls else {
            return Ok(false);
        };
        let settings = TlsSettings::load(&self.config)?;
        current.store(Arc::new(settings));
        self.report_expiry(shared);
        Ok(true)
    }

    /// Sets the expiry gauge; warns when the certificate expires within
    /// `certificate_warn_days`.
    pub(crate) fn report_expiry(&self, shared: &Shared) {
        let Some(tls) = &self.tls else {
            return;
        };
        let left = tls.load().expires_in();
        shared
            .metrics
            .certificate_expiry
            .with_label_values(&[self.label()])
            .set(left);
        let warn_within = i64::from(self.config.certificate_warn_days) * 86_400;
        if left < warn_within {
            warn!(
                listener = self.label(),
                days_left = left / 86_400,
                "the listener's TLS certificate expires soon (or has expired)"
            );
        }
    }

    /// Accepts connections until the broker shuts down, then waits (10 s
    /// at most) for them to close.
    pub(crate) async fn accept_loop(self: Arc<Self>, shared: Arc<Shared>) {
        let mut admission = Admission::new(
            self.config.max_connections,
            self.config.max_connections_per_address,
            self.config.max_connect_rate,
        );
        info!(listener = self.label(), addr = %self.local_addr, kind = self.info.kind.as_str(), "MQTT listener started");
        // Tracks the connection tasks without an entry per task (a
        // `JoinSet` keeps one, ~64 bytes, for every connection).
        let connections = TaskTracker::new();
        let mut shutdown = shared.shutdown.clone();
        // Its first tick is at once: the expiry is reported at start too.
        let mut expiry_check = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                accepted = self.socket.accept() => match accepted {
                    Ok((stream, peer)) => match admission.admit(peer, Instant::now()) {
                        Ok(admitted) => {
                            let shared = Arc::clone(&shared);
                            let listener = Arc::clone(&self);
                            // Its span is made by the task: it lives only
                            // while the connection is not idle.
                            connections.spawn(connection::serve(
                                shared, listener, stream, admitted,
                            ));
                        }
                        Err(limit) => {
                            shared.metrics.connections_refused.inc();
                            shared
                                .metrics
                                .connections_limited
                                .with_label_values(&[limit.as_str()])
                                .inc();
                            debug!(%peer, limit = limit.as_str(), "refusing a connection");
                        }
                    },
                    Err(e) => {
                        // Usually out of file descriptors: the connection
                        // stays in the backlog. Back off instead of spinning.
                        shared.metrics.accept_errors.inc();
                        if let Some(held) = ACCEPT_ERROR_LOG.admit_now() {
                            warn!(
                                listener = self.label(),
                                error = %e,
                                accept_errors_not_logged = held,
                                "accept failed; the connection waits in the listen backlog"
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = expiry_check.tick(), if self.tls.is_some() => self.report_expiry(&shared),
                _ = shutdown.changed() => break,
            }
        }
        info!(listener = self.label(), "MQTT listener stopped");
        // Connections see the same shutdown signal and close themselves.
        connections.close();
        let drained = tokio::time::timeout(Duration::from_secs(10), connections.wait()).await;
        if drained.is_err() {
            // They end with the runtime.
            warn!(
                remaining = connections.len(),
                "connections did not close in time"
            );
        }
    }

    /// [`Listener::establish`], unless the broker stops first.
    pub(crate) async fn establish_until_stop(
        &self,
        shared: &Shared,
        stream: TcpStream,
    ) -> Option<Established> {
        let mut shutdown = shared.shutdown.clone();
        tokio::select! {
            established = self.establish(shared, stream) => established,
            _ = shutdown.wait_for(|stopping| *stopping) => None,
        }
    }

    /// Runs the TLS handshake and the WebSocket upgrade this listener's
    /// kind asks for, within the CONNECT timeout. `None` (counted in
    /// `tidemq_handshake_failures_total`) when either failed.
    async fn establish(&self, shared: &Shared, stream: TcpStream) -> Option<Established> {
        let _ = stream.set_nodelay(true);
        if self.info.kind == ListenerKind::Tcp {
            let (reader, writer) = stream.into_split();
            return Some(Established {
                reader: Reader::Tcp(reader),
                writer: Writer::Tcp(writer),
                certificate_user: None,
            });
        }
        let config = shared.config.load();
        let within = config.mqtt.connect_timeout();
        let upgrade = Upgrade {
            path: &self.config.path,
            allowed_origins: &self.config.allowed_origins,
            max_packet_size: config.mqtt.max_packet_size as usize,
        };
        match tokio::time::timeout(within, self.set_up(stream, &upgrade)).await {
            Ok(Ok(established)) => Some(established),
            Ok(Err(reason)) => {
                self.count_failure(shared, reason);
                None
            }
            Err(_) => {
                self.count_failure(shared, "timeout");
                None
            }
        }
    }

    async fn set_up(
        &self,
        stream: TcpStream,
        upgrade: &Upgrade<'_>,
    ) -> Result<Established, &'static str> {
        let (stream, certificate_user): (Box<dyn Duplex>, _) = match &self.tls {
            Some(tls) => {
                let acceptor = tls.load().acceptor.clone();
                let stream = acceptor.accept(stream).await.map_err(|e| {
                    let reason = tls::failure_label(&e);
                    debug!(error = %e, reason, "TLS handshake failed");
                    reason
                })?;
                let user =
                    tls::certificate_user(stream.get_ref().1, self.info.username_from_certificate);
                (Box::new(stream), user)
            }
            None => (Box::new(stream), None),
        };
        let stream: Box<dyn Duplex> = if self.info.kind.is_websocket() {
            let ws = upgrade
                .accept(stream)
                .await
                .map_err(|refusal| refusal.map_or("ws_handshake", |r| r.as_str()))?;
            Box::new(ws)
        } else {
            stream
        };
        let (reader, writer) = Reader::split(stream);
        Ok(Established {
            reader,
            writer,
            certificate_user,
        })
    }

    fn count_failure(&self, shared: &Shared, reason: &'static str) {
        shared
            .metrics
            .handshake_failures
            .with_label_values(&[self.label(), reason])
            .inc();
        // Failures of clients that simply went away are not news.
        if matches!(reason, "eof" | "io") {
            debug!(
                listener = self.label(),
                reason, "connection closed during its handshake"
            );
        } else {
            warn!(listener = self.label(), reason, "handshake failed");
        }
    }
}
