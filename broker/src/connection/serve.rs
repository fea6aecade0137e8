//! A connection's task, from the accepted socket to the close.
//!
//! Most connections spend their lives idle, so the task is sized for the
//! idle wait ([`Connection::idle`]) and nothing else: everything that
//! lives only for a while is on the heap only while it does.
//!
//! - Opening ([`open`]): the TLS handshake, the WebSocket upgrade and the
//!   CONNECT handshake, boxed by [`serve`] before the task is spawned.
//! - Live ([`Live`]): the connection, its socket and its admission, in one
//!   box for the connection's life; the working loop (boxed while it
//!   runs) alternates with the idle wait (inline in the task).
//! - Closing: the close and the linger, boxed.
//!
//! The connection's `tracing` span lives only while the connection works,
//! opens or closes; the subscriber keeps one per span alive (~0.5 KB), so
//! an idle connection keeps none. Every span of one connection carries the
//! same fields: its listener, its address and, once CONNECT is read, its
//! client id.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::{Instrument, Span};

use super::connect::{self, Origin};
use super::{Connection, End, Io};
use crate::admission::Admitted;
use crate::broker::Shared;
use crate::transport::{Listener, ListenerInfo};

/// Serves one accepted connection until it closes: sets up its transport
/// (TLS, WebSocket), runs the CONNECT handshake and the connection loop.
/// The task's future holds the boxed opening steps, then the live
/// connection's box and its idle wait.
pub(crate) fn serve(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    stream: TcpStream,
    admitted: Admitted,
) -> impl Future<Output = ()> + Send {
    let opening = Box::pin(open(shared, listener, stream, admitted));
    async move {
        if let Some(live) = opening.await {
            live.run().await;
        }
    }
}

/// Sets up the transport and runs the CONNECT handshake, in the
/// connection's span. `None` when the client was refused or went away (it
/// has been lingered on and counted out then).
async fn open(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    stream: TcpStream,
    admitted: Admitted,
) -> Option<Box<Live>> {
    let peer = admitted.peer();
    let span = connection_span(&listener.info, peer, None);
    async move {
        let established = listener.establish_until_stop(&shared, stream).await?;
        shared.metrics.connections.inc();
        let mut io = Io {
            reader: established.reader,
            writer: established.writer,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            bytes_in: shared.metrics.bytes_in.clone(),
            bytes_out: shared.metrics.bytes_out.clone(),
        };
        let origin = Origin {
            listener: Arc::clone(&listener.info),
            peer,
            certificate_user: established.certificate_user,
        };
        let Some(connection) = connect::handshake(&shared, &mut io, origin).await else {
            io.linger().await;
            shared.metrics.connections.dec();
            return None;
        };
        shared.metrics.client_connected();
        Some(Box::new(Live {
            connection,
            io,
            listener: Arc::clone(&listener.info),
            admitted,
        }))
    }
    .instrument(span)
    .await
}

/// The span of one connection's events. `client_id` is recorded once
/// CONNECT is read when `None`.
fn connection_span(listener: &ListenerInfo, peer: SocketAddr, client_id: Option<&str>) -> Span {
    tracing::info_span!(
        "connection",
        listener = %listener.label,
        %peer,
        client_id,
    )
}

/// A connection after CONNACK: everything it keeps for its life, in one
/// box.
struct Live {
    connection: Connection,
    io: Io,
    /// The listener, for the connection's spans.
    listener: Arc<ListenerInfo>,
    /// The connection's place under the connection limits, and its
    /// address.
    admitted: Admitted,
}

impl Live {
    /// The connection loop: working ([`Connection::work`], whose state is
    /// large and lives on the heap only while it runs) and, once there has
    /// been nothing to do for [`super::BUFFER_IDLE`], waiting idle in the
    /// smallest state ([`Connection::idle`]); then the close.
    async fn run(mut self: Box<Self>) {
        let end = loop {
            let span = self.span();
            let budget = self.connection.budget.clone();
            let working = budget.turns(self.connection.work(&mut self.io));
            if let Some(end) = Box::pin(working.instrument(span)).await {
                break end;
            }
            if let Some(end) = self.connection.idle(&mut self.io).await {
                break end;
            }
        };
        Box::pin(self.close(end)).await;
    }

    /// Closes the connection (the will, the session), lingers on the
    /// socket, and gives back its place.
    async fn close(self: Box<Self>, end: End) {
        let span = self.span();
        let Live {
            connection,
            mut io,
            admitted,
            ..
        } = *self;
        async move {
            let shared = Arc::clone(&connection.shared);
            let budget = connection.budget.clone();
            budget.turns(connection.close(end, &mut io)).await;
            shared.metrics.clients_connected.dec();
            io.linger().await;
            shared.metrics.connections.dec();
            drop(admitted);
        }
        .instrument(span)
        .await;
    }

    /// A span for the connection's events while it works or closes.
    fn span(&self) -> Span {
        connection_span(
            &self.listener,
            self.admitted.peer(),
            Some(self.connection.session.client_id()),
        )
    }
}

#[cfg(test)]
mod tests {
    /// What every connection keeps for its life stays within the
    /// allocator's size classes it was fitted to (jemalloc: 448 and 384):
    /// one byte more costs every connection the next class, 64 bytes. The
    /// session lives in an `Arc`: its two counts come on top.
    #[test]
    fn a_live_connection_and_its_session_fit_their_size_classes() {
        let live = size_of::<super::Live>();
        let session = size_of::<crate::session::Session>() + 2 * size_of::<usize>();
        assert!(live <= 448, "Live: {live} bytes");
        assert!(session <= 384, "Session in its Arc: {session} bytes");
    }
}
