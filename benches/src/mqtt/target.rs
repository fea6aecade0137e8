//! Where the load tool connects, and over which transport: TCP, TLS,
//! WebSocket or WebSocket over TLS (`--transport`, `--cafile`,
//! `--ws-path`).

use std::sync::Arc;

use anyhow::Context;
use clap::ValueEnum;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The transport of the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Transport {
    /// Plain TCP.
    #[default]
    Tcp,
    /// TLS.
    Tls,
    /// WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

/// A byte stream of any transport.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// A broker address and how to reach it; cheap to share between clients.
#[derive(Clone)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    host: String,
    transport: Transport,
    tls: Option<TlsConnector>,
    ws_path: String,
}

impl Target {
    /// A target; `cafile` is the CA bundle TLS servers are checked against
    /// (needed for `tls` and `wss`).
    pub fn new(
        host: &str,
        port: u16,
        transport: Transport,
        cafile: Option<&std::path::Path>,
        ws_path: &str,
    ) -> anyhow::Result<Target> {
        let tls = match transport {
            Transport::Tls | Transport::Wss => {
                let cafile = cafile.context("--transport tls and wss need --cafile")?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(cafile)
                    .with_context(|| format!("reading {}", cafile.display()))?
                {
                    roots.add(cert?)?;
                }
                let config = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(TlsConnector::from(Arc::new(config)))
            }
            Transport::Tcp | Transport::Ws => None,
        };
        Ok(Target {
            addr: format!("{host}:{port}"),
            host: host.to_string(),
            transport,
            tls,
            ws_path: ws_path.to_string(),
        })
    }

    /// Opens a stream: TCP connect, then the TLS handshake and the
    /// WebSocket upgrade the transport asks for.
    pub async fn open(&self) -> anyhow::Result<Box<dyn Duplex>> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Duplex> = match &self.tls {
            Some(connector) => {
                let name = ServerName::try_from(self.host.clone())?;
                Box::new(connector.connect(name, tcp).await?)
            }
            None => Box::new(tcp),
        };
        if !matches!(self.transport, Transport::Ws | Transport::Wss) {
            return Ok(stream);
        }
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let mut request =
            format!("{scheme}://{}{}", self.addr, self.ws_path).into_client_request()?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
        Ok(Box::new(tidemq_broker::WsStream::new(ws)))
    }
}
