//! The byte streams MQTT runs over: TCP, TLS, WebSocket and WebSocket over
//! TLS. A connection only sees a [`Reader`] and a [`Writer`]; which
//! transport is underneath is decided once, when the connection is set up
//! ([`Listener::establish`]).

mod listener;
pub(crate) mod tls;
mod ws;

pub(crate) use listener::{Listener, ListenerInfo};
pub use ws::WsStream;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
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

/// What a read buffer grows by when it has less than [`READ_MIN`] free.
const READ_CHUNK: usize = 4096;
const READ_MIN: usize = 1024;
/// What an empty read buffer starts with: room for what an idle client
/// sends (PINGREQ, SUBSCRIBE, a small PUBLISH). One that fills it grows by
/// [`READ_CHUNK`] on the next read.
const READ_FIRST: usize = 512;

impl Reader {
    /// Reads what the stream has into `buf`: an empty buffer starts with
    /// [`READ_FIRST`], a nearly full one grows by [`READ_CHUNK`]; `Ok(0)` at
    /// the end of the stream. A TCP reader grows the buffer only once the
    /// socket is readable, so a connection waiting for input needs no
    /// buffer of its own: an idle one can hold none. Cancel safe.
    pub(crate) async fn read_some(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Reader::Tcp(half) => loop {
                half.readable().await?;
                let had_memory = buf.capacity() > 0;
                reserve_read(buf);
                match half.try_read_buf(buf) {
                    // Readiness was stale: wait again, without a buffer if
                    // there was none.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if !had_memory {
                            *buf = BytesMut::new();
                        }
                    }
                    read => return read,
                }
            },
            Reader::Other(half) => {
                reserve_read(buf);
                half.read_buf(buf).await
            }
        }
    }

    /// Whether the reader can wait for input without a buffer (TCP; TLS
    /// and WebSocket streams decode what they read into the caller's
    /// buffer).
    pub(crate) fn waits_unbuffered(&self) -> bool {
        matches!(self, Reader::Tcp(_))
    }

    /// Ready once the stream has input, has ended or has failed, without
    /// taking any of it (the caller reads next); registers `cx` otherwise.
    /// Needs no buffer and no future of its own: a TCP reader peeks one
    /// byte. The other readers are ready at once: they cannot wait without
    /// reading.
    pub(crate) fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Reader::Tcp(half) => {
                let mut byte = [0u8; 1];
                half.poll_peek(cx, &mut ReadBuf::new(&mut byte)).map(|_| ())
            }
            Reader::Other(_) => Poll::Ready(()),
        }
    }

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

fn reserve_read(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        buf.reserve(READ_FIRST);
    } else if buf.capacity() - buf.len() < READ_MIN {
        buf.reserve(READ_CHUNK);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::Reader;

    #[tokio::test]
    async fn a_tcp_reader_waits_without_a_buffer() -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        let (read, _write) = server.into_split();
        let mut reader = Reader::Tcp(read);
        let mut buf = BytesMut::new();

        client.write_all(b"hello").await?;
        assert_eq!(reader.read_some(&mut buf).await?, 5);
        assert_eq!(&buf[..], b"hello");
        // Released, as an idle connection's is: the socket still counts as
        // readable until a read finds nothing, and that read must not leave
        // a buffer behind for the wait.
        buf = BytesMut::new();
        let waited = tokio::time::timeout(Duration::from_millis(50), reader.read_some(&mut buf));
        assert!(waited.await.is_err(), "nothing to read");
        assert_eq!(buf.capacity(), 0, "no buffer held while waiting");

        client.write_all(b"again").await?;
        assert_eq!(reader.read_some(&mut buf).await?, 5);
        assert_eq!(&buf[..], b"again");
        Ok(())
    }
}
