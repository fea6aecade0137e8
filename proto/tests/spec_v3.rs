//! MQTT 3.1 and 3.1.1 packets as hand-written byte vectors (MQTT 3.1.1
//! chapter 3), decoded and re-encoded.

mod common;

use bytes::Bytes;
use common::{assert_codec, cat, decode_one, encode_vec};
use tidemq_proto::mqtt::*;

const V4: Protocol = Protocol::V3_1_1;

#[test]
fn connect_with_will_username_password() {
    let bytes = cat(&[
        &[0x10, 46],
        &[0x00, 0x04],
        b"MQTT",
        &[0x04],       // level
        &[0xEE],       // user, password, will retain, will QoS 1, will, clean
        &[0x00, 0x3C], // keep alive 60
        &[0x00, 0x06],
        b"client",
        &[0x00, 0x09],
        b"last/will",
        &[0x00, 0x03],
        b"bye",
        &[0x00, 0x04],
        b"user",
        &[0x00, 0x04],
        b"pass",
    ]);
    let packet = Packet::Connect(Connect {
        protocol: V4,
        clean_start: true,
        keep_alive: 60,
        client_id: "client".into(),
        will: Some(LastWill {
            topic: "last/will".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"pass")),
        properties: ConnectProperties::default(),
    });
    // CONNECT speaks its own protocol whatever the connection's is.
    assert_codec(V4, &bytes, packet.clone());
    assert_codec(Protocol::V5, &bytes, packet);
}

fn bare_connect(protocol: Protocol, client_id: &str, clean_start: bool) -> Packet {
    Packet::Connect(Connect {
        protocol,
        clean_start,
        keep_alive: 0,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    })
}

#[test]
fn connect_minimal_with_empty_client_id() {
    let bytes = cat(&[&[0x10, 12, 0x00, 0x04], b"MQTT", &[0x04, 0x02, 0, 0, 0, 0]]);
    assert_codec(V4, &bytes, bare_connect(V4, "", true));
}

#[test]
fn connect_mqtt_3_1() {
    let bytes = cat(&[
        &[0x10, 17, 0x00, 0x06],
        b"MQIsdp",
        &[0x03, 0x00, 0x00, 0x00, 0x00, 0x03],
        b"abc",
    ]);
    assert_codec(V4, &bytes, bare_connect(Protocol::V3_1, "abc", false));
}

#[test]
fn connack() {
    assert_codec(
        V4,
        &[0x20, 0x02, 0x01, 0x00],
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: ConnAckProperties::default(),
        }),
    );
    for (code, reason) in [
        (1, ReasonCode::UnsupportedProtocolVersion),
        (2, ReasonCode::ClientIdentifierNotValid),
        (3, ReasonCode::ServerUnavailable),
        (4, ReasonCode::BadUserNameOrPassword),
        (5, ReasonCode::NotAuthorized),
    ] {
        let packet = Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: ConnAckProperties::default(),
        });
        assert_codec(V4, &[0x20, 0x02, 0x00, code], packet);
    }
}

#[test]
fn connack_maps_5_0_reasons_and_drops_properties() {
    let packet = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::Banned,
        properties: ConnAckProperties {
            reason_string: Some("go away".into()),
            ..Default::default()
        },
    });
    assert_eq!(encode_vec(&packet, V4), [0x20, 0x02, 0x00, 0x05]);
}

fn publish(
    qos: QoS,
    packet_id: Option<u16>,
    dup: bool,
    retain: bool,
    payload: &'static [u8],
) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic: "a/b".into(),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(payload),
    })
}

#[test]
fn publish_qos0_qos1_qos2() {
    let qos0 = cat(&[&[0x31, 10, 0x00, 0x03], b"a/b", b"hello"]);
    assert_codec(
        V4,
        &qos0,
        publish(QoS::AtMostOnce, None, false, true, b"hello"),
    );

    let qos1 = cat(&[&[0x3A, 8, 0x00, 0x03], b"a/b", &[0x00, 0x0A], b"x"]);
    assert_codec(
        V4,
        &qos1,
        publish(QoS::AtLeastOnce, Some(10), true, false, b"x"),
    );

    let qos2_empty = cat(&[&[0x34, 7, 0x00, 0x03], b"a/b", &[0xFF, 0xFF]]);
    assert_codec(
        V4,
        &qos2_empty,
        publish(QoS::ExactlyOnce, Some(0xFFFF), false, false, b""),
    );
}

#[test]
fn publish_drops_5_0_properties() {
    let mut packet = publish(QoS::AtMostOnce, None, false, false, b"x");
    if let Packet::Publish(p) = &mut packet {
        p.properties.message_expiry_interval = Some(5);
        p.properties.user_properties = vec![("k".into(), "v".into())].into();
    }
    assert_eq!(
        encode_vec(&packet, V4),
        cat(&[&[0x30, 6, 0, 3], b"a/b", b"x"])
    );
}

#[test]
fn publish_acknowledgements() {
    let ack = PubResponse::success(10);
    assert_codec(V4, &[0x40, 0x02, 0x00, 0x0A], Packet::PubAck(ack.clone()));
    assert_codec(V4, &[0x50, 0x02, 0x00, 0x0A], Packet::PubRec(ack.clone()));
    assert_codec(V4, &[0x62, 0x02, 0x00, 0x0A], Packet::PubRel(ack.clone()));
    assert_codec(V4, &[0x70, 0x02, 0x00, 0x0A], Packet::PubComp(ack));
    // 3.1.1 has no negative acknowledgement: the reason is not sent.
    let refused = PubResponse {
        packet_id: 10,
        reason: ReasonCode::NotAuthorized,
        properties: AckProperties::default(),
    };
    assert_eq!(
        encode_vec(&Packet::PubAck(refused), V4),
        [0x40, 0x02, 0x00, 0x0A]
    );
}

fn qos_only(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

#[test]
fn subscribe() {
    let bytes = cat(&[
        &[0x82, 16, 0x00, 0x01],
        &[0x00, 0x03],
        b"a/b",
        &[0x01],
        &[0x00, 0x05],
        b"c/d/#",
        &[0x02],
    ]);
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![
            SubscribeFilter {
                filter: "a/b".into(),
                options: qos_only(QoS::AtLeastOnce),
            },
            SubscribeFilter {
                filter: "c/d/#".into(),
                options: qos_only(QoS::ExactlyOnce),
            },
        ],
        properties: SubscribeProperties::default(),
    });
    assert_codec(V4, &bytes, packet);
}

#[test]
fn subscribe_in_3_1_may_carry_dup() {
    let bytes = cat(&[&[0x8A, 6, 0x00, 0x01, 0x00, 0x01], b"#", &[0x00]]);
    let Some(Packet::Subscribe(sub)) = decode_one(&bytes, Protocol::V3_1).unwrap() else {
        panic!("not a SUBSCRIBE");
    };
    assert_eq!(sub.filters[0].filter, "#");
}

#[test]
fn suback() {
    let packet = Packet::SubAck(SubAck {
        packet_id: 1,
        reasons: vec![
            ReasonCode::GRANTED_QOS0,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ],
        properties: AckProperties::default(),
    });
    assert_codec(
        V4,
        &[0x90, 0x06, 0x00, 0x01, 0x00, 0x01, 0x02, 0x80],
        packet,
    );
}

#[test]
fn suback_maps_every_failure_to_0x80() {
    let packet = Packet::SubAck(SubAck {
        packet_id: 2,
        reasons: vec![ReasonCode::NotAuthorized, ReasonCode::TopicFilterInvalid],
        properties: AckProperties::default(),
    });
    assert_eq!(
        encode_vec(&packet, V4),
        [0x90, 0x04, 0x00, 0x02, 0x80, 0x80]
    );
}

#[test]
fn unsubscribe_and_unsuback() {
    let bytes = cat(&[
        &[0xA2, 10, 0x00, 0x02, 0x00, 0x03],
        b"a/b",
        &[0x00, 0x01],
        b"#",
    ]);
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        filters: vec!["a/b".into(), "#".into()],
        properties: UnsubscribeProperties::default(),
    });
    assert_codec(V4, &bytes, packet);

    let unsuback = |reasons| {
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            reasons,
            properties: AckProperties::default(),
        })
    };
    assert_codec(V4, &[0xB0, 0x02, 0x00, 0x02], unsuback(Vec::new()));
    // 5.0 reasons have no 3.1.1 form and are dropped.
    assert_eq!(
        encode_vec(&unsuback(vec![ReasonCode::NoSubscriptionExisted]), V4),
        [0xB0, 0x02, 0x00, 0x02]
    );
}

#[test]
fn ping_and_disconnect() {
    assert_codec(V4, &[0xC0, 0x00], Packet::PingReq);
    assert_codec(V4, &[0xD0, 0x00], Packet::PingResp);
    assert_codec(V4, &[0xE0, 0x00], Packet::Disconnect(Disconnect::default()));
    let with_reason = Packet::Disconnect(Disconnect {
        reason: ReasonCode::ServerShuttingDown,
        properties: DisconnectProperties::default(),
    });
    assert_eq!(encode_vec(&with_reason, V4), [0xE0, 0x00]);
}
