//! Prompt elections after a leader dies.
//!
//! openraft 0.9 lets a follower stand for election only after the leader
//! lease (its `election_timeout_max`) *plus* a random election timeout have
//! passed without a heartbeat: 3 to 4 seconds with the default 1–2 s clock.
//! The lease is what matters for safety: a follower refuses to vote while it
//! heard from a leader less than a lease ago, so no node can win earlier.
//! The extra timeout on top only delays recovery.
//!
//! This watchdog stands for election as soon as a vote can be granted: when
//! a voter has heard nothing from its leader for the lease plus a small
//! random spread (a quarter of the election timeout range, so two survivors
//! rarely stand at once). A dead leader is replaced in about
//! `election_timeout_max` + 150 ms instead of up to twice that. If a vote
//! splits anyway, the watchdog waits a random election timeout before
//! standing again, as Raft does.
//!
//! "Heard from the leader" is any AppendEntries (heartbeats included) or
//! InstallSnapshot call the [`RaftServer`](crate::grpc::RaftServer) receives
//! for the group, recorded in [`LeaderContact`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};

use crate::types::TypeConfig;

/// When each group last heard from a leader. Lock-free: one atomic per group.
#[derive(Debug)]
pub struct LeaderContact {
    base: Instant,
    /// Milliseconds since `base`, per group.
    last: Vec<AtomicU64>,
}

impl LeaderContact {
    /// Contact times for `groups` groups, all starting now.
    pub fn new(groups: usize) -> LeaderContact {
        LeaderContact {
            base: Instant::now(),
            last: (0..groups).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records that `group` heard from its leader now.
    pub fn touch(&self, group: usize) {
        if let Some(last) = self.last.get(group) {
            last.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Time since `group` last heard from its leader.
    fn silence(&self, group: usize) -> Duration {
        let last = self
            .last
            .get(group)
            .map_or(0, |last| last.load(Ordering::Relaxed));
        self.base
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }
}

/// The watchdog's clock, from the Raft configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// openraft's leader lease: `election_timeout_max`.
    pub(crate) lease: Duration,
    /// `election_timeout_min`.
    pub(crate) timeout_min: Duration,
    /// `election_timeout_max - election_timeout_min`.
    pub(crate) timeout_range: Duration,
    /// How often the watchdog looks.
    pub(crate) tick: Duration,
}

impl Clock {
    pub(crate) fn new(heartbeat: Duration, election_timeout: (Duration, Duration)) -> Clock {
        let (min, max) = election_timeout;
        Clock {
            lease: max,
            timeout_min: min,
            timeout_range: max.saturating_sub(min),
            tick: (heartbeat / 2).clamp(Duration::from_millis(10), Duration::from_millis(100)),
        }
    }

    fn spread(&self) -> Duration {
        random_below(self.timeout_range / 4)
    }
}

/// Per-group state of the watchdog.
struct Watch {
    /// Silence beyond the lease before standing, drawn anew after each try.
    spread: Duration,
    /// When the watchdog last made this node stand.
    tried: Option<Instant>,
    /// Wait after a try before the next one.
    backoff: Duration,
}

/// Runs until every group's Raft has shut down.
pub(crate) async fn watchdog(
    rafts: Arc<Vec<Raft<TypeConfig>>>,
    contact: Arc<LeaderContact>,
    clock: Clock,
) {
    let mut watches: Vec<Watch> = rafts
        .iter()
        .map(|_| Watch {
            spread: clock.spread(),
            tried: None,
            backoff: Duration::ZERO,
        })
        .collect();
    let mut ticker = tokio::time::interval(clock.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut running = 0;
        for (group, raft) in rafts.iter().enumerate() {
            let (stands, voters) = {
                let metrics = raft.metrics();
                let m = metrics.borrow();
                if m.running_state.is_err() {
                    continue;
                }
                running += 1;
                let membership = m.membership_config.membership();
                let is_voter = membership.voter_ids().any(|id| id == m.id);
                let waiting = matches!(m.state, ServerState::Follower | ServerState::Candidate);
                (is_voter && waiting, membership.voter_ids().count())
            };
            // A single voter elects itself at once; openraft handles that.
            if !stands || voters < 2 {
                continue;
            }
            let watch = &mut watches[group];
            if contact.silence(group) < clock.lease + watch.spread {
                continue;
            }
            if watch.tried.is_some_and(|at| at.elapsed() < watch.backoff) {
                continue;
            }
            tracing::info!(group, silence = ?contact.silence(group), "no leader heard: standing for election");
            if raft.trigger().elect().await.is_err() {
                continue;
            }
            watch.tried = Some(Instant::now());
            watch.backoff = clock.timeout_min + random_below(clock.timeout_range);
            watch.spread = clock.spread();
        }
        if running == 0 {
            return;
        }
    }
}

fn random_below(limit: Duration) -> Duration {
    let millis = limit.as_millis() as u64;
    if millis == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::random_range(0..millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_measures_silence_per_group() {
        let contact = LeaderContact::new(2);
        std::thread::sleep(Duration::from_millis(30));
        contact.touch(1);
        assert!(contact.silence(0) >= Duration::from_millis(30));
        assert!(contact.silence(1) < Duration::from_millis(30));
        contact.touch(7); // unknown group: ignored
    }

    #[test]
    fn the_clock_follows_the_raft_configuration() {
        let clock = Clock::new(
            Duration::from_millis(100),
            (Duration::from_millis(1000), Duration::from_millis(2000)),
        );
        assert_eq!(clock.lease, Duration::from_millis(2000));
        assert_eq!(clock.tick, Duration::from_millis(50));
        for _ in 0..100 {
            assert!(clock.spread() < Duration::from_millis(250));
        }
    }
}
