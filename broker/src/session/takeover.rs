//! One live connection per session: attaching, taking over, detaching.
//!
//! A connection that attaches to a session another connection holds takes
//! it over in one step under the session's lock: the attachment, the
//! record of the takeover and the generation change together. It then
//! rings the session's doorbell, which wakes the connection taken over;
//! that one finds it is no longer attached ([`Session::taken_over`]) and
//! closes. The new connection waits ([`SessionRegistry::wait_departure`])
//! until the old one has detached ([`Session::depart`]) before it answers
//! CONNACK: never two live connections on one session.
//!
//! Nothing here is allocated per connection: the record lives in the
//! session's state, the wake-up is the doorbell every connection polls
//! anyway, and the departures are announced on one `Notify` of the
//! registry (takeovers are rare; a waiter checks its own session).

use std::pin::pin;
use std::time::Duration;

use super::{Attached, Attachment, Claim, Refusal, Session, SessionRegistry};

/// The last takeover of a session.
#[derive(Debug, Default)]
pub(super) struct Takeover {
    /// The connection taken over, until it has detached.
    departing: Option<u64>,
    /// Whether the connection that took over resumed the session (the
    /// session continues for the one taken over).
    resumed: bool,
}

impl Session {
    /// Attaches a connection, in the same step taking the session from the
    /// connection that had it (which is woken to close: see the [module
    /// docs](self)) and cancelling the offline timers. `resumes` is whether
    /// the new connection continues the session (no clean start). Returns
    /// the previous attachment (to wait for) and whether the session has
    /// state a client may resume; hands `attachment` back when the session
    /// has ended (look it up in the registry again) or, with
    /// [`Claim::Owned`], belongs to another user.
    pub fn attach(
        &self,
        attachment: Attachment,
        claim: Claim<'_>,
        resumes: bool,
    ) -> Result<Attached, (Attachment, Refusal)> {
        let attached = {
            let mut state = self.lock();
            if state.ended {
                return Err((attachment, Refusal::Ended));
            }
            if let Claim::Owned { username } = claim
                && state.generation > 0
                && state.username.is_some()
                && state.username.as_deref() != username
            {
                return Err((attachment, Refusal::NotOwner));
            }
            state.cancel_timers();
            let previous = state.attachment.replace(attachment);
            if let Some(previous) = previous {
                state.takeover = Takeover {
                    departing: Some(previous.connection_id),
                    resumed: resumes,
                };
            }
            let resumable = state.generation > 0;
            state.generation += 1;
            Attached {
                previous,
                resumable,
                pending_will: state.pending_will.take().map(|will| *will),
            }
        };
        if attached.previous.is_some() {
            self.doorbell.ring();
        }
        Ok(attached)
    }

    /// Releases the attachment of connection `connection_id`, if it still
    /// has it. Returns whether it did (`false`: taken over meanwhile).
    pub fn release(&self, connection_id: u64) -> bool {
        let mut state = self.lock();
        let ours = state
            .attachment
            .is_some_and(|a| a.connection_id == connection_id);
        if ours {
            state.attachment = None;
        }
        ours
    }

    /// `Some` once connection `connection_id` has been taken over: whether
    /// the session continues (the connection that took over resumed it).
    /// Checked by a connection whenever the doorbell rang.
    pub fn taken_over(&self, connection_id: u64) -> Option<bool> {
        let state = self.lock();
        let ours = state
            .attachment
            .is_some_and(|a| a.connection_id == connection_id);
        (!ours).then_some(state.takeover.resumed)
    }

    /// Records that connection `connection_id` has detached; whether it
    /// was the one a takeover waits for (announce it then:
    /// [`SessionRegistry::departed`]). Idempotent.
    pub fn depart(&self, connection_id: u64) -> bool {
        let mut state = self.lock();
        let waited_for = state.takeover.departing == Some(connection_id);
        if waited_for {
            state.takeover.departing = None;
        }
        waited_for
    }

    /// Whether connection `connection_id`, taken over, has not detached yet.
    fn departing(&self, connection_id: u64) -> bool {
        self.lock().takeover.departing == Some(connection_id)
    }
}

impl SessionRegistry {
    /// Announces a departure recorded by [`Session::depart`].
    pub fn departed(&self) {
        self.departures.notify_waiters();
    }

    /// Waits until connection `connection_id`, taken over on `session`,
    /// has detached, for `limit` at most (a connection stuck in its
    /// close). Whether it did.
    pub async fn wait_departure(
        &self,
        session: &Session,
        connection_id: u64,
        limit: Duration,
    ) -> bool {
        let departed = async {
            loop {
                // Registered before the check: a departure between the two
                // is not missed.
                let mut notified = pin!(self.departures.notified());
                notified.as_mut().enable();
                if !session.departing(connection_id) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, departed).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tidemq_proto::mqtt::Protocol;

    use super::super::{Attachment, Claim, MemoryQueue, Session, SessionKey, SessionRegistry};

    fn session() -> Session {
        Session::new(
            SessionKey::new("default", "c"),
            Protocol::V5,
            MemoryQueue::new(10, 1000),
        )
    }

    fn attach(session: &Session, connection_id: u64, resumes: bool) {
        session
            .attach(Attachment { connection_id }, Claim::Anyone, resumes)
            .expect("not ended");
    }

    #[test]
    fn a_takeover_tells_the_old_connection_and_only_it() {
        let session = session();
        attach(&session, 1, true);
        assert_eq!(session.taken_over(1), None, "attached");
        attach(&session, 2, true);
        assert_eq!(session.taken_over(1), Some(true), "resumed by 2");
        assert_eq!(session.taken_over(2), None);
        attach(&session, 3, false);
        assert_eq!(session.taken_over(2), Some(false), "3 started clean");
    }

    #[tokio::test]
    async fn a_takeover_rings_the_doorbell() {
        let session = session();
        attach(&session, 1, true);
        attach(&session, 2, true);
        tokio::time::timeout(Duration::from_secs(1), session.doorbell.rung())
            .await
            .expect("rung by the takeover");
    }

    #[test]
    fn only_the_connection_waited_for_departs_and_only_once() {
        let session = session();
        attach(&session, 1, true);
        assert!(!session.depart(1), "nobody waits for 1 yet");
        attach(&session, 2, true);
        assert!(!session.depart(2), "2 is not the one taken over");
        assert!(session.depart(1));
        assert!(!session.depart(1), "already departed");
    }

    #[tokio::test]
    async fn the_new_connection_waits_until_the_old_one_departs() {
        let registry = Arc::new(SessionRegistry::default());
        let session = Arc::new(session());
        attach(&session, 1, true);
        attach(&session, 2, true);
        let waiting = tokio::spawn({
            let (registry, session) = (Arc::clone(&registry), Arc::clone(&session));
            async move {
                registry
                    .wait_departure(&session, 1, Duration::from_secs(10))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "1 has not departed");
        assert!(session.depart(1));
        registry.departed();
        let departed = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the departure")
            .expect("joins");
        assert!(departed);
    }

    #[tokio::test]
    async fn the_wait_gives_up_at_its_limit() {
        let registry = SessionRegistry::default();
        let session = session();
        attach(&session, 1, true);
        attach(&session, 2, true);
        let departed = registry
            .wait_departure(&session, 1, Duration::from_millis(30))
            .await;
        assert!(!departed);
    }
}
