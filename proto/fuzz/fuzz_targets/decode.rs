//! Arbitrary bytes into `decode`, for every protocol level: it must return
//! a packet, `None` or an error, and never panic. Whatever it decodes must
//! encode again and decode to the same packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidemq_proto::mqtt::{Protocol, decode, encode};

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
        let mut buf = BytesMut::from(data);
        // Packets back to back, as a connection reads them.
        while let Ok(Some(packet)) = decode(&mut buf, protocol, 1 << 20) {
            let mut again = BytesMut::new();
            encode(&packet, protocol, &mut again).expect("a decoded packet encodes");
            let round_trip = decode(&mut again, protocol, usize::MAX);
            assert_eq!(round_trip, Ok(Some(packet)));
        }
    }
});
