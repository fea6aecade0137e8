//! Helpers for broker integration tests: a broker on an ephemeral loopback
//! port, a raw MQTT client speaking bytes through the codec, rumqttc client
//! options, ([`process`]) the `tidemq` binary as a child process,
//! ([`cluster`]) three of them as one cluster, and ([`disk`]) a small
//! filesystem of a test's own.
#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod disk;
pub mod process;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tidemq_broker::{Broker, Config};
use tidemq_proto::mqtt::{
    self, ConnAck, Connect, ConnectProperties, Disconnect, DisconnectProperties, Packet, Protocol,
    PubResponse, Publish, PublishProperties, QoS, ReasonCode, SubAck, Subscribe, SubscribeFilter,
    SubscribeProperties, SubscriptionOptions,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for an expected packet.
pub const WAIT: Duration = Duration::from_secs(5);

/// A broker on 127.0.0.1 with an ephemeral port.
pub async fn start(mut config: Config) -> Broker {
    config.listener.bind = "127.0.0.1:0".parse().expect("loopback address");
    Broker::start(config, &prometheus::Registry::new())
        .await
        .expect("broker starts")
}

/// Like [`start`], with the registry its metrics are in.
pub async fn start_registered(mut config: Config) -> (Broker, prometheus::Registry) {
    config.listener.bind = "127.0.0.1:0".parse().expect("loopback address");
    let registry = prometheus::Registry::new();
    let broker = Broker::start(config, &registry)
        .await
        .expect("broker starts");
    (broker, registry)
}

/// The value of the sample `name` whose labels include `labels` (0 when
/// there is none).
pub fn sample(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric())
        .filter(|metric| {
            labels.iter().all(|(k, v)| {
                metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|metric| metric.get_counter().get_value() + metric.get_gauge().get_value())
        .sum()
}

/// A broker with the default configuration.
pub async fn start_default() -> Broker {
    start(Config::default()).await
}

/// A byte stream a [`Raw`] client can speak over (TCP, TLS, ...).
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// A client that speaks MQTT packets through the project's own codec over a
/// plain TCP socket (or any other byte stream), for exact control over what
/// is sent.
pub struct Raw {
    stream: Box<dyn Duplex>,
    buf: BytesMut,
    pub protocol: Protocol,
}

impl Raw {
    /// Opens a TCP connection (no CONNECT sent).
    pub async fn tcp(addr: SocketAddr, protocol: Protocol) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Raw::over(stream, protocol)
    }

    /// A client over an established stream (no CONNECT sent).
    pub fn over(stream: impl Duplex + 'static, protocol: Protocol) -> Raw {
        Raw {
            stream: Box::new(stream),
            buf: BytesMut::new(),
            protocol,
        }
    }

    /// Sends CONNECT for `client_id` and returns the CONNACK.
    pub async fn handshake(&mut self, client_id: &str) -> ConnAck {
        self.send(&Packet::Connect(connect_packet(self.protocol, client_id)))
            .await;
        match self.recv().await {
            Some(Packet::ConnAck(ack)) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and returns the CONNACK; `edit` adjusts the CONNECT first.
    pub async fn connect_with(
        addr: SocketAddr,
        protocol: Protocol,
        client_id: &str,
        edit: impl FnOnce(&mut Connect),
    ) -> (Raw, ConnAck) {
        let mut raw = Raw::tcp(addr, protocol).await;
        let mut connect = connect_packet(protocol, client_id);
        edit(&mut connect);
        raw.send(&Packet::Connect(connect)).await;
        match raw.recv().await {
            Some(Packet::ConnAck(ack)) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects with clean start and default options; asserts success.
    pub async fn connect(addr: SocketAddr, protocol: Protocol, client_id: &str) -> Raw {
        let (raw, ack) = Raw::connect_with(addr, protocol, client_id, |_| {}).await;
        assert_eq!(ack.reason, mqtt::ReasonCode::Success, "{ack:?}");
        raw
    }

    /// Sends one packet.
    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        mqtt::encode(packet, self.protocol, &mut out).expect("encodable packet");
        self.send_bytes(&out).await;
    }

    /// Sends raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to broker");
    }

    /// Sends raw bytes to a broker that may have closed the connection.
    pub async fn try_send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Closes the sending half: the broker reads the end of the stream.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// The next packet; `None` when the broker closed the connection.
    /// Panics if nothing arrives within [`WAIT`].
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.next())
            .await
            .expect("a packet or a close within the wait")
    }

    /// The next packet if one arrives within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Packet> {
        tokio::time::timeout(wait, self.next()).await.ok().flatten()
    }

    async fn next(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = mqtt::decode(&mut self.buf, self.protocol, 1 << 28)
                .expect("broker sends valid packets")
            {
                return Some(packet);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the broker closes; returns what it sent before.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        while let Some(packet) = self.recv().await {
            seen.push(packet);
        }
        seen
    }

    /// Subscribes to one filter and returns the SUBACK.
    pub async fn subscribe(&mut self, packet_id: u16, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_with(
            packet_id,
            filter,
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
            None,
        )
        .await
    }

    /// Subscribes with full options.
    pub async fn subscribe_with(
        &mut self,
        packet_id: u16,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> SubAck {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![SubscribeFilter {
                filter: filter.to_string(),
                options,
            }],
            properties: SubscribeProperties {
                subscription_identifier: id,
                user_properties: Vec::new(),
            },
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(ack)) => ack,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes; for QoS 1/2 completes the flow and returns the first response.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        packet_id: u16,
    ) -> Option<PubResponse> {
        self.publish_packet(publish(topic, payload, qos, retain, packet_id))
            .await
    }

    /// Sends `p` and completes its flow as [`Raw::publish`] does.
    pub async fn publish_packet(&mut self, p: Publish) -> Option<PubResponse> {
        let (qos, packet_id) = (p.qos, p.packet_id.unwrap_or(0));
        self.send(&Packet::Publish(p)).await;
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => match self.recv().await {
                Some(Packet::PubAck(ack)) => Some(ack),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                let rec = match self.recv().await {
                    Some(Packet::PubRec(rec)) => rec,
                    other => panic!("expected PUBREC, got {other:?}"),
                };
                self.send(&Packet::PubRel(PubResponse::success(packet_id)))
                    .await;
                match self.recv().await {
                    Some(Packet::PubComp(_)) => {}
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
                Some(rec)
            }
        }
    }

    /// Waits for a PUBLISH, acknowledging QoS 1/2 as a client must.
    pub async fn expect_publish(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => {
                self.ack(&p).await;
                p
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Acknowledges a received PUBLISH (QoS 2: PUBREC, then PUBREL → PUBCOMP).
    pub async fn ack(&mut self, p: &Publish) {
        let Some(id) = p.packet_id else { return };
        match p.qos {
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubResponse::success(id))).await,
            QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(PubResponse::success(id))).await;
                match self.recv().await {
                    Some(Packet::PubRel(rel)) => assert_eq!(rel.packet_id, id),
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(&Packet::PubComp(PubResponse::success(id))).await;
            }
            QoS::AtMostOnce => {}
        }
    }

    /// Asserts nothing arrives for a short while.
    pub async fn expect_silence(&mut self) {
        if let Some(packet) = self.recv_within(Duration::from_millis(300)).await {
            panic!("expected nothing, got {packet:?}");
        }
    }
}

/// A CONNECT of `client_id` with clean start, keep alive 60 and nothing else.
pub fn connect_packet(protocol: Protocol, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.to_string(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// A PUBLISH packet.
pub fn publish(topic: &str, payload: &[u8], qos: QoS, retain: bool, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_string(),
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        properties: PublishProperties::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    }
}

/// What a new 5.0 subscriber `client_id` to `filter` is sent at once (the
/// retained messages), each acknowledged, checked for its retain flag.
pub async fn retained_sent(
    addr: SocketAddr,
    client_id: &str,
    filter: &str,
) -> Result<Vec<Publish>, String> {
    let mut reader = Raw::connect(addr, Protocol::V5, client_id).await;
    reader.subscribe(1, filter, QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    while let Some(packet) = reader.recv_within(Duration::from_millis(300)).await {
        let Packet::Publish(publish) = packet else {
            return Err(format!("expected PUBLISH, got {packet:?}"));
        };
        if !publish.retain {
            return Err(format!("sent without its retain flag: {publish:?}"));
        }
        reader.ack(&publish).await;
        got.push(publish);
    }
    Ok(got)
}

/// A persistent (clean session 0) 3.1.1 client.
pub async fn persistent(addr: SocketAddr, client_id: &str) -> (Raw, bool) {
    let (raw, ack) = Raw::connect_with(addr, Protocol::V3_1_1, client_id, |c| {
        c.clean_start = false;
    })
    .await;
    assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
    (raw, ack.session_present)
}

/// Sends a normal DISCONNECT and waits until the broker closes.
pub async fn disconnect(mut raw: Raw) {
    raw.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: DisconnectProperties::default(),
    }))
    .await;
    // Wait for the broker to close, so the session is offline for sure.
    raw.until_closed().await;
}

/// A cheap argon2id hash of `password` for a password file, so tests stay
/// fast (the broker verifies any argon2 parameters).
pub fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use argon2::{Algorithm, Argon2, Params, Version};
    let salt = SaltString::encode_b64(b"tidemq-test-salt").expect("salt");
    let argon = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(1024, 1, 1, None).expect("params"),
    );
    argon
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}
