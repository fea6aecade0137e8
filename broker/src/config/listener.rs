//! `[listener]` and `[[listeners]]`: where clients connect, over which
//! transport, and what a connection there may do.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS 1.2/1.3.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// The name used in configuration, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    /// Whether connections start with a TLS handshake.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// Whether MQTT is carried in WebSocket frames.
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// Where a verified client certificate's user name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateIdentity {
    /// Certificates are checked but the CONNECT's user name is used.
    None,
    /// The subject's common name.
    Cn,
    /// The first DNS, e-mail or URI subject alternative name.
    San,
}

/// One listener: `[listener]` (the first; its defaults are those of a
/// single TCP listener on 127.0.0.1:1883) or an entry of `[[listeners]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name in logs and metric labels; `{kind}:{port}` when unset.
    pub name: Option<String>,
    /// Transport: `tcp`, `tls`, `ws` or `wss`.
    pub kind: ListenerKind,
    /// Address the listener binds.
    pub bind: SocketAddr,
    /// Connections the kernel holds, handshake done, until the broker
    /// accepts them (the listen backlog; the kernel caps it at
    /// `net.core.somaxconn`). A full queue drops SYNs, which clients resend
    /// only after a second.
    pub backlog: u32,
    /// Connections accepted at once; further ones are refused.
    pub max_connections: usize,
    /// Connections open at once from one client address; 0: no limit.
    pub max_connections_per_address: usize,
    /// New connections accepted per second (with a second's worth of
    /// burst); 0: no limit.
    pub max_connect_rate: u32,
    /// Accept clients that send no user name.
    pub allow_anonymous: bool,
    /// Allow anonymous clients on a non-loopback address. Off by default so
    /// that exposing the port needs a deliberate choice.
    pub allow_anonymous_on_public_address: bool,
    /// Tenant of this listener's clients (sessions are keyed `{tenant}/{client_id}`).
    pub tenant: String,
    /// PEM certificate chain, leaf first (`tls`, `wss`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the certificate (`tls`, `wss`).
    pub key_file: Option<PathBuf>,
    /// PEM bundle of the CAs client certificates are checked against; unset:
    /// clients are not asked for a certificate.
    pub ca_file: Option<PathBuf>,
    /// Refuse clients without a valid certificate (needs `ca_file`).
    pub require_certificate: bool,
    /// Take the user name from the client certificate: `none`, `cn` or `san`.
    /// A client with such a certificate needs no password; ACL `user:`
    /// rules then apply to the certificate's identity.
    pub username_from_certificate: CertificateIdentity,
    /// A certificate expiring within this many days is logged at WARN at
    /// every load (the time left is in `tidemq_tls_certificate_expiry_seconds`).
    pub certificate_warn_days: u32,
    /// HTTP path of the WebSocket endpoint (`ws`, `wss`).
    pub path: String,
    /// `Origin` headers a WebSocket upgrade may carry (e.g.
    /// `"https://app.example.com"`); empty: any, or none.
    pub allowed_origins: Vec<String>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            name: None,
            kind: ListenerKind::Tcp,
            bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            backlog: 4096,
            max_connections: 100_000,
            max_connections_per_address: 10_000,
            max_connect_rate: 20_000,
            allow_anonymous: true,
            allow_anonymous_on_public_address: false,
            tenant: "default".into(),
            cert_file: None,
            key_file: None,
            ca_file: None,
            require_certificate: false,
            username_from_certificate: CertificateIdentity::None,
            certificate_warn_days: 30,
            path: "/mqtt".into(),
            allowed_origins: Vec::new(),
        }
    }
}

impl ListenerConfig {
    /// The name in logs and metric labels.
    pub fn label(&self) -> String {
        self.label_at(self.bind.port())
    }

    /// The name in logs and metric labels once bound to `port` (the port
    /// the system picked for port 0).
    pub fn label_at(&self, port: u16) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}:{port}", self.kind.as_str()))
    }

    /// Checks values that parse but cannot work.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let label = self.label();
        let invalid = |what: &str| {
            Err(ConfigError::Invalid {
                origin: None,
                message: format!("listener {label}: {what}"),
            })
        };
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1");
        }
        if self.tenant.is_empty() || self.tenant.contains('/') {
            return invalid("tenant must be non-empty and contain no '/'");
        }
        let tls_keys = self.cert_file.is_some()
            || self.key_file.is_some()
            || self.ca_file.is_some()
            || self.require_certificate
            || self.username_from_certificate != CertificateIdentity::None;
        if self.kind.is_tls() {
            if self.cert_file.is_none() || self.key_file.is_none() {
                return invalid("a tls or wss listener needs cert_file and key_file");
            }
            if self.ca_file.is_none()
                && (self.require_certificate
                    || self.username_from_certificate != CertificateIdentity::None)
            {
                return invalid(
                    "require_certificate and username_from_certificate need ca_file (the CAs client certificates are checked against)",
                );
            }
        } else if tls_keys {
            return invalid(
                "cert_file, key_file, ca_file and client certificates need kind tls or wss",
            );
        }
        if self.kind.is_websocket() && !self.path.starts_with('/') {
            return invalid("path must start with '/'");
        }
        Ok(())
    }

    /// Whether anonymous clients could connect here.
    pub(super) fn check_exposure(&self, have_passwords: bool) -> Result<(), ConfigError> {
        let anonymous = self.allow_anonymous || !have_passwords;
        // A required certificate is an identity: such a listener is not anonymous.
        let certified = self.require_certificate;
        if !self.bind.ip().is_loopback()
            && anonymous
            && !certified
            && !self.allow_anonymous_on_public_address
        {
            return Err(ConfigError::Invalid {
                origin: None,
                message: format!(
                    "refusing to accept anonymous clients on non-loopback address {} (listener \
                     {}): set auth.password_file and allow_anonymous = false, require client \
                     certificates, or set allow_anonymous_on_public_address = true",
                    self.bind,
                    self.label()
                ),
            });
        }
        Ok(())
    }
}
