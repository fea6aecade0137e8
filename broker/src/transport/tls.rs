//! TLS for `tls` and `wss` listeners (rustls, TLS 1.2 and 1.3): the
//! certificate chain and key from PEM files, optional or required client
//! certificates checked against a CA bundle, the user name a client
//! certificate stands for, and a label for every failed handshake.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, RootCertStore, ServerConfig, ServerConnection};
use tokio_rustls::TlsAcceptor;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{CertificateIdentity, ListenerConfig, ListenerKind};

/// Why a listener's TLS settings could not be loaded. The listener keeps
/// the settings it had (at start: the node does not start).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {message}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificates, key or CAs.
    #[error("TLS settings of listener {listener}: {source}")]
    Rustls {
        /// The listener.
        listener: String,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built from the CAs.
    #[error("client CAs of listener {listener}: {message}")]
    Verifier {
        /// The listener.
        listener: String,
        /// What is wrong.
        message: String,
    },
}

/// What a listener's TLS settings are, loaded from its files.
pub(crate) struct TlsSettings {
    /// Makes the handshakes.
    pub acceptor: TlsAcceptor,
    /// When the leaf certificate expires (seconds since the epoch).
    pub not_after: i64,
}

impl TlsSettings {
    /// Loads the files `listener` names (`cert_file`, `key_file`, and
    /// `ca_file` if client certificates are checked).
    pub(crate) fn load(listener: &ListenerConfig) -> Result<TlsSettings, TlsError> {
        let label = listener.label();
        let rustls_error = |source| TlsError::Rustls {
            listener: label.clone(),
            source,
        };
        let (cert_path, key_path) = match (&listener.cert_file, &listener.key_file) {
            (Some(cert), Some(key)) => (cert, key),
            _ => {
                return Err(TlsError::Pem {
                    what: "certificate",
                    path: PathBuf::new(),
                    message: "cert_file and key_file must be set".into(),
                });
            }
        };
        let chain = read_certificates(cert_path, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Pem {
            what: "private key",
            path: key_path.clone(),
            message: e.to_string(),
        })?;
        let not_after = not_after(&chain[0]).ok_or_else(|| TlsError::Pem {
            what: "certificate chain",
            path: cert_path.clone(),
            message: "the first certificate cannot be parsed".into(),
        })?;
        let builder = ServerConfig::builder();
        let builder = match &listener.ca_file {
            None => builder.with_no_client_auth(),
            Some(ca_path) => {
                let mut roots = RootCertStore::empty();
                for ca in read_certificates(ca_path, "CA bundle")? {
                    roots.add(ca).map_err(rustls_error)?;
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
                let verifier = if listener.require_certificate {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier.build().map_err(|e| TlsError::Verifier {
                    listener: label.clone(),
                    message: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(rustls_error)?;
        // ALPN is only checked when the client offers it: MQTT clients that
        // do may offer "mqtt"; browsers opening wss:// offer HTTP.
        config.alpn_protocols = match listener.kind {
            ListenerKind::Wss => vec![b"http/1.1".to_vec()],
            _ => vec![b"mqtt".to_vec()],
        };
        Ok(TlsSettings {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            not_after,
        })
    }

    /// Seconds until the certificate expires (negative once it has).
    pub(crate) fn expires_in(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        self.not_after - i64::try_from(now).unwrap_or(i64::MAX)
    }
}

fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |message: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        message,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(pem_error("no certificate in the file".into()));
    }
    Ok(certificates)
}

fn not_after(certificate: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = X509Certificate::from_der(certificate).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// The user name a verified client certificate stands for: its subject's
/// common name, or its first DNS, e-mail or URI alternative name.
pub(crate) fn certificate_user(
    connection: &ServerConnection,
    from: CertificateIdentity,
) -> Option<String> {
    let leaf = connection.peer_certificates()?.first()?;
    let (_, parsed) = X509Certificate::from_der(leaf).ok()?;
    match from {
        CertificateIdentity::None => None,
        CertificateIdentity::Cn => parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        CertificateIdentity::San => {
            let names = parsed.subject_alternative_name().ok()??;
            names
                .value
                .general_names
                .iter()
                .find_map(|name| match name {
                    GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                        Some((*s).to_owned())
                    }
                    _ => None,
                })
        }
    }
}

/// A metric label for a failed handshake.
pub(crate) fn failure_label(error: &io::Error) -> &'static str {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof => "eof",
            _ => "io",
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Revoked => "revoked",
            _ => "bad_certificate",
        },
        rustls::Error::NoCertificatesPresented => "no_certificate",
        // A plaintext MQTT CONNECT (0x10 ...) is no TLS record.
        rustls::Error::InvalidMessage(_) => "not_tls",
        rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown,
        ) => "client_rejected_certificate",
        rustls::Error::NoApplicationProtocol => "alpn",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        _ => "protocol",
    }
}
