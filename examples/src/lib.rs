//! # tidemq-examples
//!
//! Runnable examples of TideMQ's storage engine and meta store, and the
//! pieces they share:
//!
//! - `examples/embed_storage.rs`: an application embedding the engine: open,
//!   append from many tasks, read back, close, reopen, verify.
//! - `examples/storage_ab.rs`: the same load through three storage paths,
//!   side by side in one table.
//! - `examples/raft_apply_ab.rs`: the meta service's Raft apply path with
//!   RocksDB inline on a tokio worker, in `spawn_blocking`, and on the
//!   `RocksPool`, with a probe of how responsive the workers stay.
//!
//! [`paths`] holds the one small trait the A/B test compares ("append a record
//! to a partition file and make it durable") and its three implementations;
//! [`load`] drives any of them with a fixed number of producers for a fixed
//! time and summarises the latencies. [`raft_apply`] is the apply path's
//! equivalent: three ways to reach RocksDB, one load, one probe.

pub mod load;
pub mod paths;
pub mod raft_apply;
