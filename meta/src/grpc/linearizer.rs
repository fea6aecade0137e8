//! Linearizable reads that share their leadership checks.
//!
//! A linearizable read must see every write committed before it started,
//! so the leader confirms it still leads (a heartbeat round to a quorum)
//! and waits until its state has applied what it had committed then. Each
//! confirmation costs a round of Raft messages; a hundred CONNECTs at once
//! asking who holds their sessions would cost a hundred rounds.
//!
//! One check serves every read that arrived before the check started: the
//! reads that arrive while a check is running wait for the next one, which
//! starts as soon as the running one ends. So each read is confirmed by a
//! check that began after it did, which is all linearizability asks, and
//! there is at most one check in flight per group.

use std::sync::{Arc, Mutex, PoisonError};

use openraft::Raft;
use openraft::error::{CheckIsLeaderError, RaftError};
use prometheus::IntCounter;
use tokio::sync::oneshot;

use crate::types::{MetaNode, NodeId, TypeConfig};

/// What one leadership check answered.
pub type CheckResult = Result<(), RaftError<NodeId, CheckIsLeaderError<NodeId, MetaNode>>>;

/// The shared leadership checks of one group.
#[derive(Clone)]
pub struct Linearizer {
    raft: Raft<TypeConfig>,
    waiting: Arc<Mutex<Waiting>>,
    checks: IntCounter,
}

/// The reads waiting for the next check, and whether a check is running.
#[derive(Default)]
struct Waiting {
    running: bool,
    reads: Vec<oneshot::Sender<CheckResult>>,
}

impl Linearizer {
    /// Checks for `raft`, counted in `checks`.
    pub fn new(raft: Raft<TypeConfig>, checks: IntCounter) -> Linearizer {
        Linearizer {
            raft,
            waiting: Arc::default(),
            checks,
        }
    }

    /// Returns once this node is confirmed as the leader by a check that
    /// started after the call, with its state applied up to what the
    /// leader had committed then.
    pub async fn ensure(&self) -> CheckResult {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            waiting.reads.push(tx);
            !std::mem::replace(&mut waiting.running, true)
        };
        if start {
            tokio::spawn(self.clone().run());
        }
        match rx.await {
            Ok(result) => result,
            // The checking task ended without answering: the Raft runtime
            // is shutting down.
            Err(_) => Err(RaftError::Fatal(openraft::error::Fatal::Stopped)),
        }
    }

    /// Runs checks until no read waits.
    async fn run(self) {
        loop {
            let reads = {
                let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
                if waiting.reads.is_empty() {
                    waiting.running = false;
                    return;
                }
                std::mem::take(&mut waiting.reads)
            };
            self.checks.inc();
            let result = self.raft.ensure_linearizable().await.map(|_| ());
            for read in reads {
                let _ = read.send(result.clone());
            }
        }
    }
}
