//! # tidemq-broker
//!
//! The MQTT broker on tokio (connections, sessions, routing) and the `tidemq`
//! binary that runs a whole node. It is built after the storage engine; until
//! then this crate holds no code, and `scripts/run-node.sh` runs the storage
//! engine's embedding example instead of a node.
