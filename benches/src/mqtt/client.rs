//! A minimal MQTT client on the `tidemq-proto` codec: just enough protocol
//! for load generation, and nothing that would cost the load tool CPU the
//! broker under test could use (no request channel, no event loop task).
//!
//! Packets are encoded into a write buffer and sent together by
//! [`Client::flush`], so a burst of publishes or acknowledgements costs one
//! `write` call. [`Client::fill`] is cancel-safe and meant for `select!`
//! loops, with [`Client::next_buffered`] taking the whole packets it brought.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::BytesMut;
use tidemq_proto::mqtt::{
    self, Connect, ConnectProperties, Disconnect, Packet, Protocol, QoS, Subscribe,
    SubscribeFilter, SubscribeProperties, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::target::{Duplex, Target};

/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 16 * 1024 * 1024;

/// Session expiry a persistent 5.0 session asks for, in seconds.
pub const PERSISTENT_EXPIRY_SECS: u32 = 3600;

/// The kind of session a client asks for in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionKind {
    /// Clean session (3.1.1) or clean start with no expiry (5.0): the broker
    /// forgets the session when the connection ends.
    #[default]
    Clean,
    /// Clean session 0 (3.1.1) or clean start 0 with a session expiry of
    /// [`PERSISTENT_EXPIRY_SECS`] (5.0): the broker keeps the session, and
    /// stores its QoS 1/2 messages, after the connection ends. An existing
    /// session of the same client id is resumed.
    Persistent,
}

/// One connected MQTT client.
pub struct Client {
    stream: Box<dyn Duplex>,
    protocol: Protocol,
    read_buf: BytesMut,
    write_buf: BytesMut,
    session_present: bool,
}

impl Client {
    /// Opens a connection to `target` and completes the CONNECT/CONNACK
    /// handshake with a session of kind `session`. Wrap it in a timeout: it
    /// waits as long as the broker does.
    pub async fn connect(
        target: &Target,
        client_id: String,
        protocol: Protocol,
        keep_alive: u16,
        session: SessionKind,
    ) -> anyhow::Result<Client> {
        let stream = target.open().await?;
        let mut client = Client {
            stream,
            protocol,
            read_buf: BytesMut::with_capacity(4096),
            write_buf: BytesMut::with_capacity(4096),
            session_present: false,
        };
        let persistent = session == SessionKind::Persistent;
        let (username, password) = target.login(&client_id);
        client.send(&Packet::Connect(Connect {
            protocol,
            clean_start: !persistent,
            keep_alive,
            client_id,
            will: None,
            username,
            password,
            properties: ConnectProperties {
                // Only 5.0 encodes properties; 3.1.1 has clean session 0.
                session_expiry_interval: persistent.then_some(PERSISTENT_EXPIRY_SECS),
                ..ConnectProperties::default()
            },
        }))?;
        client.flush().await?;
        match client.read_packet().await? {
            Packet::ConnAck(ack) if !ack.reason.is_error() => {
                client.session_present = ack.session_present;
                Ok(client)
            }
            Packet::ConnAck(ack) => bail!("CONNACK refused: {:?}", ack.reason),
            other => bail!("expected CONNACK, got {}", other.name()),
        }
    }

    /// Whether the broker resumed an existing session (CONNACK's session
    /// present flag).
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// Subscribes to one filter and waits for its SUBACK. Messages arriving
    /// before it (retained ones) are dropped.
    pub async fn subscribe(
        &mut self,
        filter: String,
        qos: QoS,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        const PACKET_ID: u16 = 1;
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: PACKET_ID,
            filters: vec![SubscribeFilter {
                filter,
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: SubscribeProperties::default(),
        }))?;
        self.flush().await?;
        tokio::time::timeout(timeout, async {
            loop {
                match self.read_packet().await? {
                    Packet::SubAck(ack) if ack.packet_id == PACKET_ID => {
                        return match ack.reasons.first() {
                            Some(reason) if !reason.is_error() => Ok(()),
                            reason => bail!("SUBACK refused: {reason:?}"),
                        };
                    }
                    _ => {}
                }
            }
        })
        .await
        .context("no SUBACK in time")?
    }

    /// Encodes `packet` into the write buffer; [`flush`](Self::flush) sends it.
    pub fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        mqtt::encode(packet, self.protocol, &mut self.write_buf)
            .with_context(|| format!("encoding {}", packet.name()))
    }

    /// Writes everything encoded so far.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.write_buf.is_empty() {
            self.stream.write_all(&self.write_buf).await?;
            self.write_buf.clear();
            // TLS records and WebSocket frames leave on flush.
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// Reads more bytes from the socket; fails when the broker closed it.
    /// Cancel-safe.
    pub async fn fill(&mut self) -> anyhow::Result<()> {
        if self.stream.read_buf(&mut self.read_buf).await? == 0 {
            bail!("connection closed by the broker");
        }
        Ok(())
    }

    /// The next whole packet already read, if any.
    pub fn next_buffered(&mut self) -> anyhow::Result<Option<Packet>> {
        Ok(mqtt::decode(&mut self.read_buf, self.protocol, MAX_PACKET)?)
    }

    /// Reads until one whole packet arrived.
    pub async fn read_packet(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(packet) = self.next_buffered()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }

    /// Sends DISCONNECT (normal disconnection) and waits up to `timeout`
    /// for the broker to close the connection, which it does once it has
    /// handled the DISCONNECT: a persistent session is offline when this
    /// returns `Ok`. Packets still arriving are dropped.
    pub async fn disconnect_and_wait(mut self, timeout: Duration) -> anyhow::Result<()> {
        self.disconnect_until_closed(timeout).await
    }

    /// Sends DISCONNECT (normal disconnection) and closes the socket once
    /// the broker has closed its end, or after a second.
    pub async fn disconnect(mut self) {
        let _ = self.disconnect_until_closed(Duration::from_secs(1)).await;
        let _ = self.stream.shutdown().await;
    }

    /// Sends DISCONNECT and reads, dropping what arrives, until the broker
    /// closes the connection or `timeout` passes.
    ///
    /// The broker closes first on DISCONNECT [MQTT-3.14.4-1], so the
    /// connection's TIME_WAIT stays on the broker's side. Were the tool to
    /// close first, each run would leave its ports in TIME_WAIT for a minute,
    /// and the next run's `connect()` would spend its CPU looking for a free
    /// port (up to 2 ms per connect here after a few runs).
    async fn disconnect_until_closed(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.send(&Packet::Disconnect(Disconnect::default()))?;
        self.flush().await?;
        tokio::time::timeout(timeout, async {
            loop {
                self.read_buf.clear();
                if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                    return anyhow::Ok(());
                }
            }
        })
        .await
        .context("the broker did not close the connection after DISCONNECT")?
    }
}
