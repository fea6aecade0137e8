//! The packets of MQTT 3.1, 3.1.1 and 5.0.

use bytes::Bytes;

use super::properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
};
use super::reason::ReasonCode;

/// The protocol level a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3).
    V3_1,
    /// MQTT 3.1.1 (protocol name `MQTT`, level 4).
    V3_1_1,
    /// MQTT 5.0 (protocol name `MQTT`, level 5).
    V5,
}

impl Protocol {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V3_1 => 3,
            Protocol::V3_1_1 => 4,
            Protocol::V5 => 5,
        }
    }

    /// Whether this is MQTT 5.0.
    pub fn is_v5(self) -> bool {
        self == Protocol::V5
    }
}

/// Quality of service of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// Fire and forget.
    #[default]
    AtMostOnce = 0,
    /// Acknowledged delivery (PUBACK); duplicates possible.
    AtLeastOnce = 1,
    /// Exactly-once delivery (PUBREC, PUBREL, PUBCOMP).
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS with this wire value, if valid.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Client request to connect.
    Connect(Connect),
    /// Connect acknowledgement.
    ConnAck(ConnAck),
    /// An application message.
    Publish(Publish),
    /// QoS 1 acknowledgement.
    PubAck(PubResponse),
    /// QoS 2, part 1: publish received.
    PubRec(PubResponse),
    /// QoS 2, part 2: publish release.
    PubRel(PubResponse),
    /// QoS 2, part 3: publish complete.
    PubComp(PubResponse),
    /// Subscribe request.
    Subscribe(Subscribe),
    /// Subscribe acknowledgement.
    SubAck(SubAck),
    /// Unsubscribe request.
    Unsubscribe(Unsubscribe),
    /// Unsubscribe acknowledgement.
    UnsubAck(UnsubAck),
    /// Keep-alive ping.
    PingReq,
    /// Keep-alive answer.
    PingResp,
    /// Disconnect notification (either direction in 5.0).
    Disconnect(Disconnect),
    /// Enhanced authentication exchange (5.0 only).
    Auth(Auth),
}

/// The names of the packet types, by type number ([`Packet::type_number`];
/// 0 is reserved).
pub const PACKET_TYPE_NAMES: [&str; 16] = [
    "RESERVED",
    "CONNECT",
    "CONNACK",
    "PUBLISH",
    "PUBACK",
    "PUBREC",
    "PUBREL",
    "PUBCOMP",
    "SUBSCRIBE",
    "SUBACK",
    "UNSUBSCRIBE",
    "UNSUBACK",
    "PINGREQ",
    "PINGRESP",
    "DISCONNECT",
    "AUTH",
];

impl Packet {
    /// The packet type's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        PACKET_TYPE_NAMES[usize::from(self.type_number() & 0x0f)]
    }
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol level the client asked for.
    pub protocol: Protocol,
    /// Clean session (3.1.1) / clean start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// The client identifier (may be empty).
    pub client_id: String,
    /// The will message, if any.
    pub will: Option<LastWill>,
    /// User name, if present.
    pub username: Option<String>,
    /// Password, if present.
    pub password: Option<Bytes>,
    /// 5.0 properties.
    pub properties: ConnectProperties,
}

/// The will message of CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Topic to publish to.
    pub topic: String,
    /// Message body.
    pub payload: Bytes,
    /// QoS to publish with.
    pub qos: QoS,
    /// Whether to publish it retained.
    pub retain: bool,
    /// 5.0 will properties.
    pub properties: WillProperties,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumed a session.
    pub session_present: bool,
    /// Outcome. Encoded for 3.1/3.1.1 as the matching return code (see
    /// [`ReasonCode::connack_v3`]).
    pub reason: ReasonCode,
    /// 5.0 properties.
    pub properties: ConnAckProperties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Redelivery flag.
    pub dup: bool,
    /// Quality of service.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name; empty in 5.0 when a topic alias stands for it.
    pub topic: String,
    /// Packet identifier; present exactly when `qos` is 1 or 2.
    pub packet_id: Option<u16>,
    /// 5.0 properties.
    pub properties: PublishProperties,
    /// Application payload.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP: a packet id and, in 5.0, a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    /// The PUBLISH (or PUBREL) this answers.
    pub packet_id: u16,
    /// Outcome (5.0; always success in 3.1.1).
    pub reason: ReasonCode,
    /// 5.0 properties.
    pub properties: AckProperties,
}

impl PubResponse {
    /// A successful response without properties.
    pub fn success(packet_id: u16) -> Self {
        Self {
            packet_id,
            reason: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }
}

/// How a 5.0 subscription treats retained messages when it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at subscribe time.
    #[default]
    SendAtSubscribe = 0,
    /// Send them only if the subscription did not exist yet.
    SendIfNew = 1,
    /// Never send retained messages for this subscription.
    DoNotSend = 2,
}

/// Options of one SUBSCRIBE topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the client accepts.
    pub qos: QoS,
    /// 5.0: do not send the client its own publications.
    pub no_local: bool,
    /// 5.0: keep the retain flag of forwarded messages.
    pub retain_as_published: bool,
    /// 5.0: retained message handling.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    const QOS_MASK: u8 = 0x03;
    const NO_LOCAL: u8 = 0x04;
    const RETAIN_AS_PUBLISHED: u8 = 0x08;
    const RETAIN_HANDLING_SHIFT: u8 = 4;

    /// The 5.0 options byte: retain handling (bits 5-4), retain as
    /// published (3), no local (2), maximum QoS (1-0).
    pub fn to_byte(&self) -> u8 {
        let mut byte = self.qos as u8 | (self.retain_handling as u8) << Self::RETAIN_HANDLING_SHIFT;
        if self.no_local {
            byte |= Self::NO_LOCAL;
        }
        if self.retain_as_published {
            byte |= Self::RETAIN_AS_PUBLISHED;
        }
        byte
    }

    /// The options of a 5.0 options byte; reserved bits 7-6 are the
    /// caller's to check. Fails on QoS 3 and retain handling 3.
    pub fn from_byte(byte: u8) -> Result<SubscriptionOptions, &'static str> {
        let qos = QoS::from_u8(byte & Self::QOS_MASK).ok_or("subscription with QoS 3")?;
        let retain_handling = match (byte >> Self::RETAIN_HANDLING_SHIFT) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err("retain handling 3"),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & Self::NO_LOCAL != 0,
            retain_as_published: byte & Self::RETAIN_AS_PUBLISHED != 0,
            retain_handling,
        })
    }
}

/// One topic filter of SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// The topic filter (may be a `$share/{group}/{filter}`).
    pub filter: String,
    /// Its options.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// At least one filter.
    pub filters: Vec<SubscribeFilter>,
    /// 5.0 properties.
    pub properties: SubscribeProperties,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The SUBSCRIBE this answers.
    pub packet_id: u16,
    /// One per filter: `GrantedQoS0/1/2` or a failure. In 3.1.1 every
    /// failure is encoded as 0x80.
    pub reasons: Vec<ReasonCode>,
    /// 5.0 properties.
    pub properties: AckProperties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// At least one filter.
    pub filters: Vec<String>,
    /// 5.0 properties.
    pub properties: UnsubscribeProperties,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The UNSUBSCRIBE this answers.
    pub packet_id: u16,
    /// 5.0: one per filter. Empty (and not encoded) in 3.1.1.
    pub reasons: Vec<ReasonCode>,
    /// 5.0 properties.
    pub properties: AckProperties,
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Why (5.0; `NormalDisconnection` is 0x00).
    pub reason: ReasonCode,
    /// 5.0 properties.
    pub properties: DisconnectProperties,
}

/// AUTH (5.0 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// `Success`, `ContinueAuthentication` or `ReAuthenticate`.
    pub reason: ReasonCode,
    /// Properties.
    pub properties: AuthProperties,
}
