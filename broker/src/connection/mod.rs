//! One task per client connection.
//!
//! [`serve`] runs the CONNECT handshake ([`connect`]), then the connection
//! loop: a single `select!` over socket reads, deliveries queued on the
//! session, the keep-alive deadline, a takeover by another connection, and
//! broker shutdown. Packet handling lives in [`inbound`]; everything written
//! to the socket goes through [`outbound`]. When the loop ends, [`close`]
//! decides about the will and what happens to the session.

mod close;
mod connect;
mod inbound;
mod outbound;

pub(crate) use close::{schedule_expiry, write_offline};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tidemq_proto::mqtt::{self, DecodeError, LastWill, Packet, Protocol, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tracing::warn;

use crate::broker::Shared;
use crate::delivery::{self, PendingRecord, Stored};
use crate::durable::{DiskRef, DurableError, DurableStore};
use crate::message::Delivery;
use crate::session::{Kick, Session};

/// Serves one accepted TCP connection until it closes.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    shared.metrics.connections.inc();
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let mut io = Io {
        reader,
        writer,
        read_buf: BytesMut::with_capacity(4096),
        write_buf: BytesMut::with_capacity(4096),
    };
    if let Some(connection) = connect::handshake(&shared, &mut io, peer).await {
        connection.run(&mut io).await;
    }
    let _ = io.writer.shutdown().await;
    shared.metrics.connections.dec();
}

/// The socket halves and their buffers.
pub(crate) struct Io {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl Io {
    /// Reads until one packet is decoded. `Ok(None)` when the peer closed.
    async fn read_packet(
        &mut self,
        protocol: Protocol,
        max: usize,
    ) -> Result<Option<Packet>, DecodeError> {
        loop {
            if let Some(packet) = mqtt::decode(&mut self.read_buf, protocol, max)? {
                return Ok(Some(packet));
            }
            match self.reader.read_buf(&mut self.read_buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Writes everything buffered.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.write_buf.is_empty() {
            self.writer.write_all(&self.write_buf).await?;
            self.write_buf.clear();
        }
        Ok(())
    }
}

/// How a connection ended, which decides the DISCONNECT sent, the will,
/// and the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The client sent DISCONNECT with this reason (0x00: no will; 0x04: will).
    ClientDisconnect(ReasonCode),
    /// The socket closed or failed without DISCONNECT.
    Dropped,
    /// No packet within 1.5 × keep alive.
    KeepAliveTimeout,
    /// The client broke the protocol; close with this reason.
    Violation(ReasonCode),
    /// Another connection took the session over.
    TakenOver { session_continues: bool },
    /// The broker is shutting down.
    Shutdown,
    /// The message store failed; the client may retry after reconnecting.
    ServerError,
}

/// A connected client after a successful CONNECT.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    session: Arc<Session>,
    connection_id: u64,
    protocol: Protocol,
    username: Option<String>,
    keep_alive: Option<Duration>,
    will: Option<LastWill>,
    kick: oneshot::Receiver<Kick>,
    detached: Option<oneshot::Sender<()>>,
    /// Session expiry asked for in CONNECT (5.0 forbids raising it from 0 later).
    connect_expiry: u32,
    /// Largest packet accepted from the client.
    max_packet_in: usize,
    /// Largest packet the client accepts.
    max_packet_out: usize,
    /// Outbound QoS 1/2 messages allowed in flight.
    window: usize,
    /// Inbound QoS 2 messages allowed in flight.
    receive_maximum: usize,
    /// Inbound topic aliases.
    alias_in: HashMap<u16, String>,
    alias_in_max: u16,
    /// Outbound topic aliases the broker assigned.
    alias_out: HashMap<String, u16>,
    alias_out_max: u16,
    last_packet: Instant,
    /// Responses waiting for a message-store write, in the order their
    /// packets arrived (MQTT orders PUBACKs by their PUBLISHes).
    pending: FuturesOrdered<BoxFuture<'static, Vec<Step>>>,
    /// Message records of the PUBLISH packets read in this pass, with their
    /// responses: they go to the store as one writer job when the pass ends
    /// (or before any other response, to keep the order).
    records: Vec<(PendingRecord, Option<Packet>)>,
    /// A read of the stored backlog at the front of the session's queue.
    loading: FuturesOrdered<BoxFuture<'static, Loaded>>,
}

/// What a connection does once a store write completes.
pub(crate) struct Step {
    /// The write's outcome: deliveries to queue, or the failure.
    stored: Result<Option<Stored>, DurableError>,
    /// The packet to send then.
    response: Option<Packet>,
    /// Deliveries to queue after the response (retained messages after
    /// SUBACK).
    then: Vec<Delivery>,
}

/// Messages read back from the store for the session.
type Loaded = Result<Vec<(DiskRef, Option<Delivery>)>, DurableError>;

impl Connection {
    /// The connection loop; see the [module docs](self).
    async fn run(mut self, io: &mut Io) {
        let mut shutdown = self.shared.shutdown.clone();
        let end = loop {
            self.pump(io);
            if io.flush().await.is_err() {
                break End::Dropped;
            }
            let deadline = self
                .keep_alive
                .map(|k| self.last_packet + k + k / 2)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            let ended = tokio::select! {
                read = io.reader.read_buf(&mut io.read_buf) => match read {
                    Ok(0) | Err(_) => Some(End::Dropped),
                    Ok(_) => {
                        self.last_packet = Instant::now();
                        self.handle_buffered(io).err()
                    }
                },
                () = self.session.notify.notified() => None,
                Some(steps) = self.pending.next(), if !self.pending.is_empty() => {
                    // Take every other step that is ready too, so that their
                    // responses leave in one write.
                    let mut done = self.finish_steps(steps, io);
                    while done.is_ok() {
                        match self.pending.next().now_or_never() {
                            Some(Some(steps)) => done = self.finish_steps(steps, io),
                            _ => break,
                        }
                    }
                    done.err()
                }
                Some(loaded) = self.loading.next(), if !self.loading.is_empty() => {
                    self.finish_load(loaded).err()
                }
                () = tokio::time::sleep_until(deadline.into()), if self.keep_alive.is_some() => {
                    Some(End::KeepAliveTimeout)
                }
                kick = &mut self.kick => match kick {
                    Ok(Kick::TakenOver { session_continues }) => Some(End::TakenOver { session_continues }),
                    Err(_) => Some(End::Dropped),
                },
                changed = shutdown.changed() => match changed {
                    Ok(()) if !*shutdown.borrow() => None,
                    _ => Some(End::Shutdown),
                },
            };
            if let Some(end) = ended {
                break end;
            }
        };
        self.close(end, io).await;
    }

    /// Sends `response` now, or after the responses still waiting for a
    /// store write.
    fn respond(&mut self, io: &mut Io, response: Packet) {
        self.respond_then(io, response, Vec::new());
    }

    /// Like [`Connection::respond`], then queues `then` on the session.
    fn respond_then(&mut self, io: &mut Io, response: Packet, then: Vec<Delivery>) {
        self.flush_records();
        if self.pending.is_empty() {
            self.send(io, &response);
            self.queue_all(then);
        } else {
            self.after(futures_util::future::ready(Ok(None)), Some(response), then);
        }
    }

    /// Sends `response` once `write` is on disk.
    fn respond_after(
        &mut self,
        write: impl Future<Output = Result<(), DurableError>> + Send + 'static,
        response: Packet,
    ) {
        self.after(write.map(|r| r.map(|()| None)), Some(response), Vec::new());
    }

    /// Once `stored` completes, in order with the steps before it: queues
    /// its deliveries, sends `response`, then queues `then`.
    fn after(
        &mut self,
        stored: impl Future<Output = Result<Option<Stored>, DurableError>> + Send + 'static,
        response: Option<Packet>,
        then: Vec<Delivery>,
    ) {
        self.flush_records();
        self.pending.push_back(
            async move {
                vec![Step {
                    stored: stored.await,
                    response,
                    then,
                }]
            }
            .boxed(),
        );
    }

    /// Sends the records of this read pass to the store as one writer job,
    /// their responses queued behind it in order.
    fn flush_records(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let (records, responses): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.records).into_iter().unzip();
        let written = delivery::write_records(&self.shared, records);
        self.pending.push_back(
            async move {
                match written.await {
                    Ok(stored) => stored
                        .into_iter()
                        .zip(responses)
                        .map(|(stored, response)| Step {
                            stored: Ok(Some(stored)),
                            response,
                            then: Vec::new(),
                        })
                        .collect(),
                    Err(e) => vec![Step {
                        stored: Err(e),
                        response: None,
                        then: Vec::new(),
                    }],
                }
            }
            .boxed(),
        );
    }

    fn finish_steps(&mut self, steps: Vec<Step>, io: &mut Io) -> Result<(), End> {
        for step in steps {
            self.finish_step(step, io)?;
        }
        Ok(())
    }

    fn finish_step(&mut self, step: Step, io: &mut Io) -> Result<(), End> {
        match step.stored {
            Ok(stored) => {
                if let Some(stored) = stored {
                    stored.enqueue(&self.shared.metrics);
                }
            }
            Err(e) => {
                warn!(client = %self.session.client_id, error = %e, "message store write failed");
                return Err(End::ServerError);
            }
        }
        if let Some(response) = step.response {
            self.send(io, &response);
        }
        self.queue_all(step.then);
        Ok(())
    }

    fn finish_load(&mut self, loaded: Loaded) -> Result<(), End> {
        match loaded {
            Ok(loaded) => {
                self.session.lock().queue.fill(loaded);
                Ok(())
            }
            Err(e) => {
                warn!(client = %self.session.client_id, error = %e, "cannot read stored messages");
                Err(End::ServerError)
            }
        }
    }

    /// Queues in-memory deliveries (retained messages) on the session.
    fn queue_all(&mut self, deliveries: Vec<Delivery>) {
        let queue_qos0 = self.shared.config.load().session.queue_qos0_offline;
        for delivery in deliveries {
            if self.session.enqueue(delivery, queue_qos0).is_err() {
                self.session.count_drop();
                self.shared
                    .metrics
                    .messages_dropped
                    .with_label_values(&["queue_full"])
                    .inc();
            }
        }
    }

    /// The session's store and epoch, if it is persistent.
    fn durable(&self) -> Option<(DurableStore, u64)> {
        let store = self.shared.durable.clone()?;
        let epoch = self.session.lock().durable?;
        Some((store, epoch))
    }

    /// Decodes and handles every whole packet in the read buffer.
    fn handle_buffered(&mut self, io: &mut Io) -> Result<(), End> {
        loop {
            match mqtt::decode(&mut io.read_buf, self.protocol, self.max_packet_in) {
                Ok(Some(packet)) => {
                    self.shared
                        .metrics
                        .packets_in
                        .with_label_values(&[packet.name()])
                        .inc();
                    self.handle(packet, io)?;
                }
                Ok(None) => {
                    self.flush_records();
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(client = %self.session.client_id, error = %e, "bad packet");
                    return Err(End::Violation(e.reason_code()));
                }
            }
        }
    }
}
