//! Malformed and forbidden input over raw bytes: every case gets the right
//! reason code (5.0: in DISCONNECT; 3.1.1: a plain close) and a closed
//! connection, and the broker keeps serving others.

mod common;

use common::Raw;
use tidemq_proto::mqtt::{Packet, Protocol, ReasonCode};

/// Sends `bytes` on a fresh 5.0 connection and returns the DISCONNECT
/// reason the broker closed with.
async fn v5_reason(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<ReasonCode> {
    let mut raw = Raw::connect(addr, Protocol::V5, "bad").await;
    raw.send_bytes(bytes).await;
    match raw.until_closed().await.last() {
        Some(Packet::Disconnect(d)) => Some(d.reason),
        _ => None,
    }
}

/// A 5.0 PUBLISH QoS 0 with `topic`, properties `props` and payload `b"x"`.
fn v5_publish(topic: &[u8], props: &[u8]) -> Vec<u8> {
    let mut body = vec![0, topic.len() as u8];
    body.extend_from_slice(topic);
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    body.push(b'x');
    let mut packet = vec![0x30, body.len() as u8];
    packet.extend(body);
    packet
}

#[tokio::test]
async fn malformed_packets_get_the_right_reason_code() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    let cases: Vec<(&str, Vec<u8>, ReasonCode)> = vec![
        (
            "reserved packet type 0",
            vec![0x00, 0x00],
            ReasonCode::MalformedPacket,
        ),
        (
            "PUBLISH with QoS 3",
            vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            ReasonCode::MalformedPacket,
        ),
        (
            "SUBSCRIBE with wrong fixed-header flags",
            vec![0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'],
            ReasonCode::MalformedPacket,
        ),
        (
            "remaining length of five bytes",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            ReasonCode::MalformedPacket,
        ),
        (
            "invalid UTF-8 in a topic",
            v5_publish(&[0xC3, 0x28], &[]),
            ReasonCode::MalformedPacket,
        ),
        (
            "NUL in a topic",
            v5_publish(b"a\0b", &[]),
            ReasonCode::MalformedPacket,
        ),
        (
            "wildcard in a PUBLISH topic",
            v5_publish(b"a/#", &[]),
            ReasonCode::TopicNameInvalid,
        ),
        (
            "unknown property",
            v5_publish(b"a", &[0x7F, 0x00]),
            ReasonCode::MalformedPacket,
        ),
        (
            "duplicated property",
            v5_publish(b"a", &[0x01, 0x00, 0x01, 0x00]),
            ReasonCode::ProtocolError,
        ),
        (
            "QoS 1 PUBLISH with packet id 0",
            vec![0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00],
            ReasonCode::ProtocolError,
        ),
        (
            "a second CONNECT",
            {
                let mut c = vec![
                    0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x00,
                    0x00, 0x00,
                ];
                c[1] = (c.len() - 2) as u8;
                c
            },
            ReasonCode::ProtocolError,
        ),
        (
            "a CONNACK from the client",
            vec![0x20, 0x03, 0x00, 0x00, 0x00],
            ReasonCode::ProtocolError,
        ),
        (
            "AUTH without an authentication method",
            vec![0xF0, 0x00],
            ReasonCode::ProtocolError,
        ),
        (
            "SUBSCRIBE with an invalid filter",
            vec![
                0x82, 0x0B, 0x00, 0x01, 0x00, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x00,
            ],
            ReasonCode::TopicFilterInvalid,
        ),
        (
            "PUBLISH using an unknown topic alias",
            v5_publish(b"", &[0x23, 0x00, 0x05]),
            ReasonCode::ProtocolError,
        ),
    ];
    for (name, bytes, expected) in cases {
        let got = v5_reason(addr, &bytes).await;
        assert_eq!(got, Some(expected), "{name}: {bytes:02x?}");
    }
    // The broker still serves well-behaved clients.
    let mut ok = Raw::connect(addr, Protocol::V5, "fine").await;
    ok.send(&Packet::PingReq).await;
    assert_eq!(ok.recv().await, Some(Packet::PingResp));
    let errors: u64 = [
        "malformed_packet",
        "protocol_error",
        "topic_name_invalid",
        "topic_filter_invalid",
    ]
    .iter()
    .map(|r| {
        broker
            .shared()
            .metrics
            .protocol_errors
            .with_label_values(&[r])
            .get()
    })
    .sum();
    assert_eq!(errors, 15, "every violation is counted");
    broker.shutdown().await;
}

#[tokio::test]
async fn v3_violations_close_without_a_packet() {
    let broker = common::start_default().await;
    let mut raw = Raw::connect(broker.local_addr(), Protocol::V3_1_1, "v3bad").await;
    raw.send_bytes(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01])
        .await;
    assert!(raw.until_closed().await.is_empty());
    broker.shutdown().await;
}

#[tokio::test]
async fn bad_connects() {
    let broker = common::start_default().await;
    let addr = broker.local_addr();
    // Unknown protocol level 6 with name MQTT: CONNACK return code 1 (3.1.1 format).
    let mut raw = Raw::tcp(addr, Protocol::V3_1_1).await;
    raw.send_bytes(&[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x01, b'c',
    ])
    .await;
    let seen = raw.until_closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::ConnAck(a)] if a.reason == ReasonCode::UnsupportedProtocolVersion),
        "{seen:?}"
    );
    // A first packet that is not CONNECT: closed without an answer.
    let mut raw = Raw::tcp(addr, Protocol::V3_1_1).await;
    raw.send(&Packet::PingReq).await;
    assert!(raw.until_closed().await.is_empty());
    // Reserved CONNECT flag set: closed.
    let mut raw = Raw::tcp(addr, Protocol::V3_1_1).await;
    raw.send_bytes(&[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3C, 0x00, 0x01, b'c',
    ])
    .await;
    assert!(raw.until_closed().await.is_empty());
    // A truncated CONNECT followed by a close does not disturb the broker.
    let mut raw = Raw::tcp(addr, Protocol::V3_1_1).await;
    raw.send_bytes(&[0x10, 0x20, 0x00, 0x04, b'M']).await;
    drop(raw);
    let _still_fine = Raw::connect(addr, Protocol::V3_1_1, "after").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn session_expiry_cannot_be_raised_from_zero_at_disconnect() {
    let broker = common::start_default().await;
    let mut raw = Raw::connect(broker.local_addr(), Protocol::V5, "raise").await;
    raw.send(&Packet::Disconnect(tidemq_proto::mqtt::Disconnect {
        reason: ReasonCode::Success,
        properties: tidemq_proto::mqtt::DisconnectProperties {
            session_expiry_interval: Some(100),
            ..Default::default()
        },
    }))
    .await;
    let seen = raw.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::ProtocolError),
        "{seen:?}"
    );
    broker.shutdown().await;
}
