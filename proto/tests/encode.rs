//! What `encode` refuses, and `encoded_len` for large packets.

use bytes::{Bytes, BytesMut};
use tidemq_proto::mqtt::*;

const V5: Protocol = Protocol::V5;

fn publish(payload: Bytes) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        properties: PublishProperties::default(),
        payload,
    }
}

#[track_caller]
fn assert_invalid(packet: Packet, protocol: Protocol) {
    let mut buf = BytesMut::new();
    let e = encode(&packet, protocol, &mut buf).expect_err("must not encode");
    assert!(matches!(e, EncodeError::Invalid(_)), "{e:?}");
    assert_eq!(encoded_len(&packet, protocol), Err(e));
    assert!(buf.is_empty());
}

#[test]
fn auth_does_not_exist_before_5_0() {
    for protocol in [Protocol::V3_1, Protocol::V3_1_1] {
        let mut buf = BytesMut::new();
        let auth = Packet::Auth(Auth::default());
        let e = EncodeError::NotInProtocol("AUTH");
        assert_eq!(encode(&auth, protocol, &mut buf), Err(e.clone()));
        assert_eq!(encoded_len(&auth, protocol), Err(e));
        assert!(buf.is_empty());
    }
}

#[test]
fn encoded_len_of_a_large_publish_uses_a_four_byte_length() {
    let packet = Packet::Publish(publish(Bytes::from(vec![0u8; 3_000_000])));
    // Fixed header 1 + 4, topic 3, property length 1, payload.
    let expected = 1 + 4 + 3 + 1 + 3_000_000;
    assert_eq!(encoded_len(&packet, V5), Ok(expected));
    let mut buf = BytesMut::new();
    encode(&packet, V5, &mut buf).unwrap();
    assert_eq!(buf.len(), expected);
    assert_eq!(&buf[..5], &[0x30, 0xC4, 0x8D, 0xB7, 0x01]);
}

#[test]
fn oversized_packets_and_fields_do_not_encode() {
    // `vec!` of zeros is lazily mapped, so this costs no real memory.
    let huge = Packet::Publish(publish(Bytes::from(vec![0u8; 268_435_455])));
    assert_eq!(
        encoded_len(&huge, V5),
        Err(EncodeError::TooLarge(268_435_455 + 4))
    );
    let long_topic = Packet::Publish(Publish {
        topic: "a".repeat(65_536),
        ..publish(Bytes::new())
    });
    let mut buf = BytesMut::new();
    assert_eq!(
        encode(&long_topic, V5, &mut buf),
        Err(EncodeError::FieldTooLong)
    );
    assert!(buf.is_empty());
    let long_user_property = Packet::Publish(Publish {
        properties: PublishProperties {
            user_properties: vec![("k".into(), "v".repeat(70_000))].into(),
            ..Default::default()
        },
        ..publish(Bytes::new())
    });
    assert_eq!(
        encoded_len(&long_user_property, V5),
        Err(EncodeError::FieldTooLong)
    );
}

#[test]
fn inconsistent_publish_does_not_encode() {
    let qos1_without_id = Publish {
        qos: QoS::AtLeastOnce,
        ..publish(Bytes::new())
    };
    assert_invalid(Packet::Publish(qos1_without_id), V5);
    let qos0_with_id = Publish {
        packet_id: Some(1),
        ..publish(Bytes::new())
    };
    assert_invalid(Packet::Publish(qos0_with_id), Protocol::V3_1_1);
    let qos0_dup = Publish {
        dup: true,
        ..publish(Bytes::new())
    };
    assert_invalid(Packet::Publish(qos0_dup), V5);
    let id_zero = Publish {
        qos: QoS::ExactlyOnce,
        packet_id: Some(0),
        ..publish(Bytes::new())
    };
    assert_invalid(Packet::Publish(id_zero), V5);
    let sub_id_zero = Publish {
        properties: PublishProperties {
            subscription_identifiers: vec![0],
            ..Default::default()
        },
        ..publish(Bytes::new())
    };
    assert_invalid(Packet::Publish(sub_id_zero), V5);
}

#[test]
fn packets_decode_would_refuse_do_not_encode() {
    assert_invalid(Packet::PubAck(PubResponse::success(0)), V5);
    let empty_subscribe = Subscribe {
        packet_id: 1,
        filters: Vec::new(),
        properties: SubscribeProperties::default(),
    };
    assert_invalid(Packet::Subscribe(empty_subscribe), V5);
    let empty_unsubscribe = Unsubscribe {
        packet_id: 1,
        filters: Vec::new(),
        properties: UnsubscribeProperties::default(),
    };
    assert_invalid(Packet::Unsubscribe(empty_unsubscribe), Protocol::V3_1_1);
    let no_match_in_v3 = SubAck {
        packet_id: 1,
        reasons: vec![ReasonCode::NoMatchingSubscribers],
        properties: AckProperties::default(),
    };
    assert_invalid(Packet::SubAck(no_match_in_v3), Protocol::V3_1_1);
    let password_only = Connect {
        protocol: Protocol::V3_1_1,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"p")),
        properties: ConnectProperties::default(),
    };
    assert_invalid(Packet::Connect(password_only), V5);
}
