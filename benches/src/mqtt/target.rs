//! Where the load tool connects, and over which transport: TCP, TLS,
//! WebSocket or WebSocket over TLS (`--transport`, `--cafile`,
//! `--ws-path`), and from which local addresses (`--source-ips`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use clap::ValueEnum;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
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

/// A broker address and how to reach it; share it between clients.
pub struct Target {
    /// `host:port`.
    pub addr: String,
    host: String,
    transport: Transport,
    tls: Option<TlsConnector>,
    ws_path: String,
    /// Local addresses the connections take in turn (none: the kernel's
    /// choice).
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    /// User name (`%c` stands for the client id) and password sent in
    /// CONNECT.
    login: Option<(String, bytes::Bytes)>,
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
            sources: Vec::new(),
            next_source: AtomicUsize::new(0),
            login: None,
        })
    }

    /// Clients log in as `username` (`%c` stands for the client id) with
    /// `password`.
    pub fn with_login(mut self, username: String, password: &str) -> Target {
        self.login = Some((username, bytes::Bytes::copy_from_slice(password.as_bytes())));
        self
    }

    /// The user name and password client `client_id` sends, if any.
    pub fn login(&self, client_id: &str) -> (Option<String>, Option<bytes::Bytes>) {
        match &self.login {
            Some((username, password)) => (
                Some(username.replace("%c", client_id)),
                Some(password.clone()),
            ),
            None => (None, None),
        }
    }

    /// Connections from `count` loopback addresses in turn, 127.0.0.1 up:
    /// one local address reaches one port with ~28,000 connections at most
    /// (the ephemeral port range).
    pub fn with_loopback_sources(mut self, count: u8) -> Target {
        self.sources = (1..=count.max(1))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect();
        self
    }

    /// A TCP connection, from the next source address if there are several.
    async fn tcp(&self) -> anyhow::Result<TcpStream> {
        if self.sources.len() < 2 {
            return Ok(TcpStream::connect(&self.addr).await?);
        }
        let to: SocketAddr = tokio::net::lookup_host(&self.addr)
            .await?
            .next()
            .with_context(|| format!("{} resolves to nothing", self.addr))?;
        let from =
            self.sources[self.next_source.fetch_add(1, Ordering::Relaxed) % self.sources.len()];
        let socket = if to.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(from, 0))?;
        Ok(socket.connect(to).await?)
    }

    /// Opens a stream: TCP connect, then the TLS handshake and the
    /// WebSocket upgrade the transport asks for.
    pub async fn open(&self) -> anyhow::Result<Box<dyn Duplex>> {
        let tcp = self.tcp().await?;
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

/// Lets `connect()`, not `bind()`, choose the local port of a socket bound to
/// a source address (`IP_BIND_ADDRESS_NO_PORT`). `bind()` alone must pick a
/// port no other socket on that address holds, whatever it connects to, so a
/// run exhausts the address's ports at ~28,000 connections in all; chosen at
/// `connect()`, a port only has to be unique for the one destination.
fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and a pointer to an int with its
    // size, as setsockopt(2) asks.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
