//! One task per client connection.
//!
//! [`serve`] runs the CONNECT handshake ([`connect`]), then the
//! connection loop, in a task sized for the idle wait (the phases of the
//! task: [`mod@serve`]). While working, a single `select!` over socket
//! reads, deliveries queued on the session, the keep-alive deadline, a
//! takeover by another connection, and broker shutdown; after 100 ms with
//! nothing to do, the much smaller wait of [`idle`]. Packet handling lives
//! in [`inbound`]; everything written to the socket goes through
//! [`outbound`]. When the loop ends, [`close`] decides about the will and
//! what happens to the session.

mod acks;
mod adopt;
mod alias;
mod close;
mod connect;
mod idle;
mod inbound;
mod limits;
mod ordered;
mod outbound;
mod serve;
mod steps;
mod subscribe;
mod turn;

pub(crate) use acks::RecordSink;
pub(crate) use close::{end_for_takeover, hold_released, schedule_expiry, write_offline};
pub(crate) use serve::serve;
pub(crate) use turn::Lanes;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use prometheus::IntCounter;
use tidemq_proto::mqtt::{self, DecodeError, LastWill, Packet, Protocol, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;
use tracing::warn;

use crate::broker::Shared;
use crate::delivery::{StoreSink, Stored};
use crate::durable::{DiskRef, DurableError, DurableStore};
use crate::message::Delivery;
use crate::session::Session;
use crate::transport::{Reader, Writer};
use acks::{AckQueue, Done, Work};
use alias::TopicAliases;
use limits::Limits;
use ordered::Ordered;
use turn::{Budget, Busy, Lane};

/// Output buffered beyond this stops the connection from taking more work
/// (reading packets, moving queued deliveries into flight) until the
/// client has read some of it.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// Work units a connection may spend per turn on its worker (see
/// [`turn`]): 16 inbound packets (a packet costs a sixteenth more per KiB),
/// or 256 packets written, or a mix.
const TURN_BUDGET: u32 = 16 * turn::PACKET;

/// Waits for a lane before working, if the connection is busy and holds
/// none (see [`turn`]).
async fn take_lane(lane: &mut Option<Lane>, busy: &Busy, lanes: &Lanes) {
    if lane.is_none() && busy.is_busy() {
        *lane = lanes.enter().await;
    }
}

/// Writes some of `buf`, or with nothing to write flushes what the stream
/// holds; the bytes of `buf` written.
async fn write_some(writer: &mut Writer, buf: &[u8]) -> std::io::Result<usize> {
    if buf.is_empty() {
        writer.flush().await?;
        Ok(0)
    } else {
        writer.write(buf).await
    }
}

/// Keeps `timer` set no later than `deadline`. An earlier deadline sets it
/// now; a later one waits until the timer fires: the loop then parks it
/// far ahead and the next turn arms it again. So a busy connection does not
/// move its timers on every wake-up.
fn arm(timer: Pin<&mut Sleep>, deadline: Instant) {
    if deadline < timer.deadline().into_std() {
        timer.reset(deadline.into());
    }
}

/// How long a closed connection keeps reading what the client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// What the write buffer starts with once there is output: room for the
/// answers an idle client gets; more output grows it.
const WRITE_FIRST: usize = 512;

/// How long a connection with nothing to do keeps its empty buffers.
const BUFFER_IDLE: Duration = Duration::from_millis(100);

/// Whether `buf` holds memory but no bytes: memory it can give back.
fn spare(buf: &BytesMut) -> bool {
    buf.is_empty() && buf.capacity() > 0
}

/// The socket halves and their buffers. The buffers hold memory only while
/// they hold bytes ([`Io::release_idle`]).
pub(crate) struct Io {
    reader: Reader,
    writer: Writer,
    read_buf: BytesMut,
    write_buf: BytesMut,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
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
            match self.reader.read_some(&mut self.read_buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => self.bytes_in.inc_by(n as u64),
            }
        }
    }

    /// Closes the write side, then reads and drops what the client still
    /// sends, until it closes too or for [`LINGER`] at most: a packet of the
    /// client's arriving at a closed socket makes the kernel answer with a
    /// reset, which destroys the DISCONNECT (or CONNACK) the client has not
    /// read yet.
    async fn linger(&mut self) {
        let _ = self.writer.shutdown().await;
        let drain = async {
            // On the heap: an array here would make every connection's
            // task this much larger for its whole life.
            let mut scratch = vec![0u8; 4096];
            let mut left = 1usize << 20;
            while let Ok(n @ 1..) = self.reader.read(&mut scratch).await {
                left = left.saturating_sub(n);
                if left == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// The write buffer to encode into, given room for a few packets if
    /// it holds no memory.
    fn out(&mut self) -> &mut BytesMut {
        if self.write_buf.capacity() == 0 {
            self.write_buf.reserve(WRITE_FIRST);
        }
        &mut self.write_buf
    }

    /// Whether a buffer holds memory but no bytes.
    fn holds_spare(&self) -> bool {
        spare(&self.read_buf) || spare(&self.write_buf)
    }

    /// Gives back the memory of buffers that hold nothing: done once a
    /// connection has waited [`BUFFER_IDLE`] for anything to do, so that an
    /// idle connection keeps no buffer and a busy one keeps its own. Bytes
    /// still shared by messages in flight stay theirs.
    fn release_idle(&mut self) {
        for buf in [&mut self.read_buf, &mut self.write_buf] {
            if spare(buf) {
                *buf = BytesMut::new();
            }
        }
    }

    /// Writes what the socket takes without waiting.
    fn try_flush(&mut self) -> std::io::Result<()> {
        while !self.write_buf.is_empty() {
            match self.writer.try_write(&self.write_buf)? {
                0 => break,
                n => {
                    self.bytes_out.inc_by(n as u64);
                    self.write_buf.advance(n);
                }
            }
        }
        Ok(())
    }

    /// Writes everything buffered, giving up after `limit` (a client that
    /// does not read).
    async fn flush_within(&mut self, limit: Duration) -> std::io::Result<()> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let written = tokio::time::timeout(limit, async {
            self.writer.write_all(&self.write_buf).await?;
            self.bytes_out.inc_by(self.write_buf.len() as u64);
            self.writer.flush().await
        })
        .await;
        self.write_buf.clear();
        written.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
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
    /// The client left the broker's writes unread for the write timeout.
    WriteTimeout,
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
    username: Option<Box<str>>,
    /// Whether `$SYS` may be read without an ACL rule allowing it (the
    /// client came in on a loopback listener).
    sys_readable: bool,
    /// Packet sizes, windows, keep alive and write timeout.
    limits: Limits,
    /// Boxed: most connections have none, and every one pays for the space.
    will: Option<Box<LastWill>>,
    /// Session expiry asked for in CONNECT (5.0 forbids raising it from 0 later).
    connect_expiry: u32,
    /// Topic aliases, both ways.
    aliases: TopicAliases,
    /// When the last complete packet arrived (keep alive counts packets,
    /// not bytes).
    last_packet: Instant,
    /// Since when output has been waiting for the socket (`None`: nothing
    /// waits); the write timeout runs from here.
    write_blocked_since: Option<Instant>,
    /// Responses waiting for their store writes, in packet order.
    acks: AckQueue<StoreSink>,
    /// Stored messages completed in this pass, recorded together at its end
    /// (empty between passes).
    completions: Vec<DiskRef>,
    /// Input was held back (the connection had too much work held): whole
    /// packets may be waiting in the read buffer, and the keep alive
    /// restarts when input resumes.
    input_held: bool,
    /// A read of the stored backlog at the front of the session's queue.
    loading: Ordered<BoxFuture<'static, Loaded>>,
    /// What is left of this turn on the worker.
    budget: Budget,
    /// When a turn last ended with PUBLISH packets still waiting.
    busy: Busy,
}

/// Messages read back from the store for the session.
type Loaded = Result<Vec<(DiskRef, Option<Delivery>)>, DurableError>;

impl Connection {
    /// Works until the connection ends (`Some`) or has had nothing to do
    /// for [`BUFFER_IDLE`] with nothing in flight and no buffer held
    /// (`None`: it may wait idle).
    async fn work(&mut self, io: &mut Io) -> Option<End> {
        // The futures the loop waits on every time live across its turns:
        // made once (and again after they fire), not on every wake-up.
        let mut shutdown = self.shared.shutdown.clone();
        let shutting_down = async move {
            // An error is a broker that is gone: shut down too.
            let _ = shutdown.wait_for(|down| *down).await;
        };
        let session = Arc::clone(&self.session);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        tokio::pin! {
            let shutting_down = shutting_down;
            let idle_timer = tokio::time::sleep_until(far.into());
            let stuck_timer = tokio::time::sleep_until(far.into());
        }
        // Held only while working, and only once busy (see `turn`).
        let mut lane: Option<Lane> = None;
        loop {
            if self.budget.spent() {
                // Whatever is left (packets in the read buffer, queued
                // deliveries, ready responses) waits for the next turn, and
                // the lane goes to the next busy connection.
                self.shared.metrics.turns_yielded.inc();
                lane = None;
                tokio::task::yield_now().await;
            }
            if self.input_held {
                take_lane(&mut lane, &self.busy, &self.shared.lanes).await;
            }
            if let Err(end) = self.resume_input(io) {
                return Some(end);
            }
            if io.write_buf.len() < WRITE_HIGH_WATER {
                self.pump(io);
            }
            // The socket usually takes everything at once: no need to wait in
            // the select (or arm the write deadline) for that.
            let unwritten = io.write_buf.len();
            if let Err(e) = io.try_flush() {
                tracing::debug!(error = %e, "write failed");
                return Some(End::Dropped);
            }
            self.note_write_progress(unwritten, io);
            if self.budget.spent() {
                // Work may be waiting that no branch below would wake for
                // (whole packets already read): take the next turn first.
                continue;
            }
            // Never wait with a lane: another busy connection may work.
            lane = None;
            let reading = self.accepts_input(io);
            // Resumed by resume_input, which also restarts the keep alive.
            self.input_held |= !reading;
            // Without keep alive (or output waiting) the timer branch is off;
            // its deadline is then never looked at.
            let idle_until = self.last_packet
                + self
                    .limits
                    .keep_alive()
                    .map_or(Duration::ZERO, |k| k + k / 2);
            let stuck_at =
                self.write_blocked_since.unwrap_or(self.last_packet) + self.limits.write_timeout();
            // One timer for the keep alive and for settling: giving back
            // buffers, then waiting idle.
            let keep_alive_at =
                (self.limits.keep_alive().is_some() && reading).then_some(idle_until);
            let release_at =
                (io.holds_spare() || self.quiet(io)).then(|| Instant::now() + BUFFER_IDLE);
            let wake_at = keep_alive_at.into_iter().chain(release_at).min();
            if let Some(at) = wake_at {
                arm(idle_timer.as_mut(), at);
            }
            arm(stuck_timer.as_mut(), stuck_at);
            let ended = tokio::select! {
                read = io.reader.read_some(&mut io.read_buf), if reading => match read {
                    Ok(0) | Err(_) => Some(End::Dropped),
                    Ok(n) => {
                        io.bytes_in.inc_by(n as u64);
                        take_lane(&mut lane, &self.busy, &self.shared.lanes).await;
                        self.handle_buffered(io).err()
                    }
                },
                // Output, or TLS records and WebSocket frames the stream
                // still holds from an earlier write.
                written = write_some(&mut io.writer, &io.write_buf), if !io.write_buf.is_empty() || io.writer.pending() => match written {
                    Err(_) => Some(End::Dropped),
                    Ok(0) if !io.write_buf.is_empty() => Some(End::Dropped),
                    Ok(n) => {
                        let unwritten = io.write_buf.len();
                        io.bytes_out.inc_by(n as u64);
                        io.write_buf.advance(n);
                        self.note_write_progress(unwritten, io);
                        None
                    }
                },
                () = session.doorbell.rung() => End::taken_over(&self.session, self.connection_id),
                () = Self::store_drained(self.shared.durable.as_ref()), if self.held_by_store() => None,
                Some(released) = self.acks.next(), if self.acks.has_steps() => {
                    // Take every other step that is ready too, so that their
                    // responses leave in one write.
                    let mut done = self.released(released, io);
                    while done.is_ok() && !self.budget.spent() {
                        match self.acks.next().now_or_never() {
                            Some(Some(released)) => done = self.released(released, io),
                            _ => break,
                        }
                    }
                    done.err()
                }
                Some(loaded) = self.loading.next(), if !self.loading.is_empty() => {
                    self.finish_load(loaded).err()
                }
                () = idle_timer.as_mut(), if wake_at.is_some() => {
                    let now = Instant::now();
                    if release_at.is_some_and(|at| at <= now) {
                        io.release_idle();
                        if self.quiet(io) {
                            self.release_idle_state();
                            return None;
                        }
                    }
                    // Parked: the next turn arms it for what is still ahead.
                    idle_timer.as_mut().reset(far.into());
                    keep_alive_at.is_some_and(|at| at <= now).then_some(End::KeepAliveTimeout)
                }
                () = stuck_timer.as_mut(), if !io.write_buf.is_empty() => {
                    stuck_timer.as_mut().reset(far.into());
                    (Instant::now() >= stuck_at).then_some(End::WriteTimeout)
                }
                () = shutting_down.as_mut() => Some(End::Shutdown),
            };
            if ended.is_some() {
                return ended;
            }
        }
    }

    /// Keeps the write deadline: it runs from when the socket last took
    /// bytes while more were waiting, and only while some are (the clock is
    /// read only then).
    fn note_write_progress(&mut self, unwritten_before: usize, io: &Io) {
        if io.write_buf.is_empty() {
            self.write_blocked_since = None;
        } else if self.write_blocked_since.is_none() || io.write_buf.len() < unwritten_before {
            self.write_blocked_since = Some(Instant::now());
        }
    }

    /// Whether the connection takes more input now: not while too many
    /// responses wait for the store, nor while the client leaves too much
    /// of the output unread, nor while it waits for a store whose writers
    /// are backlogged.
    fn accepts_input(&self, io: &Io) -> bool {
        self.acks.len() < self.max_held()
            && io.write_buf.len() < WRITE_HIGH_WATER
            && !self.held_by_store()
    }

    /// Whether the connection waits for the message store while the store's
    /// writers have more queued than they may. Only such connections stop
    /// reading: one whose packets needed no store write so far (QoS 0,
    /// clean sessions) keeps being served, and if its next packet does
    /// need one, it holds from then on (one record over the limit at most).
    fn held_by_store(&self) -> bool {
        !self.acks.is_empty()
            && self
                .shared
                .durable
                .as_ref()
                .is_some_and(DurableStore::backlog_full)
    }

    /// Resolves once the message store takes more records (never without one).
    async fn store_drained(store: Option<&DurableStore>) {
        match store {
            Some(store) => store.backlog_drained().await,
            None => std::future::pending().await,
        }
    }

    /// Responses held before input stops: the receive maximum (QoS 1/2
    /// messages unacknowledged), and room for the other packets' answers.
    fn max_held(&self) -> usize {
        self.limits.receive_maximum() + 64
    }

    /// Handles the packets left in the read buffer once input is accepted
    /// again. The time input was held counts as activity for keep alive:
    /// the broker, not the client, was waiting.
    fn resume_input(&mut self, io: &mut Io) -> Result<(), End> {
        if !self.input_held || !self.accepts_input(io) {
            return Ok(());
        }
        self.input_held = false;
        self.last_packet = Instant::now();
        self.handle_buffered(io)
    }

    /// Sends a response through the [`AckQueue`]: at once when nothing
    /// waits before it, otherwise in its turn.
    fn respond(&mut self, io: &mut Io, work: Work<crate::delivery::PendingRecord, Stored>) {
        if let Some(done) = self.acks.push(work) {
            self.apply(done, io);
        }
    }

    /// A plain reply (PINGRESP, PUBREL, ...) in its turn.
    fn reply(&mut self, io: &mut Io, response: Packet) {
        self.respond(io, Work::reply(response));
    }

    fn released(
        &mut self,
        released: Result<Vec<Done<Stored>>, DurableError>,
        io: &mut Io,
    ) -> Result<(), End> {
        match released {
            Ok(done) => {
                for done in done {
                    self.budget.charge(turn::WRITE);
                    self.apply(done, io);
                }
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "message store write failed");
                Err(End::ServerError)
            }
        }
    }

    /// Records, sends and queues what a finished write released.
    fn apply(&mut self, done: Done<Stored>, io: &mut Io) {
        if let Some(response) = self.settle(done) {
            self.send(io, &response);
        }
    }

    /// The part of [`Connection::apply`] that needs no socket: queues the
    /// stored deliveries, records an inbound QoS 2 packet id as received,
    /// queues the deliveries that follow; returns the response to send.
    fn settle(&mut self, done: Done<Stored>) -> Option<Packet> {
        if done.refused {
            self.count_dropped("not_stored");
        }
        if let Some(stored) = done.stored {
            stored.enqueue(&self.shared.metrics);
        }
        if let Some(packet_id) = done.qos2 {
            self.session.lock().inbound_qos2.insert(packet_id);
        }
        self.queue_all(done.then);
        done.response
    }

    fn finish_load(&mut self, loaded: Loaded) -> Result<(), End> {
        match loaded {
            Ok(loaded) => {
                self.session.lock().queue.fill(loaded);
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "cannot read stored messages");
                Err(End::ServerError)
            }
        }
    }

    /// Queues in-memory deliveries (retained messages) on the session.
    fn queue_all(&mut self, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        let queue_qos0 = self.shared.config.load().session.queue_qos0_offline;
        for delivery in deliveries {
            if self.session.enqueue(delivery, queue_qos0).is_err() {
                self.count_queue_full(1);
            }
        }
    }

    /// Counts `n` deliveries the session's queue had no room for.
    fn count_queue_full(&self, n: u64) {
        self.session.count_drops(n);
        self.shared
            .metrics
            .messages_dropped
            .with_label_values(&["queue_full"])
            .inc_by(n);
    }

    /// The session's store and epoch, if it is persistent.
    fn durable(&self) -> Option<(DurableStore, u64)> {
        let store = self.shared.durable.clone()?;
        let epoch = self.session.lock().durable?;
        Some((store, epoch))
    }

    /// Decodes and handles the whole packets in the read buffer, until it
    /// holds no whole packet or the connection takes no more input (the
    /// rest waits: [`Connection::resume_input`]). Ends the read pass.
    fn handle_buffered(&mut self, io: &mut Io) -> Result<(), End> {
        let handled = self.handle_packets(io);
        // Whatever ended the pass, even an error or DISCONNECT, the records
        // of the messages read in it go to the store, and so do the
        // completions.
        self.acks.end_pass();
        self.record_completions();
        handled
    }

    fn handle_packets(&mut self, io: &mut Io) -> Result<(), End> {
        // One clock read per pass: every whole packet of it counts as
        // arrived when the pass began.
        let mut now = None;
        loop {
            if !self.accepts_input(io) {
                self.input_held = true;
                return Ok(());
            }
            if self.budget.spent() {
                self.input_held = true;
                if mqtt::next_is_publish(&io.read_buf) {
                    // Its messages come faster than its turns take them.
                    self.busy.spent();
                }
                return Ok(());
            }
            // One user property over the limit is enough to refuse a PUBLISH.
            let max_user_properties = self.limits.user_properties_in().saturating_add(1);
            let before = io.read_buf.len();
            match mqtt::decode_limited(
                &mut io.read_buf,
                self.protocol,
                self.limits.packet_in(),
                max_user_properties,
            ) {
                Ok(Some(packet)) => {
                    self.budget
                        .charge(turn::packet_units(before - io.read_buf.len()));
                    self.last_packet = *now.get_or_insert_with(Instant::now);
                    self.shared.metrics.packets_in.count(&packet);
                    self.handle(packet, io)?;
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::debug!(error = %e, "bad packet");
                    return Err(End::Violation(e.reason_code()));
                }
            }
        }
    }
}
