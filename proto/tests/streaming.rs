//! Decoding as a connection does it: bytes arrive in pieces, packets sit
//! back to back, and some peers send garbage.

mod common;

use bytes::{Bytes, BytesMut};
use common::{cat, encode_vec};
use proptest::collection::vec;
use proptest::prelude::*;
use tidemq_proto::mqtt::*;

const PROTOCOLS: [Protocol; 3] = [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5];

fn sample_publish() -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: Some(9),
        properties: PublishProperties {
            user_properties: vec![("k".into(), "v".into())].into(),
            ..Default::default()
        },
        payload: Bytes::from(vec![7u8; 200]), // a two-byte remaining length
    })
}

#[test]
fn byte_by_byte_returns_none_until_complete_and_keeps_what_follows() {
    let packet = sample_publish();
    let bytes = encode_vec(&packet, Protocol::V5);
    let stream = cat(&[&bytes, &[0xC0, 0x00]]); // a PINGREQ follows
    let mut buf = BytesMut::new();
    for (i, byte) in stream.iter().enumerate().take(bytes.len()) {
        buf.extend_from_slice(&[*byte]);
        let result = decode(&mut buf, Protocol::V5, 1 << 20).unwrap();
        if i + 1 < bytes.len() {
            assert_eq!(result, None, "after {} bytes", i + 1);
            assert_eq!(buf.len(), i + 1, "nothing consumed");
        } else {
            assert_eq!(result, Some(packet.clone()));
        }
    }
    assert!(buf.is_empty());
    buf.extend_from_slice(&stream[bytes.len()..]);
    assert_eq!(
        decode(&mut buf, Protocol::V5, 1 << 20),
        Ok(Some(Packet::PingReq))
    );
    assert_eq!(decode(&mut buf, Protocol::V5, 1 << 20), Ok(None));
}

#[test]
fn decoding_leaves_the_next_packet_in_the_buffer() {
    let first = encode_vec(&sample_publish(), Protocol::V3_1_1);
    let mut buf = BytesMut::from(&cat(&[&first, &[0xD0, 0x00, 0x30]])[..]);
    assert!(matches!(
        decode(&mut buf, Protocol::V3_1_1, 1 << 20),
        Ok(Some(Packet::Publish(_)))
    ));
    assert_eq!(&buf[..], &[0xD0, 0x00, 0x30]);
    assert_eq!(
        decode(&mut buf, Protocol::V3_1_1, 1 << 20),
        Ok(Some(Packet::PingResp))
    );
    assert_eq!(decode(&mut buf, Protocol::V3_1_1, 1 << 20), Ok(None));
    assert_eq!(&buf[..], &[0x30]);
}

#[test]
fn payload_shares_the_received_buffer() {
    let bytes = encode_vec(&sample_publish(), Protocol::V5);
    let mut buf = BytesMut::from(&bytes[..]);
    let base = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, Protocol::V5, 1 << 20) else {
        panic!("not a PUBLISH");
    };
    let at = p.payload.as_ptr() as usize;
    assert!(at > base && at < base + bytes.len(), "payload was copied");
}

/// Decodes everything decodable in `bytes`; whatever decodes must encode
/// and decode again to the same packet.
fn decode_all(bytes: &[u8], protocol: Protocol) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(packet)) = decode(&mut buf, protocol, 1 << 16) {
        let mut again = BytesMut::new();
        encode(&packet, protocol, &mut again)
            .map_err(|e| TestCaseError::fail(format!("re-encode {packet:?}: {e}")))?;
        prop_assert_eq!(decode(&mut again, protocol, usize::MAX), Ok(Some(packet)));
    }
    Ok(())
}

fn valid_packets() -> Vec<Vec<u8>> {
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 3,
        filters: vec![SubscribeFilter {
            filter: "$share/g/a/+/#".into(),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..Default::default()
            },
        }],
        properties: SubscribeProperties {
            subscription_identifier: Some(300),
            user_properties: Vec::new(),
        },
    });
    let connect = Packet::Connect(Connect {
        protocol: Protocol::V5,
        clean_start: false,
        keep_alive: 10,
        client_id: "id".into(),
        will: Some(LastWill {
            topic: "w".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties {
                will_delay_interval: Some(1),
                ..Default::default()
            },
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: ConnectProperties {
            receive_maximum: Some(5),
            ..Default::default()
        },
    });
    vec![
        encode_vec(&sample_publish(), Protocol::V5),
        encode_vec(&subscribe, Protocol::V5),
        encode_vec(&connect, Protocol::V5),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Arbitrary bytes never panic, whatever the protocol.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        for protocol in PROTOCOLS {
            decode_all(&bytes, protocol)?;
        }
    }

    /// Arbitrary bytes behind a plausible fixed header reach the packet
    /// parsers instead of failing at the first byte.
    #[test]
    fn arbitrary_bodies_never_panic(kind in 1u8..16, body in vec(any::<u8>(), 0..120)) {
        let flags = match kind { 6 | 8 | 10 => 0x02, _ => 0 };
        let len = u8::try_from(body.len()).unwrap();
        let bytes = cat(&[&[kind << 4 | flags, len], &body]);
        for protocol in PROTOCOLS {
            decode_all(&bytes, protocol)?;
        }
    }

    /// Valid packets with one byte changed or cut short never panic.
    #[test]
    fn mutated_packets_never_panic(
        which in 0usize..3,
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = valid_packets().swap_remove(which);
        let i = at.index(bytes.len());
        bytes[i] = value;
        bytes.truncate(cut.index(bytes.len()) + 1);
        for protocol in PROTOCOLS {
            decode_all(&bytes, protocol)?;
        }
    }
}
