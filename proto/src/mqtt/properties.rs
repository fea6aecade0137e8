//! MQTT 5.0 properties, grouped by the packet that carries them.
//!
//! Absent properties are `None` (or empty). When encoding for 3.1/3.1.1 no
//! properties are written.
//!
//! A PUBLISH's properties travel to every subscriber of its message, so
//! the ones that can be large are shared, not copied: cloning
//! [`PublishProperties`] costs a few reference counts however many user
//! properties, or however long a response topic, the publisher sent.

use std::sync::Arc;

use bytes::Bytes;

/// A user property: a UTF-8 name/value pair, in order, duplicates allowed.
pub type UserProperty = (String, String);

/// Properties of CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    /// 0x11: seconds the session outlives the connection.
    pub session_expiry_interval: Option<u32>,
    /// 0x21: QoS 1/2 publications the client accepts in flight.
    pub receive_maximum: Option<u16>,
    /// 0x27: largest packet the client accepts.
    pub maximum_packet_size: Option<u32>,
    /// 0x22: highest topic alias the client accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x19: whether the client wants response information.
    pub request_response_information: Option<bool>,
    /// 0x17: whether the client accepts reason strings and user properties on failures.
    pub request_problem_information: Option<bool>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
    /// 0x15: enhanced authentication method.
    pub authentication_method: Option<String>,
    /// 0x16: enhanced authentication data.
    pub authentication_data: Option<Bytes>,
}

/// Properties of the will message in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WillProperties {
    /// 0x18: seconds to wait before publishing the will.
    pub will_delay_interval: Option<u32>,
    /// 0x01: 1 when the payload is UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02: lifetime of the will message in seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03.
    pub content_type: Option<String>,
    /// 0x08.
    pub response_topic: Option<String>,
    /// 0x09.
    pub correlation_data: Option<Bytes>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}

/// Properties of CONNACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    /// 0x11: the session expiry the server uses.
    pub session_expiry_interval: Option<u32>,
    /// 0x21: QoS 1/2 publications the server accepts in flight.
    pub receive_maximum: Option<u16>,
    /// 0x24: highest QoS the server supports (absent means 2).
    pub maximum_qos: Option<u8>,
    /// 0x25: whether retained messages are supported (absent means yes).
    pub retain_available: Option<bool>,
    /// 0x27: largest packet the server accepts.
    pub maximum_packet_size: Option<u32>,
    /// 0x12: the client id the server assigned.
    pub assigned_client_identifier: Option<String>,
    /// 0x22: highest topic alias the server accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
    /// 0x28.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29.
    pub subscription_identifiers_available: Option<bool>,
    /// 0x2A.
    pub shared_subscription_available: Option<bool>,
    /// 0x13: keep alive the client must use instead of its own.
    pub server_keep_alive: Option<u16>,
    /// 0x1A.
    pub response_information: Option<String>,
    /// 0x1C.
    pub server_reference: Option<String>,
    /// 0x15.
    pub authentication_method: Option<String>,
    /// 0x16.
    pub authentication_data: Option<Bytes>,
}

/// Properties of PUBLISH. Clones share the text and the user properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    /// 0x01: 1 when the payload is UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02: lifetime of the message in seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x23: topic alias.
    pub topic_alias: Option<u16>,
    /// 0x08.
    pub response_topic: Option<Arc<str>>,
    /// 0x09.
    pub correlation_data: Option<Bytes>,
    /// 0x26 (shared: build with `vec![..].into()`).
    pub user_properties: Arc<Vec<UserProperty>>,
    /// 0x0B: identifiers of the subscriptions that matched (server to client
    /// only; may repeat).
    pub subscription_identifiers: Vec<u32>,
    /// 0x03.
    pub content_type: Option<Arc<str>>,
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckProperties {
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}

/// Properties of SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    /// 0x0B: 1 to 268,435,455.
    pub subscription_identifier: Option<u32>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}

/// Properties of UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubscribeProperties {
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}

/// Properties of DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    /// 0x11 (client to server only).
    pub session_expiry_interval: Option<u32>,
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
    /// 0x1C.
    pub server_reference: Option<String>,
}

/// Properties of AUTH.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    /// 0x15.
    pub authentication_method: Option<String>,
    /// 0x16.
    pub authentication_data: Option<Bytes>,
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}
