//! [`MetaSnapshotData`]: a snapshot's bytes as openraft reads and writes
//! them, encoded from a checkpoint only when something reads them.
//!
//! openraft asks for the current snapshot at start (and keeps only its
//! meta) and whenever a follower must catch up by snapshot (and reads it
//! all). Encoding a checkpoint reads the whole state, so the data of the
//! current snapshot starts as a pending encoding that runs the first time
//! it is read or sought: a start costs nothing, a follower that needs the
//! snapshot waits for the encoding as it waits for the transfer.

use std::future::Future;
use std::io::{self, Cursor, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A pending encoding of a snapshot's blob.
pub(crate) type Encoding = Pin<Box<dyn Future<Output = io::Result<Vec<u8>>> + Send>>;

/// The bytes of a meta snapshot (openraft's `SnapshotData`).
pub struct MetaSnapshotData {
    state: State,
    /// A seek started while the bytes were still being encoded.
    pending_seek: Option<SeekFrom>,
}

enum State {
    Bytes(Cursor<Vec<u8>>),
    Encoding(Encoding),
}

impl std::fmt::Debug for MetaSnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            State::Bytes(bytes) => write!(f, "MetaSnapshotData({} bytes)", bytes.get_ref().len()),
            State::Encoding(_) => f.write_str("MetaSnapshotData(not encoded yet)"),
        }
    }
}

impl Default for MetaSnapshotData {
    fn default() -> Self {
        Self::from_bytes(Vec::new())
    }
}

impl MetaSnapshotData {
    /// Data that is already in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            state: State::Bytes(Cursor::new(bytes)),
            pending_seek: None,
        }
    }

    /// Data that `encoding` produces the first time it is needed.
    pub(crate) fn encoded_by(encoding: Encoding) -> Self {
        Self {
            state: State::Encoding(encoding),
            pending_seek: None,
        }
    }

    /// All the bytes, encoding them first if that has not happened yet.
    pub async fn into_bytes(mut self) -> io::Result<Vec<u8>> {
        std::future::poll_fn(|cx| self.poll_bytes(cx).map_ok(|_| ())).await?;
        match self.state {
            State::Bytes(bytes) => Ok(bytes.into_inner()),
            State::Encoding(_) => Err(io::Error::other("snapshot encoding did not finish")),
        }
    }

    /// Drives a pending encoding; then the bytes, with any seek that was
    /// started before they existed applied.
    fn poll_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut Cursor<Vec<u8>>>> {
        if let State::Encoding(encoding) = &mut self.state {
            let bytes = ready!(encoding.as_mut().poll(cx))?;
            self.state = State::Bytes(Cursor::new(bytes));
        }
        let State::Bytes(cursor) = &mut self.state else {
            return Poll::Ready(Err(io::Error::other("snapshot encoding did not finish")));
        };
        if let Some(position) = self.pending_seek.take() {
            Pin::new(&mut *cursor).start_seek(position)?;
        }
        Poll::Ready(Ok(cursor))
    }
}

impl AsyncRead for MetaSnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let cursor = ready!(self.get_mut().poll_bytes(cx))?;
        Pin::new(cursor).poll_read(cx, buf)
    }
}

impl AsyncWrite for MetaSnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let cursor = ready!(self.get_mut().poll_bytes(cx))?;
        Pin::new(cursor).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for MetaSnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.state {
            State::Bytes(cursor) => Pin::new(cursor).start_seek(position),
            State::Encoding(_) => {
                this.pending_seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let cursor = ready!(self.get_mut().poll_bytes(cx))?;
        Pin::new(cursor).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    #[tokio::test]
    async fn encoding_runs_on_first_use_and_seeks_started_before_it_apply() {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let encoding: Encoding = Box::pin(async move {
            let _ = started_tx.send(());
            Ok(b"0123456789".to_vec())
        });
        let mut data = MetaSnapshotData::encoded_by(encoding);
        assert!(started_rx.try_recv().is_err(), "nothing runs before a read");
        assert_eq!(data.seek(SeekFrom::End(0)).await.unwrap(), 10);
        assert!(started_rx.try_recv().is_ok());
        data.seek(SeekFrom::Start(4)).await.unwrap();
        let mut rest = String::new();
        data.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "456789");
    }

    #[tokio::test]
    async fn received_bytes_are_written_and_taken_back() {
        let mut data = MetaSnapshotData::default();
        data.write_all(b"abc").await.unwrap();
        data.write_all(b"def").await.unwrap();
        assert_eq!(data.into_bytes().await.unwrap(), b"abcdef");
        let failing: Encoding = Box::pin(async { Err(io::Error::other("checkpoint gone")) });
        let error = MetaSnapshotData::encoded_by(failing).into_bytes().await;
        assert!(error.is_err_and(|e| e.to_string().contains("checkpoint gone")));
    }
}
