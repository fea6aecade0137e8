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

pub mod recorder;
pub mod storage;
