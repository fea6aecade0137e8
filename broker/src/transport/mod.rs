//! The byte streams MQTT runs over: TCP, TLS, WebSocket and WebSocket over
//! TLS. A connection only sees a [`Reader`] and a [`Writer`]; which
//! transport is underneath is decided once, when the connection is set up
//! ([`Listener::establish`]).

mod listener;
pub(crate) mod tls;
mod ws;

pub(crate) use listener::{Established, Listener, ListenerInfo};
pub use ws::WsStream;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A duplex byte stream of any transport.
pub(crate) trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// The read half of a connection's stream.
pub(crate) enum Reader {
    /// Plain TCP, split without a lock.
    Tcp(OwnedReadHalf),
    /// TLS and WebSocket streams.
    Other(ReadHalf<Box<dyn Duplex>>),
}

/// The write half of a connection's stream. TLS and WebSocket writers
/// hold output of their own (records, frames) that [`Writer::pending`]
/// reports and a flush sends.
pub(crate) enum Writer {
    /// Plain TCP, split without a lock.
    Tcp(OwnedWriteHalf),
    /// TLS and WebSocket streams.
    Other {
        /// The stream's write half.
        half: WriteHalf<Box<dyn Duplex>>,
        /// Bytes were written since the last completed flush.
        unflushed: bool,
    },
}

impl Reader {
    /// A reader and a writer over one stream.
    pub(crate) fn split(stream: Box<dyn Duplex>) -> (Reader, Writer) {
        let (read, write) = tokio::io::split(stream);
        (
            Reader::Other(read),
            Writer::Other {
                half: write,
                unflushed: false,
            },
        )
    }
}

impl Writer {
    /// Whether output written earlier still waits for a flush.
    pub(crate) fn pending(&self) -> bool {
        matches!(
            self,
            Writer::Other {
                unflushed: true,
                ..
            }
        )
    }

    /// Writes without waiting: what the stream takes at once. `Ok(0)` when
    /// it takes nothing now.
    pub(crate) fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Writer::Tcp(half) => match half.try_write(buf) {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            },
            Writer::Other { .. } => {
                let waker = futures_util::task::noop_waker();
                let mut cx = Context::from_waker(&waker);
                match Pin::new(self).poll_write(&mut cx, buf) {
                    Poll::Ready(Ok(0)) if !buf.is_empty() => Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(result) => result,
                    Poll::Pending => Ok(0),
                }
            }
        }
    }
}

impl AsyncRead for Reader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Reader::Tcp(half) => Pin::new(half).poll_read(cx, buf),
            Reader::Other(half) => Pin::new(half).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Writer {
    /// On TLS and WebSocket, a write first sends what an earlier one left
    /// in the stream (so buffered output never piles up), then hands the
    /// stream the new bytes and starts sending them.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Tcp(half) => Pin::new(half).poll_write(cx, buf),
            Writer::Other { half, unflushed } => {
                if *unflushed {
                    std::task::ready!(Pin::new(&mut *half).poll_flush(cx))?;
                    *unflushed = false;
                }
                let n = std::task::ready!(Pin::new(&mut *half).poll_write(cx, buf))?;
                *unflushed = true;
                if let Poll::Ready(flushed) = Pin::new(&mut *half).poll_flush(cx) {
                    flushed?;
                    *unflushed = false;
                }
                Poll::Ready(Ok(n))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(half) => Pin::new(half).poll_flush(cx),
            Writer::Other { half, unflushed } => {
                std::task::ready!(Pin::new(half).poll_flush(cx))?;
                *unflushed = false;
                Poll::Ready(Ok(()))
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(half) => Pin::new(half).poll_shutdown(cx),
            Writer::Other { half, unflushed } => {
                std::task::ready!(Pin::new(half).poll_shutdown(cx))?;
                *unflushed = false;
                Poll::Ready(Ok(()))
            }
        }
    }
}
