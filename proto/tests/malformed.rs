//! Every kind of invalid input fails with the error variant (and so the
//! reason code) the spec asks for.

mod common;

use bytes::BytesMut;
use common::{cat, decode_err, decode_one};
use tidemq_proto::mqtt::{DecodeError, Packet, Protocol, ReasonCode, decode};

const V3: Protocol = Protocol::V3_1;
const V4: Protocol = Protocol::V3_1_1;
const V5: Protocol = Protocol::V5;
const ALL: [Protocol; 3] = [V3, V4, V5];

fn is_malformed(e: &DecodeError) -> bool {
    matches!(e, DecodeError::Malformed(_))
}

fn is_protocol(e: &DecodeError) -> bool {
    matches!(e, DecodeError::Protocol(_))
}

#[track_caller]
fn assert_malformed(bytes: &[u8], protocol: Protocol) {
    let e = decode_err(bytes, protocol);
    assert!(is_malformed(&e), "expected Malformed, got {e:?}");
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
}

#[track_caller]
fn assert_protocol_error(bytes: &[u8], protocol: Protocol) {
    let e = decode_err(bytes, protocol);
    assert!(is_protocol(&e), "expected Protocol, got {e:?}");
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
}

#[test]
fn truncated_remaining_length_waits_for_more() {
    for p in ALL {
        assert_eq!(decode_one(&[0x30, 0x80], p), Ok(None));
        assert_eq!(decode_one(&[0x30, 0xFF, 0xFF, 0xFF], p), Ok(None));
    }
}

#[test]
fn remaining_length_longer_than_four_bytes() {
    for p in ALL {
        assert_malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], p);
        // Refused as soon as the fourth byte shows a continuation bit.
        assert_malformed(&[0x30, 0x80, 0x80, 0x80, 0x80], p);
    }
}

#[test]
fn reserved_packet_types() {
    for p in ALL {
        assert_malformed(&[0x00, 0x00], p);
    }
    assert_malformed(&[0xF0, 0x00], V4);
    assert_malformed(&[0xF0, 0x00], V3);
    assert!(decode_one(&[0xF0, 0x00], V5).is_ok());
}

#[test]
fn reserved_fixed_header_flags() {
    for p in ALL {
        assert_malformed(&[0x41, 0x02, 0x00, 0x01], p); // PUBACK
        assert_malformed(&[0x60, 0x02, 0x00, 0x01], p); // PUBREL without 0b0010
        assert_malformed(&[0xC1, 0x00], p); // PINGREQ
        assert_malformed(&[0xE8, 0x00], p); // DISCONNECT
        assert_malformed(&cat(&[&[0x80, 6, 0, 1, 0, 1], b"#", &[0]]), p);
        assert_malformed(&cat(&[&[0xA0, 5, 0, 1, 0, 1], b"#"]), p);
    }
    // Only 3.1 let SUBSCRIBE carry DUP.
    let dup_subscribe = cat(&[&[0x8A, 6, 0, 1, 0, 1], b"#", &[0]]);
    assert_malformed(&dup_subscribe, V4);
    assert!(decode_one(&dup_subscribe, V3).is_ok());
}

fn connect(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let body = cat(&[
        &[0x00, u8::try_from(name.len()).expect("short name")],
        name,
        &[level, flags, 0x00, 0x3C],
        rest,
    ]);
    cat(&[
        &[0x10, u8::try_from(body.len()).expect("short body")],
        &body,
    ])
}

#[test]
fn unsupported_protocol_name_or_level() {
    for (name, level) in [
        (&b"MQTX"[..], 4),
        (b"MQTT", 3),
        (b"MQTT", 6),
        (b"MQIsdp", 4),
    ] {
        let e = decode_err(&connect(name, level, 0x02, &[0, 0]), V4);
        assert_eq!(
            e,
            DecodeError::UnsupportedProtocol {
                name: String::from_utf8(name.to_vec()).unwrap(),
                level
            }
        );
        assert_eq!(e.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    }
}

#[test]
fn connect_flags() {
    // Reserved bit.
    assert_malformed(&connect(b"MQTT", 4, 0x03, &[0, 0]), V4);
    // Will QoS 3.
    let will = [0, 0, 0, 1, b't', 0, 0];
    assert_malformed(&connect(b"MQTT", 4, 0x1E, &will), V4);
    // Will QoS or retain without a will.
    assert_malformed(&connect(b"MQTT", 4, 0x0A, &[0, 0]), V4);
    assert_malformed(&connect(b"MQTT", 4, 0x22, &[0, 0]), V4);
    // Password without user name: malformed before 5.0 only.
    let password = [0, 0, 0, 1, b'p'];
    assert_malformed(&connect(b"MQTT", 4, 0x42, &password), V4);
    assert_malformed(&connect(b"MQIsdp", 3, 0x42, &password), V4);
    assert!(decode_one(&connect(b"MQTT", 5, 0x42, &[0, 0, 0, 0, 1, b'p']), V5).is_ok());
    // Will topic with a wildcard.
    let bad_will = [0, 0, 0, 1, b'#', 0, 0];
    assert_eq!(
        decode_err(&connect(b"MQTT", 4, 0x06, &bad_will), V4),
        DecodeError::InvalidTopicName
    );
    // Bytes after the payload.
    assert_malformed(&connect(b"MQTT", 4, 0x02, &[0, 0, 0xFF]), V4);
}

#[test]
fn invalid_utf8_and_nul_in_strings() {
    assert_malformed(&connect(b"MQTT", 4, 0x02, &[0, 2, 0xC3, 0x28]), V4);
    assert_malformed(&connect(b"MQTT", 4, 0x02, &[0, 2, 0xED, 0xA0]), V4); // surrogate
    assert_malformed(&connect(b"MQTT", 4, 0x02, &[0, 2, b'a', 0]), V4);
    assert_malformed(&cat(&[&[0x30, 5, 0, 3], b"a\0b"]), V4);
    assert_malformed(&[0x30, 4, 0, 2, 0xFF, 0xFE], V4);
    // User property value.
    let bytes = [0x30, 12, 0, 1, b't', 7, 0x26, 0, 1, b'k', 0, 1, 0xFF, b'x'];
    assert_malformed(&bytes, V5);
}

#[test]
fn properties() {
    // Duplicate message expiry interval.
    let dup = [
        0x30, 15, 0, 1, b't', 10, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2, b'x',
    ];
    assert_protocol_error(&dup, V5);
    // User properties and subscription identifiers may repeat in PUBLISH.
    let repeat = [
        0x30, 16, 0, 1, b't', 12, 0x26, 0, 0, 0, 0, 0x26, 0, 0, 0, 0, 0x0B, 1,
    ];
    assert!(decode_one(&repeat, V5).is_ok());
    let sub_ids = [0x30, 8, 0, 1, b't', 4, 0x0B, 1, 0x0B, 2];
    assert!(decode_one(&sub_ids, V5).is_ok());
    // ... but not the subscription identifier of SUBSCRIBE.
    let sub = cat(&[&[0x82, 10, 0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1], b"#", &[0]]);
    assert_protocol_error(&sub, V5);
    // Unknown identifier, and one PUBLISH does not carry.
    assert_malformed(&[0x30, 6, 0, 1, b't', 2, 0x7F, 0], V5);
    assert_malformed(&[0x30, 6, 0, 1, b't', 2, 0x24, 1], V5);
    // Property length beyond the packet, and shorter than its property.
    assert_malformed(&[0x30, 6, 0, 1, b't', 10, 0x01, 0], V5);
    assert_malformed(&[0x30, 9, 0, 1, b't', 2, 0x02, 0, 0, 0, 5], V5);
    // Value ranges the spec makes protocol errors.
    assert_protocol_error(&[0x30, 7, 0, 1, b't', 3, 0x23, 0, 0], V5); // topic alias 0
    assert_protocol_error(&[0x30, 6, 0, 1, b't', 2, 0x0B, 0], V5); // subscription id 0
    assert_protocol_error(&[0x30, 6, 0, 1, b't', 2, 0x01, 2], V5); // payload format 2
    let connack = [0x20, 0x06, 0, 0, 3, 0x21, 0, 0]; // receive maximum 0
    assert_protocol_error(&connack, V5);
}

#[test]
fn publish_flags_and_packet_id() {
    for p in ALL {
        assert_malformed(&[0x36, 5, 0, 1, b't', 0, 1], p); // QoS 3
        assert_malformed(&[0x38, 3, 0, 1, b't'], p); // QoS 0 with DUP
        assert_protocol_error(&[0x32, 5, 0, 1, b't', 0, 0], p); // packet id 0
        assert_malformed(&[0x32, 4, 0, 1, b't', 0], p); // truncated packet id
    }
    assert_protocol_error(&[0x40, 2, 0, 0], V4);
    assert_protocol_error(&[0x62, 3, 0, 0, 0], V5);
}

#[test]
fn publish_topic_names() {
    for p in ALL {
        for topic in [&b"a/+"[..], b"#", b"a/#"] {
            let len = u8::try_from(topic.len()).unwrap();
            let v5_props: &[u8] = if p == V5 { &[0] } else { &[] };
            let bytes = cat(&[
                &[0x30, len + 2 + u8::from(p == V5), 0, len],
                topic,
                v5_props,
            ]);
            assert_eq!(decode_err(&bytes, p), DecodeError::InvalidTopicName);
        }
    }
    // Empty topic: only in 5.0, only with a topic alias.
    assert_eq!(
        decode_err(&[0x30, 2, 0, 0], V4),
        DecodeError::InvalidTopicName
    );
    assert_eq!(
        decode_err(&[0x30, 3, 0, 0, 0], V5),
        DecodeError::InvalidTopicName
    );
    assert!(decode_one(&[0x30, 6, 0, 0, 3, 0x23, 0, 1], V5).is_ok());
}

fn subscribe(protocol: Protocol, filter: &[u8], options: u8) -> Vec<u8> {
    let props: &[u8] = if protocol == V5 { &[0] } else { &[] };
    let len = u8::try_from(filter.len()).expect("short filter");
    let body = cat(&[&[0, 1], props, &[0, len], filter, &[options]]);
    cat(&[
        &[0x82, u8::try_from(body.len()).expect("short body")],
        &body,
    ])
}

#[test]
fn subscribe_payload() {
    assert_protocol_error(&[0x82, 2, 0, 1], V4);
    assert_protocol_error(&[0x82, 3, 0, 1, 0], V5);
    assert_protocol_error(&[0x82, 6, 0, 0, 0, 1, b'#', 0], V4); // packet id 0
    // Options: QoS 3, reserved bits, retain handling 3.
    for p in ALL {
        assert_malformed(&subscribe(p, b"a", 0x03), p);
        assert_malformed(&subscribe(p, b"a", 0x40), p);
    }
    assert_malformed(&subscribe(V4, b"a", 0x04), V4); // no local is 5.0 only
    assert_malformed(&subscribe(V5, b"a", 0x30), V5);
    assert!(decode_one(&subscribe(V5, b"a", 0x2D), V5).is_ok());
    // Truncated options byte.
    let mut no_options = subscribe(V4, b"a", 0);
    no_options.pop();
    no_options[1] -= 1;
    assert_malformed(&no_options, V4);
}

#[test]
fn subscribe_filters() {
    for p in ALL {
        for filter in [
            &b"a/#/b"[..],
            b"a+",
            b"a/b#",
            b"",
            b"$share//a",
            b"$share/g+/a",
            b"$share/g#/a",
            b"$share/g",
            b"$share/g/",
            b"$share/g/a/#/b",
        ] {
            assert_eq!(
                decode_err(&subscribe(p, filter, 0), p),
                DecodeError::InvalidTopicFilter,
                "filter {:?}",
                String::from_utf8_lossy(filter)
            );
        }
        assert!(decode_one(&subscribe(p, b"$share/g/a/+", 1), p).is_ok());
    }
    // No local on a shared subscription.
    assert_protocol_error(&subscribe(V5, b"$share/g/a", 0x04), V5);
    assert!(decode_one(&subscribe(V5, b"$share/g/a", 0x08), V5).is_ok());
}

#[test]
fn unsubscribe_payload() {
    assert_protocol_error(&[0xA2, 2, 0, 1], V4);
    assert_protocol_error(&[0xA2, 3, 0, 1, 0], V5);
    assert_eq!(
        decode_err(&cat(&[&[0xA2, 7, 0, 1, 0, 3], b"a#b"]), V4),
        DecodeError::InvalidTopicFilter
    );
}

#[test]
fn reason_codes_outside_the_packets_list() {
    assert_malformed(&[0x40, 3, 0, 1, 0x92], V5); // PUBACK: packet id not found
    assert_malformed(&[0x62, 3, 0, 1, 0x10], V5); // PUBREL: no matching subscribers
    assert_malformed(&[0xE0, 1, 0x01], V5); // DISCONNECT: granted QoS 1
    assert_malformed(&[0xE0, 1, 0x05], V5); // not a reason code at all
    assert_malformed(&[0xF0, 1, 0x80], V5); // AUTH
    assert_malformed(&[0x20, 3, 0, 0x04, 0], V5); // CONNACK
    assert_malformed(&[0x90, 4, 0, 1, 0, 0x11], V5); // SUBACK
    assert_malformed(&[0xB0, 4, 0, 1, 0, 0x01], V5); // UNSUBACK
    assert_malformed(&[0x20, 2, 0, 6], V4); // CONNACK return code 6
    assert_malformed(&[0x20, 2, 0x02, 0], V4); // CONNACK reserved flag
    assert_malformed(&[0x90, 3, 0, 1, 0x03], V4); // SUBACK return code 3
}

#[test]
fn bodies_longer_than_the_packet_defines() {
    for p in ALL {
        assert_malformed(&[0xC0, 1, 0], p);
        assert_malformed(&[0xD0, 1, 0], p);
        assert_malformed(&[0x20, 4, 0, 0, 0, 0], p);
    }
    assert_malformed(&[0x40, 3, 0, 1, 0], V4);
    assert_malformed(&[0xB0, 3, 0, 1, 0], V4);
    assert_malformed(&[0xE0, 1, 0], V4);
    assert_malformed(&[0x40, 5, 0, 1, 0, 0, 0], V5);
    assert_malformed(&[0xE0, 3, 0, 0, 0], V5);
}

#[test]
fn packet_too_large_is_refused_from_its_header() {
    let mut buf = BytesMut::from(&[0x30, 100][..]);
    assert_eq!(
        decode(&mut buf, V4, 10),
        Err(DecodeError::PacketTooLarge { size: 102, max: 10 })
    );
    // A four-byte length at the limit is refused before any body arrives.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    let e = decode(&mut buf, V5, 1 << 20).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 1 << 20
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge);
    // Exactly the maximum is fine.
    let mut buf = BytesMut::from(&[0xC0, 0x00][..]);
    assert_eq!(decode(&mut buf, V4, 2), Ok(Some(Packet::PingReq)));
}
