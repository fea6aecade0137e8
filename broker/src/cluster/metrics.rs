//! The cluster's metrics: routes, route writes and waits, retained writes,
//! forwarded and received messages, and per peer the links' traffic, drops
//! and latency.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::handoff::HandoffMetrics;
use super::keeper::KeeperMetrics;
use super::link::LinkMetrics;
use super::retained::RetainedMetrics;

/// The cluster's metrics.
pub(super) struct ClusterMetrics {
    pub(super) routes: IntGauge,
    pub(super) route_lag: IntGauge,
    pub(super) route_writes: IntCounter,
    pub(super) route_write_errors: IntCounter,
    pub(super) route_wait_timeouts: IntCounter,
    pub(super) route_write_timeouts: IntCounter,
    pub(super) forward_wait_timeouts: IntCounter,
    pub(super) received: IntCounter,
    pub(super) malformed: IntCounter,
    pub(super) duplicates: IntCounter,
    /// Sessions moved between nodes, by `result`: `taken` (here, from
    /// another node), `given` (to another node), `ended` (another node's
    /// clean start ended it here), `failed` (a CONNECT here refused because
    /// the holder did not hand it over), `kept` (a hand-over to another
    /// node it did not complete: the session stays here).
    pub(super) takeovers: IntCounterVec,
    pub(super) link: LinkMetrics,
    pub(super) handoff: HandoffMetrics,
    pub(super) retained: RetainedMetrics,
}

impl ClusterMetrics {
    pub(super) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        fn reg<M: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            metric: M,
        ) -> Result<M, prometheus::Error> {
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        }
        let counter = |name: &str, help: &str| reg(registry, IntCounter::new(name, help)?);
        let per_peer = |name: &str, help: &str, labels: &[&str]| {
            reg(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let gauge_per_peer = |name: &str, help: &str| {
            reg(
                registry,
                IntGaugeVec::new(Opts::new(name, help), &["peer"])?,
            )
        };
        Ok(ClusterMetrics {
            routes: reg(
                registry,
                IntGauge::new(
                    "tidemq_cluster_routes",
                    "Routes (filter, node) in this node's route table",
                )?,
            )?,
            route_lag: reg(
                registry,
                IntGauge::new(
                    "tidemq_cluster_route_table_lag",
                    "Metadata group entries this node's route table has not applied yet",
                )?,
            )?,
            route_writes: counter(
                "tidemq_cluster_route_writes_total",
                "SetRoutes writes of this node's routes",
            )?,
            route_write_errors: counter(
                "tidemq_cluster_route_write_errors_total",
                "Failed SetRoutes writes (each is retried)",
            )?,
            route_wait_timeouts: counter(
                "tidemq_cluster_route_wait_timeouts_total",
                "SUBACKs sent before a node answered that it applied the new route",
            )?,
            route_write_timeouts: counter(
                "tidemq_cluster_route_write_timeouts_total",
                "SUBSCRIBEs refused because their new route did not commit in time (no majority)",
            )?,
            forward_wait_timeouts: counter(
                "tidemq_cluster_forward_wait_timeouts_total",
                "QoS 1/2 acknowledgements sent before every node the message went to confirmed it",
            )?,
            received: counter(
                "tidemq_cluster_received_messages_total",
                "Messages other nodes forwarded to this one",
            )?,
            malformed: counter(
                "tidemq_cluster_received_malformed_total",
                "Forwarded messages that did not decode (dropped)",
            )?,
            duplicates: counter(
                "tidemq_cluster_received_duplicates_total",
                "Forwarded messages a replay sent again that this node had routed already (skipped)",
            )?,
            takeovers: per_peer(
                "tidemq_cluster_takeovers_total",
                "Sessions moved between this node and another, by result \
                 (taken, given, ended, failed, kept)",
                &["result"],
            )?,
            handoff: HandoffMetrics {
                backlog: gauge_per_peer(
                    "tidemq_cluster_handoff_backlog",
                    "Messages in a peer's hand-off log it has not acknowledged",
                )?,
                bytes: gauge_per_peer(
                    "tidemq_cluster_handoff_bytes",
                    "Bytes on disk of a peer's hand-off log",
                )?,
                appended: per_peer(
                    "tidemq_cluster_handoff_appended_total",
                    "Messages kept in a peer's hand-off log because the peer could not be sent them",
                    &["peer"],
                )?,
                replayed: per_peer(
                    "tidemq_cluster_handoff_replayed_total",
                    "Hand-off log records a peer acknowledged after a replay",
                    &["peer"],
                )?,
                refused: per_peer(
                    "tidemq_cluster_handoff_refused_total",
                    "QoS 1/2 messages for a peer that its hand-off log could not keep \
                     (full, or a storage error): their publishers were refused",
                    &["peer"],
                )?,
                malformed: counter(
                    "tidemq_cluster_handoff_malformed_total",
                    "Hand-off log records that did not decode (skipped)",
                )?,
            },
            retained: RetainedMetrics {
                writes: counter(
                    "tidemq_cluster_retained_writes_total",
                    "SetRetained writes of this node's retained messages",
                )?,
                write_errors: counter(
                    "tidemq_cluster_retained_write_errors_total",
                    "Failed SetRetained writes (each is retried)",
                )?,
                write_timeouts: counter(
                    "tidemq_cluster_retained_write_timeouts_total",
                    "Retained QoS 1/2 publishes refused because their write did not commit in time (no majority)",
                )?,
                malformed: counter(
                    "tidemq_cluster_retained_malformed_total",
                    "Retained messages applied from the metadata group that did not decode (skipped)",
                )?,
                pending: reg(
                    registry,
                    IntGauge::new(
                        "tidemq_cluster_retained_pending",
                        "Topics whose retained message is not written to the metadata group yet",
                    )?,
                )?,
            },
            link: LinkMetrics {
                messages: per_peer(
                    "tidemq_cluster_forwarded_messages_total",
                    "Messages sent to a peer",
                    &["peer"],
                )?,
                bytes: per_peer(
                    "tidemq_cluster_forwarded_bytes_total",
                    "PUBLISH bytes sent to a peer",
                    &["peer"],
                )?,
                batches: per_peer(
                    "tidemq_cluster_forwarded_batches_total",
                    "Batches sent to a peer",
                    &["peer"],
                )?,
                dropped: per_peer(
                    "tidemq_cluster_forward_dropped_total",
                    "Messages for a peer that were not sent (queue_full, unreachable, link_broken)",
                    &["peer", "reason"],
                )?,
                connects: per_peer(
                    "tidemq_cluster_link_connects_total",
                    "Links opened to a peer",
                    &["peer"],
                )?,
                queued: reg(
                    registry,
                    IntGaugeVec::new(
                        Opts::new(
                            "tidemq_cluster_forward_queued",
                            "Messages queued for a peer",
                        ),
                        &["peer"],
                    )?,
                )?,
                latency: reg(
                    registry,
                    prometheus::HistogramVec::new(
                        prometheus::HistogramOpts::new(
                            "tidemq_cluster_forward_seconds",
                            "From sending a batch to a peer to its acknowledgement \
                             (routed there, and stored for its persistent sessions)",
                        )
                        .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 17)?),
                        &["peer"],
                    )?,
                )?,
            },
        })
    }

    pub(super) fn keeper(&self) -> KeeperMetrics {
        KeeperMetrics {
            writes: self.route_writes.clone(),
            write_errors: self.route_write_errors.clone(),
        }
    }
}
