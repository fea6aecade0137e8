//! `[cluster]`: routing between the brokers of a cluster.

use std::time::Duration;

use serde::Deserialize;

/// `[cluster]`: how a node routes messages to the other nodes of its
/// cluster (see `docs/cluster.md`). The members are the meta service's
/// (`[meta] peers` / `join`); a node alone has no one to route to.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Longest a SUBACK waits for a new route to be applied by every other
    /// node, in milliseconds. A node that has not answered by then is
    /// passed over (counted in `tidemq_cluster_route_wait_timeouts_total`).
    pub route_wait_ms: u64,
    /// Longest a QoS 1/2 publisher's PUBACK/PUBREC waits for the other
    /// nodes to confirm they routed (and stored) the message, in
    /// milliseconds; past it the acknowledgement goes out anyway (counted
    /// in `tidemq_cluster_forward_wait_timeouts_total`).
    pub forward_wait_ms: u64,
    /// Messages queued for one peer, at most; past it a message for that
    /// peer is dropped and counted
    /// (`tidemq_cluster_forward_dropped_total{reason="queue_full"}`).
    pub link_queue_messages: usize,
    /// Messages in one batch on a link, at most.
    pub link_batch_messages: usize,
    /// Bytes of one batch on a link, about at most.
    pub link_batch_bytes: usize,
    /// Bytes of the hand-off log kept for one peer that cannot be reached
    /// (`{data_dir}/handoff`, with `[storage]` on), at most. Past it a QoS
    /// 1/2 message for that peer is refused (5.0: PUBACK/PUBREC 0x97;
    /// `tidemq_cluster_handoff_refused_total`).
    pub handoff_max_bytes: u64,
    /// Longest a CONNECT for a session another node holds waits for that
    /// node to hand it over, in milliseconds (its client disconnected, the
    /// session's state sent and stored here). Past it the CONNECT is
    /// refused (CONNACK 0x88, 3.1.1: 0x03) and the session stays where it
    /// was (`tidemq_cluster_takeovers_total{result="failed"}`).
    pub takeover_wait_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            route_wait_ms: 3000,
            forward_wait_ms: 5000,
            link_queue_messages: 65_536,
            link_batch_messages: 512,
            link_batch_bytes: 1024 * 1024,
            handoff_max_bytes: 1024 * 1024 * 1024,
            takeover_wait_ms: 10_000,
        }
    }
}

impl ClusterConfig {
    /// [`ClusterConfig::route_wait_ms`] as a duration.
    pub fn route_wait(&self) -> Duration {
        Duration::from_millis(self.route_wait_ms)
    }

    /// [`ClusterConfig::takeover_wait_ms`] as a duration.
    pub fn takeover_wait(&self) -> Duration {
        Duration::from_millis(self.takeover_wait_ms)
    }

    /// [`ClusterConfig::forward_wait_ms`] as a duration.
    pub fn forward_wait(&self) -> Duration {
        Duration::from_millis(self.forward_wait_ms)
    }
}
