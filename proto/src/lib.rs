//! # tidemq-proto
//!
//! TideMQ's wire formats, with no I/O and no runtime:
//!
//! - [`mqtt`]: the MQTT 3.1, 3.1.1 and 5.0 codec. [`mqtt::decode`] takes one
//!   packet from the front of a `BytesMut` (or answers "not yet" with
//!   `Ok(None)`), [`mqtt::encode`] appends one, [`mqtt::encoded_len`] says how
//!   many bytes that will be. The [`mqtt`] module also holds the topic rules
//!   (validation, wildcard matching, shared subscriptions).
//! - [`grpc`]: the meta service's protobuf messages and tonic clients and
//!   servers, generated from `proto/meta.proto` at build time with a vendored
//!   `protoc` (no system protoc needed): `MetaService` (sessions,
//!   subscriptions, nodes, cluster configuration) and `RaftService` (vote,
//!   append entries, install snapshot between nodes).
//!
//! ## Layout
//!
//! ```text
//! mqtt/
//!   packet.rs, properties.rs, reason.rs, error.rs   the public data model
//!   topic.rs                                        topic names and filters
//!   codec/mod.rs                                    fixed header, dispatch on packet type
//!   codec/read.rs, write.rs                         primitive fields, bounds-checked
//!   codec/property.rs, properties.rs                the 5.0 property block
//!   codec/{connect,connack,publish,ack,subscribe,suback,
//!          unsubscribe,unsuback,disconnect,auth}.rs one file per packet kind
//! ```
//!
//! ## Quick start
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use tidemq_proto::mqtt::{self, Packet, Protocol, Publish, QoS};
//!
//! let publish = Packet::Publish(Publish {
//!     dup: false,
//!     qos: QoS::AtLeastOnce,
//!     retain: false,
//!     topic: "sensors/kitchen/temp".into(),
//!     packet_id: Some(7),
//!     properties: Default::default(),
//!     payload: Bytes::from_static(b"21.5"),
//! });
//!
//! let mut buf = BytesMut::new();
//! mqtt::encode(&publish, Protocol::V3_1_1, &mut buf)?;
//! assert_eq!(buf.len(), mqtt::encoded_len(&publish, Protocol::V3_1_1)?);
//!
//! // A partial packet decodes to `None` and stays in the buffer.
//! let mut partial = BytesMut::from(&buf[..3]);
//! assert_eq!(mqtt::decode(&mut partial, Protocol::V3_1_1, 1 << 20)?, None);
//! assert_eq!(partial.len(), 3);
//!
//! let decoded = mqtt::decode(&mut buf, Protocol::V3_1_1, 1 << 20)?;
//! assert_eq!(decoded, Some(publish));
//! assert!(buf.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Fuzzing
//!
//! `proto/fuzz` holds a cargo-fuzz target that feeds arbitrary bytes to
//! [`mqtt::decode`] for every protocol level. It needs a nightly toolchain
//! and is not part of the workspace:
//!
//! ```text
//! cargo install cargo-fuzz && cd proto && cargo +nightly fuzz run decode
//! ```

#![deny(missing_docs)]

pub mod grpc;
pub mod mqtt;
