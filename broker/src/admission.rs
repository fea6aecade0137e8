//! Which accepted TCP connections the listener serves: at most
//! `listener.max_connections` at once, at most
//! `listener.max_connections_per_address` from one client address, and new
//! ones at most `listener.max_connect_rate` a second (a token bucket with a
//! second's worth of burst). A connection over a limit is closed at once,
//! before anything is read from it, and counted in
//! `tidemq_connections_refused_total` and
//! `tidemq_connections_limited_total{reason}`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use dashmap::DashMap;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// `listener.max_connections` are open.
    Connections,
    /// Its address has `listener.max_connections_per_address` open.
    PerAddress,
    /// New connections came faster than `listener.max_connect_rate`.
    Rate,
}

impl Limited {
    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Limited::Connections => "max_connections",
            Limited::PerAddress => "per_address",
            Limited::Rate => "rate",
        }
    }
}

/// The listener's limits; owned by its accept loop.
pub struct Admission {
    places: Arc<Places>,
    max_connections: usize,
    max_per_address: usize,
    bucket: TokenBucket,
}

/// The places taken: shared by the listener and every connection it
/// admitted (one pointer in each).
struct Places {
    open: AtomicUsize,
    per_address: DashMap<IpAddr, usize>,
}

/// Held by a connection while it is open; gives its places back when
/// dropped. Keeps the client's address for the connection, which needs it
/// too (its spans).
pub struct Admitted {
    places: Arc<Places>,
    peer: SocketAddr,
}

impl Admitted {
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.places
            .per_address
            .remove_if_mut(&self.peer.ip(), |_, open| {
                *open = open.saturating_sub(1);
                *open == 0
            });
        self.places.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// Limits of `max_connections` at once, `max_per_address` per address
    /// and `rate` new connections a second (0: no limit, for the last two).
    pub fn new(max_connections: usize, max_per_address: usize, rate: u32) -> Self {
        Self {
            places: Arc::new(Places {
                open: AtomicUsize::new(0),
                per_address: DashMap::new(),
            }),
            max_connections,
            max_per_address,
            bucket: TokenBucket::new(rate, Instant::now()),
        }
    }

    /// Admits a connection from `peer`, or says which limit it hit.
    pub fn admit(&mut self, peer: SocketAddr, now: Instant) -> Result<Admitted, Limited> {
        if !self.bucket.take(now) {
            return Err(Limited::Rate);
        }
        // Only this (the accept loop) takes places; connections give them
        // back concurrently, which can only make room.
        if self.places.open.load(Ordering::Acquire) >= self.max_connections {
            return Err(Limited::Connections);
        }
        let mut open = self.places.per_address.entry(peer.ip()).or_insert(0);
        if self.max_per_address > 0 && *open >= self.max_per_address {
            return Err(Limited::PerAddress);
        }
        *open += 1;
        drop(open);
        self.places.open.fetch_add(1, Ordering::AcqRel);
        Ok(Admitted {
            places: Arc::clone(&self.places),
            peer,
        })
    }
}

/// `rate` tokens a second, at most `rate` saved up; rate 0 never runs dry.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use super::{Admission, Limited};

    const A: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 40001);
    const B: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 40001);

    #[test]
    fn each_limit_refuses_and_gives_places_back() {
        let now = Instant::now();
        let mut admission = Admission::new(3, 2, 0);
        let a1 = admission.admit(A, now).expect("room");
        let other_port = SocketAddr::new(A.ip(), 40002);
        let _a2 = admission.admit(other_port, now).expect("room");
        assert_eq!(admission.admit(A, now).err(), Some(Limited::PerAddress));
        let _b1 = admission.admit(B, now).expect("another address");
        assert_eq!(admission.admit(B, now).err(), Some(Limited::Connections));
        drop(a1);
        assert!(
            admission.admit(A, now).is_ok(),
            "a closed connection gives its places back"
        );
    }

    #[test]
    fn the_rate_limit_allows_a_seconds_burst_then_refills() {
        let start = Instant::now();
        let mut admission = Admission::new(1000, 0, 10);
        let admitted: Vec<_> = (0..12)
            .filter_map(|_| admission.admit(A, start).ok())
            .collect();
        assert_eq!(admitted.len(), 10);
        assert_eq!(admission.admit(A, start).err(), Some(Limited::Rate));
        let later = start + Duration::from_millis(250);
        let refilled = (0..5).filter(|_| admission.admit(A, later).is_ok()).count();
        assert_eq!(refilled, 2, "10 a second: 2.5 tokens after 250 ms");
    }
}
