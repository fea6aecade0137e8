//! Everything the broker writes to a client: encoding, outbound topic
//! aliases, the client's maximum packet size, and draining the session's
//! queue into the inflight window.

use std::time::Instant;

use tidemq_proto::mqtt::{self, Packet, PubResponse, Publish};
use tracing::warn;

use futures_util::FutureExt;

use super::{Connection, Io, turn};
use crate::session::{DropReason, InflightState};

impl Connection {
    /// Encodes `packet` into the write buffer.
    pub(super) fn send(&mut self, io: &mut Io, packet: &Packet) {
        match mqtt::encode(packet, self.protocol, io.out()) {
            Ok(()) => self.shared.metrics.packets_out.count(packet),
            Err(e) => {
                warn!(packet = packet.name(), error = %e, "cannot encode")
            }
        }
    }

    /// Encodes a PUBLISH, applying an outbound topic alias, unless it is
    /// larger than the client accepts (then it is dropped, as 5.0 requires).
    fn send_publish(&mut self, mut publish: Publish, io: &mut Io) -> bool {
        let assigned = self.aliases.apply(&mut publish);
        let packet = Packet::Publish(publish);
        match mqtt::encoded_len(&packet, self.protocol) {
            Ok(len) if len <= self.limits.packet_out() => {
                if let Some((topic, alias)) = assigned {
                    self.aliases.record(topic, alias);
                }
                self.send(io, &packet);
                self.shared.metrics.messages_out.inc();
                true
            }
            _ => {
                self.count_drop(DropReason::TooLarge);
                false
            }
        }
    }

    /// Moves queued deliveries into flight as the window and the turn's
    /// budget allow and writes them.
    pub(super) fn pump(&mut self, io: &mut Io) {
        let now = Instant::now();
        let mut expired = 0u64;
        let max = usize::try_from(self.budget.left() / turn::WRITE).unwrap_or(usize::MAX);
        let (publishes, expired_stored, load) = {
            let mut state = self.session.lock();
            let publishes = state.take_sendable(self.limits.window(), max, now, |_| expired += 1);
            let expired_stored = std::mem::take(&mut state.expired_stored);
            // The front of the queue is on disk: read the next stretch.
            let load = (state.needs_load() && self.loading.is_empty()).then(|| {
                state
                    .queue
                    .leading_stored(self.limits.window().clamp(16, 256))
            });
            (publishes, expired_stored, load)
        };
        if expired > 0 {
            self.shared
                .metrics
                .messages_dropped
                .with_label_values(&[DropReason::Expired.as_str()])
                .inc_by(expired);
        }
        for at in expired_stored {
            self.completed(Some(at));
        }
        if let (Some(refs), Some(store)) = (load, self.shared.durable.clone()) {
            let key = self.session.key.to_string();
            self.loading
                .push_back(async move { store.load(&key, &refs).await }.boxed());
        }
        for publish in publishes {
            self.budget.charge(turn::WRITE);
            let packet_id = publish.packet_id;
            if !self.send_publish(publish, io)
                && let Some(id) = packet_id
            {
                // Never sent, so never acknowledged: free its slot.
                let done = self.session.lock().on_unsent(id);
                self.completed(done.stored());
            }
        }
        self.record_completions();
    }

    pub(super) fn resend_inflight(&mut self, io: &mut Io) {
        let now = Instant::now();
        let inflight: Vec<_> = self.session.lock().inflight.iter().cloned().collect();
        for item in inflight {
            match item.state {
                InflightState::AwaitPubComp => {
                    self.send(io, &Packet::PubRel(PubResponse::success(item.packet_id)));
                }
                InflightState::AwaitPubAck | InflightState::AwaitPubRec => {
                    let publish = item.delivery.to_publish(Some(item.packet_id), true, now);
                    self.send_publish(publish, io);
                }
            }
        }
    }

    fn count_drop(&self, reason: DropReason) {
        self.session.count_drop();
        self.shared
            .metrics
            .messages_dropped
            .with_label_values(&[reason.as_str()])
            .inc();
    }
}
