//! Arbitrary bytes into `decode`, for every protocol level: it must return
//! (a packet, `None` or an error) and never panic.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidemq_proto::mqtt::{Protocol, decode, encode};

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
        let mut buf = BytesMut::from(data);
        // Decode packets back to back, as a connection would.
        while let Ok(Some(packet)) = decode(&mut buf, protocol, 1 << 20) {
            // Whatever decodes must encode again. CONNECT carries its own
            // protocol, so it may be re-encoded under a different one.
            let mut out = BytesMut::new();
            let _ = encode(&packet, protocol, &mut out);
        }
    }
});
