//! # tidemq-meta
//!
//! The meta service: sessions, subscriptions, nodes and cluster
//! configuration held by openraft groups over a shared RocksDB, served over
//! tonic gRPC. It is built after the storage engine and the broker; until then
//! this crate holds no code.
