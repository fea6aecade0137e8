//! MQTT 5.0 packets as hand-written byte vectors (MQTT 5.0 chapter 3),
//! decoded and re-encoded, including the short forms of acknowledgements.

mod common;

use bytes::Bytes;
use common::{assert_codec, cat, decode_one};
use tidemq_proto::mqtt::*;

const V5: Protocol = Protocol::V5;

#[test]
fn connect_with_properties_and_will_properties() {
    let bytes = cat(&[
        &[0x10, 109],
        &[0x00, 0x04],
        b"MQTT",
        &[0x05, 0xC6, 0x00, 0x1E], // level 5; user, password, will QoS 0, will, clean; keep alive 30
        &[40],                     // property length
        &[0x11, 0x00, 0x00, 0x00, 0x78], // session expiry 120
        &[0x21, 0x00, 0x0A],       // receive maximum 10
        &[0x27, 0x00, 0x01, 0x00, 0x00], // maximum packet size 65536
        &[0x22, 0x00, 0x05],       // topic alias maximum 5
        &[0x19, 0x01],             // request response information
        &[0x17, 0x00],             // request problem information
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'],
        &[0x15, 0x00, 0x05],
        b"SCRAM",
        &[0x16, 0x00, 0x02, 0x01, 0x02],
        &[0x00, 0x02],
        b"c1",
        &[38],                           // will property length
        &[0x18, 0x00, 0x00, 0x00, 0x05], // will delay 5
        &[0x01, 0x01],                   // payload is UTF-8
        &[0x02, 0x00, 0x00, 0x00, 0x3C], // message expiry 60
        &[0x03, 0x00, 0x04],
        b"text",
        &[0x08, 0x00, 0x04],
        b"resp",
        &[0x09, 0x00, 0x02, 0xAB, 0xCD],
        &[0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b'],
        &[0x00, 0x03],
        b"w/t",
        &[0x00, 0x02],
        b"hi",
        &[0x00, 0x01, b'u'],
        &[0x00, 0x01, b'p'],
    ]);
    let packet = Packet::Connect(Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 30,
        client_id: "c1".into(),
        will: Some(LastWill {
            topic: "w/t".into(),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties {
                will_delay_interval: Some(5),
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                content_type: Some("text".into()),
                response_topic: Some("resp".into()),
                correlation_data: Some(Bytes::from_static(&[0xAB, 0xCD])),
                user_properties: vec![("a".into(), "b".into())],
            },
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: ConnectProperties {
            session_expiry_interval: Some(120),
            receive_maximum: Some(10),
            maximum_packet_size: Some(65_536),
            topic_alias_maximum: Some(5),
            request_response_information: Some(true),
            request_problem_information: Some(false),
            user_properties: vec![("k".into(), "v".into())],
            authentication_method: Some("SCRAM".into()),
            authentication_data: Some(Bytes::from_static(&[1, 2])),
        },
    });
    // The connection's protocol is irrelevant to CONNECT.
    assert_codec(Protocol::V3_1_1, &bytes, packet.clone());
    assert_codec(V5, &bytes, packet);
}

#[test]
fn connect_password_without_username_is_allowed() {
    let bytes = cat(&[
        &[0x10, 18, 0x00, 0x04],
        b"MQTT",
        &[0x05, 0x42, 0x00, 0x3C, 0x00, 0x00, 0x00, 0x00, 0x03],
        b"tok",
    ]);
    let packet = Packet::Connect(Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 60,
        client_id: String::new(),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"tok")),
        properties: ConnectProperties::default(),
    });
    assert_codec(V5, &bytes, packet);
}

#[test]
fn connack_with_every_property() {
    let bytes = cat(&[
        &[0x20, 66, 0x01, 0x00, 63],
        &[0x11, 0x00, 0x00, 0x0E, 0x10], // session expiry 3600
        &[0x21, 0x00, 0x14],             // receive maximum 20
        &[0x24, 0x01],                   // maximum QoS 1
        &[0x25, 0x00],                   // retain unavailable
        &[0x27, 0x00, 0x10, 0x00, 0x00], // maximum packet size 1 MiB
        &[0x12, 0x00, 0x03],
        b"abc",
        &[0x22, 0x00, 0x0A], // topic alias maximum 10
        &[0x1F, 0x00, 0x02],
        b"ok",
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'],
        &[0x28, 0x01, 0x29, 0x00, 0x2A, 0x01],
        &[0x13, 0x00, 0x1E], // server keep alive 30
        &[0x1A, 0x00, 0x01, b'r'],
        &[0x1C, 0x00, 0x01, b's'],
        &[0x15, 0x00, 0x01, b'm'],
        &[0x16, 0x00, 0x01, 0xFF],
    ]);
    let packet = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: ConnAckProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(20),
            maximum_qos: Some(1),
            retain_available: Some(false),
            maximum_packet_size: Some(1 << 20),
            assigned_client_identifier: Some("abc".into()),
            topic_alias_maximum: Some(10),
            reason_string: Some("ok".into()),
            user_properties: vec![("k".into(), "v".into())],
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(false),
            shared_subscription_available: Some(true),
            server_keep_alive: Some(30),
            response_information: Some("r".into()),
            server_reference: Some("s".into()),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(&[0xFF])),
        },
    });
    assert_codec(V5, &bytes, packet);
}

#[test]
fn connack_failure() {
    let packet = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::NotAuthorized,
        properties: ConnAckProperties::default(),
    });
    assert_codec(V5, &[0x20, 0x03, 0x00, 0x87, 0x00], packet);
}

#[test]
fn publish_qos0_without_properties() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a/b".into(),
        packet_id: None,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"x"),
    });
    assert_codec(
        V5,
        &cat(&[&[0x30, 7, 0x00, 0x03], b"a/b", &[0x00], b"x"]),
        packet,
    );
}

#[test]
fn publish_qos1_with_every_property() {
    let bytes = cat(&[
        &[0x3B, 55, 0x00, 0x03],
        b"a/b",
        &[0x12, 0x34, 45], // packet id, property length
        &[0x01, 0x01],
        &[0x02, 0x00, 0x00, 0x00, 0x0A],
        &[0x23, 0x00, 0x01],
        &[0x08, 0x00, 0x03],
        b"r/1",
        &[0x09, 0x00, 0x01, 0x07],
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'],
        &[0x0B, 0x05, 0x0B, 0x80, 0x01], // subscription ids 5 and 128
        &[0x03, 0x00, 0x0A],
        b"text/plain",
        b"hi",
    ]);
    let packet = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: Some(0x1234),
        properties: PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(10),
            topic_alias: Some(1),
            response_topic: Some("r/1".into()),
            correlation_data: Some(Bytes::from_static(&[7])),
            user_properties: vec![("k".into(), "v".into())].into(),
            subscription_identifiers: vec![5, 128],
            content_type: Some("text/plain".into()),
        },
        payload: Bytes::from_static(b"hi"),
    });
    assert_codec(V5, &bytes, packet);
}

#[test]
fn publish_qos2_with_topic_alias_only() {
    let bytes = [
        0x34, 9, 0x00, 0x00, 0x00, 0x05, 0x03, 0x23, 0x00, 0x02, b'p',
    ];
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: String::new(),
        packet_id: Some(5),
        properties: PublishProperties {
            topic_alias: Some(2),
            ..Default::default()
        },
        payload: Bytes::from_static(b"p"),
    });
    assert_codec(V5, &bytes, packet);
}

fn response(packet_id: u16, reason: ReasonCode, reason_string: Option<&str>) -> PubResponse {
    PubResponse {
        packet_id,
        reason,
        properties: AckProperties {
            reason_string: reason_string.map(str::to_owned),
            user_properties: Vec::new(),
        },
    }
}

#[test]
fn publish_acknowledgements_in_their_three_lengths() {
    // Length 2: Success without properties.
    assert_codec(
        V5,
        &[0x40, 0x02, 0x00, 0x01],
        Packet::PubAck(PubResponse::success(1)),
    );
    // Length 3: a reason without properties.
    let no_match = response(1, ReasonCode::NoMatchingSubscribers, None);
    assert_codec(
        V5,
        &[0x40, 0x03, 0x00, 0x01, 0x10],
        Packet::PubAck(no_match),
    );
    // Longer: reason and properties.
    let bytes = cat(&[&[0x40, 11, 0x00, 0x01, 0x87, 7, 0x1F, 0x00, 0x04], b"nope"]);
    let refused = response(1, ReasonCode::NotAuthorized, Some("nope"));
    assert_codec(V5, &bytes, Packet::PubAck(refused));
    // A sender may spell out what the short forms leave implicit.
    assert_eq!(
        decode_one(&[0x40, 0x04, 0x00, 0x01, 0x00, 0x00], V5).unwrap(),
        Some(Packet::PubAck(PubResponse::success(1)))
    );
    assert_eq!(
        decode_one(&[0x40, 0x03, 0x00, 0x01, 0x00], V5).unwrap(),
        Some(Packet::PubAck(PubResponse::success(1)))
    );
}

#[test]
fn pubrec_pubrel_pubcomp() {
    let quota = response(2, ReasonCode::QuotaExceeded, None);
    assert_codec(V5, &[0x50, 0x03, 0x00, 0x02, 0x97], Packet::PubRec(quota));
    let not_found = response(3, ReasonCode::PacketIdentifierNotFound, None);
    assert_codec(
        V5,
        &[0x62, 0x03, 0x00, 0x03, 0x92],
        Packet::PubRel(not_found),
    );
    assert_codec(
        V5,
        &[0x70, 0x02, 0x00, 0x04],
        Packet::PubComp(PubResponse::success(4)),
    );
}

#[test]
fn subscribe_with_options_and_properties() {
    let bytes = cat(&[
        &[0x82, 33, 0x00, 0x0A, 9],
        &[0x0B, 0x07],
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'],
        &[0x00, 0x03],
        b"a/+",
        &[0x2D], // retain handling 2, retain as published, no local, QoS 1
        &[0x00, 0x0C],
        b"$share/g/x/#",
        &[0x12], // retain handling 1, QoS 2
    ]);
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 10,
        filters: vec![
            SubscribeFilter {
                filter: "a/+".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            },
            SubscribeFilter {
                filter: "$share/g/x/#".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendIfNew,
                },
            },
        ],
        properties: SubscribeProperties {
            subscription_identifier: Some(7),
            user_properties: vec![("k".into(), "v".into())],
        },
    });
    assert_codec(V5, &bytes, packet);
}

#[test]
fn suback() {
    let bytes = [
        0x90, 12, 0x00, 0x0A, 4, 0x1F, 0x00, 0x01, b'r', 0x00, 0x01, 0x02, 0x8F, 0xA2,
    ];
    let packet = Packet::SubAck(SubAck {
        packet_id: 10,
        reasons: vec![
            ReasonCode::GRANTED_QOS0,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::WildcardSubscriptionsNotSupported,
        ],
        properties: AckProperties {
            reason_string: Some("r".into()),
            user_properties: Vec::new(),
        },
    });
    assert_codec(V5, &bytes, packet);
}

#[test]
fn unsubscribe_and_unsuback() {
    let bytes = cat(&[&[0xA2, 8, 0x00, 0x0B, 0x00, 0x00, 0x03], b"a/b"]);
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: 11,
        filters: vec!["a/b".into()],
        properties: UnsubscribeProperties::default(),
    });
    assert_codec(V5, &bytes, packet);

    let packet = Packet::UnsubAck(UnsubAck {
        packet_id: 11,
        reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
        properties: AckProperties::default(),
    });
    assert_codec(V5, &[0xB0, 0x05, 0x00, 0x0B, 0x00, 0x00, 0x11], packet);
}

#[test]
fn ping() {
    assert_codec(V5, &[0xC0, 0x00], Packet::PingReq);
    assert_codec(V5, &[0xD0, 0x00], Packet::PingResp);
}

#[test]
fn disconnect_in_its_three_lengths() {
    assert_codec(V5, &[0xE0, 0x00], Packet::Disconnect(Disconnect::default()));
    let with_will = Disconnect {
        reason: ReasonCode::DisconnectWithWillMessage,
        properties: DisconnectProperties::default(),
    };
    assert_codec(V5, &[0xE0, 0x01, 0x04], Packet::Disconnect(with_will));
    let bytes = cat(&[
        &[0xE0, 17, 0x8B, 15],
        &[0x11, 0x00, 0x00, 0x00, 0x00],
        &[0x1F, 0x00, 0x03],
        b"bye",
        &[0x1C, 0x00, 0x01, b'x'],
    ]);
    let shutting_down = Disconnect {
        reason: ReasonCode::ServerShuttingDown,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: Some("bye".into()),
            user_properties: Vec::new(),
            server_reference: Some("x".into()),
        },
    };
    assert_codec(V5, &bytes, Packet::Disconnect(shutting_down));
    assert_eq!(
        decode_one(&[0xE0, 0x02, 0x00, 0x00], V5).unwrap(),
        Some(Packet::Disconnect(Disconnect::default()))
    );
}

#[test]
fn auth() {
    assert_codec(V5, &[0xF0, 0x00], Packet::Auth(Auth::default()));
    let bytes = cat(&[
        &[0xF0, 16, 0x18, 14, 0x15, 0x00, 0x05],
        b"SCRAM",
        &[0x16, 0x00, 0x03, 0x01, 0x02, 0x03],
    ]);
    let packet = Packet::Auth(Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some("SCRAM".into()),
            authentication_data: Some(Bytes::from_static(&[1, 2, 3])),
            reason_string: None,
            user_properties: Vec::new(),
        },
    });
    assert_codec(V5, &bytes, packet);
}

#[test]
fn a_flood_of_user_properties_is_checked_but_not_all_kept() {
    let flood: Vec<UserProperty> = (0..1000)
        .map(|i| (format!("k{i}"), String::new()))
        .collect();
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t".into(),
        packet_id: Some(1),
        properties: PublishProperties {
            user_properties: flood.clone().into(),
            ..Default::default()
        },
        payload: Bytes::from_static(b"x"),
    });
    let mut bytes = bytes::BytesMut::new();
    encode(&packet, Protocol::V5, &mut bytes).unwrap();
    let mut limited = bytes.clone();
    match decode_limited(&mut limited, Protocol::V5, 1 << 20, 11).unwrap() {
        Some(Packet::Publish(p)) => assert_eq!(p.properties.user_properties[..], flood[..11]),
        other => panic!("{other:?}"),
    }
    assert!(limited.is_empty(), "the whole packet was read");
    // Past the limit a PUBLISH is refused: the rest of its property block is
    // not read, so a bad property there goes unnoticed...
    let mut bad = bytes.clone();
    let at = bad.len() - 2; // the last property's empty value, then the payload
    let last_key_end = at - 2;
    bad[last_key_end - 1] = 0xFF; // not UTF-8
    match decode_limited(&mut bad.clone(), Protocol::V5, 1 << 20, 11).unwrap() {
        Some(Packet::Publish(p)) => {
            assert_eq!(p.properties.user_properties.len(), 11);
            assert_eq!(&p.payload[..], b"x", "the payload follows the block");
        }
        other => panic!("{other:?}"),
    }
    // ... but not within it.
    assert!(decode_limited(&mut bad, Protocol::V5, 1 << 20, 1001).is_err());
    assert_eq!(
        decode_one(&bytes, Protocol::V5).unwrap(),
        Some(packet),
        "no limit: all kept"
    );
}

#[test]
fn user_properties_between_other_properties_are_all_read() {
    // PUBLISH QoS 0 "t": a user property, a content type, two more user
    // properties, then the payload.
    let props: &[u8] = &[
        0x26, 0, 1, b'a', 0, 1, b'1', //
        0x03, 0, 2, b'c', b't', //
        0x26, 0, 1, b'b', 0, 0, //
        0x26, 0, 0, 0, 1, b'3',
    ];
    let mut body = vec![0, 1, b't', props.len() as u8];
    body.extend_from_slice(props);
    body.push(b'x');
    let mut bytes = vec![0x30, body.len() as u8];
    bytes.extend_from_slice(&body);
    match decode_one(&bytes, Protocol::V5).unwrap() {
        Some(Packet::Publish(p)) => {
            assert_eq!(p.properties.content_type.as_deref(), Some("ct"));
            let user: Vec<_> = p.properties.user_properties.iter().cloned().collect();
            let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
            assert_eq!(user, [pair("a", "1"), pair("b", ""), pair("", "3")]);
            assert_eq!(&p.payload[..], b"x");
        }
        other => panic!("{other:?}"),
    }
    // A second content type after a run of user properties is still caught.
    let mut twice = bytes.clone();
    let at = 2 + 4 + 7 + 6; // the second user property's identifier
    twice[at] = 0x03;
    twice[at + 1..at + 6].copy_from_slice(&[0, 1, b'b', 0x26, 0]);
    assert!(decode_one(&twice, Protocol::V5).is_err());
}

#[test]
fn the_first_byte_tells_a_publish() {
    assert!(next_is_publish(&[0x30]));
    assert!(next_is_publish(&[0x3D, 0x7F])); // QoS 2, DUP, RETAIN, part of a packet
    assert!(!next_is_publish(&[0x40, 0x02, 0, 1])); // PUBACK
    assert!(!next_is_publish(&[0xC0, 0x00])); // PINGREQ
    assert!(!next_is_publish(&[]));
}
