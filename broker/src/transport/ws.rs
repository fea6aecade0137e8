//! MQTT over WebSocket (MQTT 5.0 §6, 3.1.1 §6): the HTTP upgrade, checked
//! for path, subprotocol and origin, then a byte stream over binary
//! messages. An MQTT packet may be split across messages, and a message
//! may hold several packets: the stream hands the codec bytes, never
//! frames. Pings are answered and the close handshake is completed by
//! tungstenite; a text message is a protocol error (§6: binary only).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The subprotocols offered, in order of preference: `mqtt` (3.1.1, 5.0),
/// then `mqttv3.1` for old clients.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The request was for another path.
    Path,
    /// The client offered no MQTT subprotocol.
    Subprotocol,
    /// The `Origin` header is not allowed.
    Origin,
}

impl Refusal {
    /// The HTTP answer to the upgrade request.
    fn response(self) -> ErrorResponse {
        let (status, why) = match self {
            Refusal::Path => (StatusCode::NOT_FOUND, "no MQTT endpoint at this path"),
            Refusal::Subprotocol => (
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Protocol must offer mqtt",
            ),
            Refusal::Origin => (StatusCode::FORBIDDEN, "origin not allowed"),
        };
        let mut answer = ErrorResponse::new(Some(why.to_string()));
        *answer.status_mut() = status;
        answer
    }

    /// A metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Path => "ws_path",
            Refusal::Subprotocol => "ws_subprotocol",
            Refusal::Origin => "ws_origin",
        }
    }
}

/// What an upgrade must match.
pub(crate) struct Upgrade<'a> {
    /// The endpoint's path.
    pub path: &'a str,
    /// Allowed `Origin` values; empty allows any.
    pub allowed_origins: &'a [String],
    /// Largest MQTT packet accepted, which bounds a WebSocket message.
    pub max_packet_size: usize,
}

impl Upgrade<'_> {
    /// Runs the upgrade handshake on `stream`. `Err(Some(refusal))` when the
    /// request was answered with an HTTP error, `Err(None)` when it was not
    /// a WebSocket upgrade at all or the peer went away.
    pub(crate) async fn accept<S>(&self, stream: S) -> Result<WsStream<S>, Option<Refusal>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut refused = None;
        // The callback's types are tungstenite's: an HTTP error response.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, mut response: Response| match self.check(request) {
            Ok(chosen) => {
                response
                    .headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
                Ok(response)
            }
            Err(refusal) => {
                refused = Some(refusal);
                Err(refusal.response())
            }
        };
        // Frames are read into a small buffer that grows for larger ones;
        // tungstenite's default (128 KiB per connection) would be most of an
        // idle connection's memory.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(self.max_packet_size + 16))
            .max_frame_size(Some(self.max_packet_size + 16));
        match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
        {
            Ok(ws) => Ok(WsStream::new(ws)),
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                Err(refused)
            }
        }
    }

    /// Checks the path, the origin and the subprotocol; the subprotocol
    /// chosen.
    fn check(&self, request: &Request) -> Result<&'static str, Refusal> {
        if request.uri().path() != self.path {
            return Err(Refusal::Path);
        }
        if !self.allowed_origins.is_empty() {
            let origin = request
                .headers()
                .get("origin")
                .and_then(|o| o.to_str().ok());
            if !origin.is_some_and(|o| self.allowed_origins.iter().any(|a| a == o)) {
                return Err(Refusal::Origin);
            }
        }
        let offered: Vec<&str> = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        SUBPROTOCOLS
            .into_iter()
            .find(|p| offered.contains(p))
            .ok_or(Refusal::Subprotocol)
    }
}

/// A byte stream over a WebSocket, either end: each write is one binary
/// message, and reads hand over the bytes of binary messages however they
/// were cut. The load tool (`tidemq-bench --transport ws`) uses it too.
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last binary message read.
    unread: Bytes,
}

impl<S> WsStream<S> {
    /// A byte stream over an upgraded WebSocket.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            unread: Bytes::new(),
        }
    }
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.unread = data,
                // Answered (pings) or of no interest (pongs, raw frames).
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // The close handshake is answered by tungstenite; to MQTT
                // it is the end of the stream.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket must use binary messages",
                    )));
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ws = &mut self.get_mut().ws;
        ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut *ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(to_io)
    }

    /// Sends a close frame (and flushes it).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}
