//! Password checks off the tokio workers, and a brake on guessing.
//!
//! An argon2 verification costs tens of milliseconds of CPU on purpose. Run
//! on a broker worker, ~100 bad-password CONNECTs a second would stall every
//! connection of the node, so [`Login::verify`] runs each one on the
//! blocking pool, at most `auth.verify_threads` at a time (the rest wait
//! their turn without holding a thread).
//!
//! Repeated failures slow down: after a failed login from an address, or for
//! a user name, the next attempt from that address or for that name waits
//! `auth.failure_delay_ms`, doubling with each further failure up to
//! `auth.failure_delay_max_ms`; a success, or a quiet minute, clears it. The
//! wait happens in the connection's own task, so it costs the guesser time
//! and the broker nothing.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use prometheus::IntCounter;
use tokio::sync::Semaphore;

/// Failures older than this are forgotten.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Tracked addresses and user names kept before old entries are pruned.
const MAX_TRACKED: usize = 100_000;

/// Password checks and the record of recent failures.
pub struct Login {
    permits: Arc<Semaphore>,
    delayed: IntCounter,
    delay: Duration,
    max_delay: Duration,
    by_addr: DashMap<IpAddr, Failures>,
    by_user: DashMap<String, Failures>,
}

/// Recent failures of one address or user name.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Login {
    /// At most `threads` verifications at once; the first delay after a
    /// failure is `delay`, doubling up to `max_delay`; every attempt made to
    /// wait is counted in `delayed`.
    pub fn new(threads: usize, delay: Duration, max_delay: Duration, delayed: IntCounter) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(threads.max(1))),
            delayed,
            delay,
            max_delay,
            by_addr: DashMap::new(),
            by_user: DashMap::new(),
        }
    }

    /// How long an attempt from `addr` for `username` must wait first.
    pub fn delay_for(&self, addr: IpAddr, username: &str) -> Duration {
        let now = Instant::now();
        let of = |failures: Option<Failures>| {
            failures
                .filter(|f| now.duration_since(f.last) < FAILURE_WINDOW)
                .map_or(Duration::ZERO, |f| self.backoff(f.count))
        };
        let by_addr = of(self.by_addr.get(&addr).map(|f| *f));
        let by_user = of(self.by_user.get(username).map(|f| *f));
        by_addr.max(by_user)
    }

    /// Runs `check` (a password verification) off the tokio workers for an
    /// attempt from `addr` as `username`, after the delay earlier failures
    /// call for, and records the outcome. A `cached` login (one verified
    /// recently, [`super::Verified`]) waits the same delay and skips the
    /// check.
    pub async fn verify(
        &self,
        addr: IpAddr,
        username: &str,
        cached: bool,
        check: impl FnOnce() -> bool + Send + 'static,
    ) -> bool {
        let delay = self.delay_for(addr, username);
        if !delay.is_zero() {
            self.delayed.inc();
            tokio::time::sleep(delay).await;
        }
        let ok = cached
            || match self.permits.acquire().await {
                Ok(_permit) => tokio::task::spawn_blocking(check).await.unwrap_or(false),
                Err(_) => false,
            };
        self.record(addr, username, ok);
        ok
    }

    /// Records a login's outcome for its address and user name.
    fn record(&self, addr: IpAddr, username: &str, ok: bool) {
        if ok {
            self.by_addr.remove(&addr);
            self.by_user.remove(username);
            return;
        }
        let now = Instant::now();
        let bump = |f: &mut Failures| {
            if now.duration_since(f.last) >= FAILURE_WINDOW {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
        };
        let fresh = Failures {
            count: 0,
            last: now,
        };
        bump(&mut self.by_addr.entry(addr).or_insert(fresh));
        bump(&mut self.by_user.entry(username.to_string()).or_insert(fresh));
        if self.by_addr.len() > MAX_TRACKED || self.by_user.len() > MAX_TRACKED {
            self.by_addr
                .retain(|_, f| now.duration_since(f.last) < FAILURE_WINDOW);
            self.by_user
                .retain(|_, f| now.duration_since(f.last) < FAILURE_WINDOW);
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::Login;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    fn login() -> Login {
        let delayed = prometheus::IntCounter::new("delayed", "test").expect("counter");
        Login::new(
            2,
            Duration::from_millis(100),
            Duration::from_millis(350),
            delayed,
        )
    }

    #[test]
    fn failures_slow_the_address_and_the_user_name_down_doubling_to_a_cap() {
        let login = login();
        assert_eq!(login.delay_for(A, "alice"), Duration::ZERO);
        login.record(A, "alice", false);
        assert_eq!(login.delay_for(A, "alice"), Duration::from_millis(100));
        assert_eq!(
            login.delay_for(A, "bob"),
            Duration::from_millis(100),
            "same address"
        );
        assert_eq!(
            login.delay_for(B, "alice"),
            Duration::from_millis(100),
            "same user"
        );
        assert_eq!(login.delay_for(B, "bob"), Duration::ZERO);
        login.record(A, "alice", false);
        assert_eq!(login.delay_for(A, "alice"), Duration::from_millis(200));
        login.record(A, "alice", false);
        assert_eq!(
            login.delay_for(A, "alice"),
            Duration::from_millis(350),
            "capped"
        );
    }

    #[tokio::test]
    async fn verification_runs_off_the_runtime_thread_a_few_at_a_time() {
        let login = std::sync::Arc::new(login());
        let here = std::thread::current().id();
        let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut attempts = Vec::new();
        for i in 0..6u8 {
            let (login, running, most) = (login.clone(), running.clone(), most.clone());
            attempts.push(tokio::spawn(async move {
                let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
                login
                    .verify(addr, &format!("user{i}"), false, move || {
                        let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::current().id() != here
                    })
                    .await
            }));
        }
        for attempt in attempts {
            assert!(
                attempt.await.expect("no panic"),
                "ran on the runtime's thread"
            );
        }
        assert_eq!(
            most.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "verify_threads = 2"
        );
    }

    #[test]
    fn a_success_clears_the_record() {
        let login = login();
        login.record(A, "alice", false);
        login.record(A, "alice", true);
        assert_eq!(login.delay_for(A, "alice"), Duration::ZERO);
    }
}
