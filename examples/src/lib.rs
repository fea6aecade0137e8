//! # tidemq-examples
//!
//! Runnable examples of TideMQ's storage engine, and the pieces they share:
//!
//! - `examples/embed_storage.rs`: an application embedding the engine: open,
//!   append from many tasks, read back, close, reopen, verify.
//! - `examples/storage_ab.rs`: the same load through three storage paths,
//!   side by side in one table.
//!
//! [`paths`] holds the one small trait the A/B test compares ("append a record
//! to a partition file and make it durable") and its three implementations;
//! [`load`] drives any of them with a fixed number of producers for a fixed
//! time and summarises the latencies.

pub mod load;
pub mod paths;
