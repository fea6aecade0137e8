//! A pool of tonic channels per remote address.
//!
//! One HTTP/2 connection serialises its streams' frames, so a busy client
//! spreads its calls over a few channels per address, picked round-robin by
//! an atomic counter. Channels connect lazily and reconnect by themselves.
//! Every call through them carries the cluster secret, when there is one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::{AttachSecret, ClusterSecret};
use crate::error::MetaError;

/// A channel whose calls carry the cluster secret.
pub type AuthChannel = InterceptedService<Channel, AttachSecret>;

/// Channels per address.
const CHANNELS_PER_ADDR: usize = 4;

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct ChannelPool {
    inner: Arc<DashMap<String, Arc<Slot>>>,
    secret: AttachSecret,
}

struct Slot {
    channels: Vec<Channel>,
    next: AtomicUsize,
}

impl ChannelPool {
    /// A pool whose calls carry `secret`.
    pub fn new(secret: Option<ClusterSecret>) -> Self {
        Self {
            inner: Arc::default(),
            secret: AttachSecret(secret),
        }
    }

    /// A channel to `addr` (`host:port`), created on first use.
    pub fn get(&self, addr: &str) -> Result<AuthChannel, MetaError> {
        let channel = self.channel(addr)?;
        Ok(InterceptedService::new(channel, self.secret.clone()))
    }

    fn channel(&self, addr: &str) -> Result<Channel, MetaError> {
        if let Some(slot) = self.inner.get(addr) {
            return Ok(slot.pick());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| MetaError::InvalidArgument {
                reason: format!("bad address {addr:?}: {e}"),
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channels = (0..CHANNELS_PER_ADDR)
            .map(|_| endpoint.connect_lazy())
            .collect();
        let slot = self
            .inner
            .entry(addr.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    channels,
                    next: AtomicUsize::new(0),
                })
            })
            .clone();
        Ok(slot.pick())
    }
}

impl Slot {
    fn pick(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }
}
