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

use super::{ANSWER_GRACE, Cluster, wait_ms_until};

impl Cluster {
    /// Waits until every other member has flushed its link to this node,
    /// until `deadline` at most (one that did not is logged).
    pub(crate) async fn links_flushed_to_me(&self, deadline: Instant) {
        let asks = self
            .peers
            .others()
            .into_iter()
            .map(|(peer, addr)| async move {
                if !self.ask_flush(&addr, deadline).await {
                    warn!(
                        peer,
                        "a peer did not flush its link before a session was handed over: \
                         messages it sent to the session here may be lost"
                    );
                }
            });
        futures_util::future::join_all(asks).await;
    }

    async fn ask_flush(&self, addr: &str, deadline: Instant) -> bool {
        let Ok(channel) = self.channels.get(addr) else {
            return false;
        };
        let request = pb::FlushLinkRequest {
            node_id: self.me,
            wait_ms: wait_ms_until(deadline),
        };
        let mut client = BrokerLinkClient::new(channel);
        match tokio::time::timeout_at(deadline + ANSWER_GRACE, client.flush_link(request)).await {
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
