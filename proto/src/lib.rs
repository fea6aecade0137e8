//! # tidemq-proto
//!
//! TideMQ's wire formats, with no I/O and no runtime:
//!
//! - `mqtt`: the MQTT 3.1, 3.1.1 and 5.0 codec (`decode(&mut BytesMut, max)`
//!   / `encode(&Packet, &mut BytesMut)`), arriving with the broker.
//! - `grpc`: the meta service's protobuf messages and tonic services,
//!   arriving with the meta service.
//!
//! The crate is empty until those land; nothing here pretends to parse yet.

#![deny(missing_docs)]
