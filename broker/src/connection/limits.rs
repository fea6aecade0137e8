//! What a connection may send and receive, fixed when it connected.
//!
//! Every connection keeps these for its life, idle ones too, so they are
//! kept at the width MQTT gives them (packet sizes are 32-bit, in-flight
//! windows and keep alive 16-bit), 24 bytes in all, and read as the types
//! the code compares them with.

use std::time::Duration;

use tidemq_proto::mqtt::{Connect, Protocol};

use crate::config::Config;

/// A connection's limits, both ways.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Largest packet accepted from the client.
    packet_in: u32,
    /// `mqtt.max_user_properties` when the client connected.
    user_properties_in: u32,
    /// Largest packet the client accepts.
    packet_out: u32,
    /// How long the client may leave the broker's writes unread.
    write_timeout_ms: u32,
    /// Outbound QoS 1/2 messages allowed in flight.
    window: u16,
    /// Inbound QoS 2 messages allowed in flight.
    receive_maximum: u16,
    /// Keep alive in seconds (0: none).
    keep_alive: u16,
}

impl Limits {
    /// The limits of a connection that sent `connect`, with `keep_alive`
    /// seconds agreed.
    pub(super) fn new(config: &Config, connect: &Connect, keep_alive: u16) -> Limits {
        let mqtt = &config.mqtt;
        Limits {
            packet_in: mqtt.max_packet_size,
            user_properties_in: u32::try_from(mqtt.max_user_properties).unwrap_or(u32::MAX),
            packet_out: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
            write_timeout_ms: u32::try_from(mqtt.write_timeout().as_millis()).unwrap_or(u32::MAX),
            window: match (connect.protocol, connect.properties.receive_maximum) {
                (Protocol::V5, Some(max)) => max,
                _ => mqtt.max_inflight,
            },
            receive_maximum: mqtt.receive_maximum,
            keep_alive,
        }
    }

    /// Largest packet accepted from the client.
    pub(super) fn packet_in(self) -> usize {
        self.packet_in as usize
    }

    /// User properties accepted in one packet from the client.
    pub(super) fn user_properties_in(self) -> usize {
        self.user_properties_in as usize
    }

    /// Largest packet the client accepts.
    pub(super) fn packet_out(self) -> usize {
        self.packet_out as usize
    }

    /// How long the client may leave the broker's writes unread.
    pub(super) fn write_timeout(self) -> Duration {
        Duration::from_millis(u64::from(self.write_timeout_ms))
    }

    /// Outbound QoS 1/2 messages allowed in flight.
    pub(super) fn window(self) -> usize {
        usize::from(self.window)
    }

    /// Inbound QoS 2 messages allowed in flight.
    pub(super) fn receive_maximum(self) -> usize {
        usize::from(self.receive_maximum)
    }

    /// The keep alive, if any.
    pub(super) fn keep_alive(self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_secs(u64::from(self.keep_alive)))
    }
}
