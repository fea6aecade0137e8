//! # tidemq-bench
//!
//! Whole-system load generation for TideMQ (the `tidemq-bench` binary) and
//! the pieces its subcommands share. Criterion micro-benches live in
//! `benches/`.
//!
//! - [`recorder`]: latency and throughput bookkeeping with a line per second
//!   and a final report, as table or JSON.
//! - [`storage`]: `tidemq-bench storage append`, a load on an embedded
//!   [`StorageEngine`](tidemq_storage_engine::StorageEngine).
//! - [`mqtt`]: `tidemq-bench mqtt conn|pub|sub`, connection, publish and
//!   subscribe loads on any MQTT broker (TideMQ, Mosquitto, ...), through a
//!   minimal client on the `tidemq-proto` codec. `benches/compare.sh` runs
//!   them against TideMQ and Mosquitto side by side.
//! - [`meta`]: `tidemq-bench meta create-session`, closed-loop session
//!   creation on a meta service through
//!   [`MetaClient`](tidemq_meta::MetaClient).

pub mod meta;
pub mod mqtt;
pub mod recorder;
pub mod storage;
