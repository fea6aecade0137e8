//! Property tests: any packet a protocol can express encodes to exactly
//! `encoded_len` bytes, with its own type number and name in the first
//! byte, and decodes back to itself (a PUBLISH encodes the same through
//! `encode_publish`).

mod fields;
mod packets;
mod reasons;

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use tidemq_proto::mqtt::*;

use packets::packet;

fn assert_round_trip(packet: &Packet, p: Protocol) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(packet, p, &mut buf).map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
    prop_assert_eq!(encoded_len(packet, p).ok(), Some(buf.len()));
    // The type number and name are those of the first byte's high nibble.
    prop_assert_eq!(packet.type_number(), buf[0] >> 4);
    prop_assert_eq!(packet.name(), PACKET_TYPE_NAMES[usize::from(buf[0] >> 4)]);
    if let Packet::Publish(publish) = packet {
        // The borrowed-PUBLISH encoder writes the same bytes, appended.
        let mut appended = BytesMut::from(&b"xy"[..]);
        encode_publish(publish, p, &mut appended)
            .map_err(|e| TestCaseError::fail(format!("encode_publish: {e}")))?;
        prop_assert_eq!(&appended[..2], b"xy");
        prop_assert_eq!(&appended[2..], &buf[..]);
    }
    let decoded = decode(&mut buf, p, usize::MAX);
    prop_assert_eq!(decoded, Ok(Some(packet.clone())));
    prop_assert!(buf.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn mqtt_3_1_round_trips(packet in packet(Protocol::V3_1)) {
        assert_round_trip(&packet, Protocol::V3_1)?;
    }

    #[test]
    fn mqtt_3_1_1_round_trips(packet in packet(Protocol::V3_1_1)) {
        assert_round_trip(&packet, Protocol::V3_1_1)?;
    }

    #[test]
    fn mqtt_5_round_trips(packet in packet(Protocol::V5)) {
        assert_round_trip(&packet, Protocol::V5)?;
    }

    /// Packets back to back in one buffer come out one at a time, in order.
    #[test]
    fn streams_of_packets_round_trip(packets in vec(packet(Protocol::V5), 1..6)) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            encode(packet, Protocol::V5, &mut buf).unwrap();
        }
        for packet in &packets {
            prop_assert_eq!(decode(&mut buf, Protocol::V5, usize::MAX), Ok(Some(packet.clone())));
        }
        prop_assert!(buf.is_empty());
    }
}
