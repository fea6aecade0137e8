//! `tidemq-bench mqtt conn`: opens `--count` connections with at most
//! `--concurrency` handshakes in flight, holds every one until the last has
//! connected, then closes them all.
//!
//! A success is a CONNACK that accepts; its latency is TCP connect plus
//! CONNECT → CONNACK. The report's average rate is successes over the wall
//! time of the opening phase, which ends when the last handshake finished.

use std::sync::Arc;

use tokio::task::JoinSet;

use super::client::SessionKind;
use super::{ConnArgs, connect_all};
use crate::recorder::{FinalReport, Recorder, spawn_ticker};

/// Runs the load, printing a line per second, and returns the final report
/// and how many connections were held open.
pub async fn conn(args: &ConnArgs) -> anyhow::Result<(FinalReport, usize)> {
    args.common.validate()?;
    let recorder = Arc::new(Recorder::new(0));
    let ticker = {
        let recorder = Arc::clone(&recorder);
        spawn_ticker(args.common.output, move || recorder.tick())
    };
    // Keep alive 0: held connections send nothing, however long opening the
    // last of them takes.
    let clients = connect_all(&args.common, 'c', 0, SessionKind::Clean, &recorder).await?;
    let report = recorder.report();
    ticker.abort();
    let held = clients.len();
    let mut closing = JoinSet::new();
    for (_, client) in clients {
        closing.spawn(client.disconnect());
    }
    while closing.join_next().await.is_some() {}
    Ok((report, held))
}
