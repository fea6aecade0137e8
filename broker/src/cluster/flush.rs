//! Flushing the links to a node that gives a session away.
//!
//! Another member that matched a publish for the session before the taking
//! node's routes reached it sent the message to the giving node only. Such
//! a message may still be in that member's link when the giving node lets
//! the session go, and would then find no session there. So before it
//! lets go, the giving node asks every other member to flush its link to
//! it (`BrokerLink.FlushLink`): a barrier goes down the link behind what is
//! queued, and its acknowledgement means the giving node has routed all of
//! that, into the session it then hands over.

use std::time::Duration;

use tidemq_meta::NodeId;
use tidemq_proto::grpc::v1 as pb;
use tidemq_proto::grpc::v1::broker_link_client::BrokerLinkClient;
use tokio::time::Instant;
use tracing::warn;

use super::Cluster;

impl Cluster {
    /// Waits until every other member has flushed its link to this node,
    /// until `deadline` at most; returns whether all did.
    pub(crate) async fn links_flushed_to_me(&self, deadline: Instant) -> bool {
        let asks = self
            .peers
            .others()
            .into_iter()
            .map(|(peer, addr)| async move {
                let flushed = self.ask_flush(&addr, deadline).await;
                if !flushed {
                    warn!(
                        peer,
                        "a peer did not flush its link before a session was handed over: \
                         messages it sent to the session here may be lost"
                    );
                }
                flushed
            });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .all(|flushed| flushed)
    }

    async fn ask_flush(&self, addr: &str, deadline: Instant) -> bool {
        let Ok(channel) = self.channels.get(addr) else {
            return false;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let request = pb::FlushLinkRequest {
            node_id: self.me,
            wait_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX),
        };
        let mut client = BrokerLinkClient::new(channel);
        let grace = Duration::from_millis(200);
        match tokio::time::timeout_at(deadline + grace, client.flush_link(request)).await {
            Ok(Ok(reply)) => reply.get_ref().flushed,
            _ => false,
        }
    }

    /// Answers `FlushLink` from `peer`: whether everything queued for it
    /// before now was acknowledged by it or kept for it within `wait`.
    pub(crate) async fn link_flushed(&self, peer: NodeId, wait: Duration) -> bool {
        let Some(done) = self.links.barrier(peer) else {
            return true;
        };
        matches!(tokio::time::timeout(wait, done).await, Ok(Ok(Ok(()))))
    }
}
