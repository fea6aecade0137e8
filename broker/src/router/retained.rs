//! [`RetainedStore`]: the retained messages of a broker, one per topic,
//! each with the [`Stamp`] of the write that set it.
//!
//! On a node of a cluster the store is written from two sides: a publish
//! on this node sets its message at once, and the metadata group applies
//! every node's retained writes (this node's too) in commit order. A node
//! numbers its own writes in the order it sends them, so the one rule that
//! keeps every node's store equal to the commit order is: an applied write
//! never replaces a newer write of the same origin ([`RetainedStore::apply`]).
//! That only ever matters on the origin, whose publish set a message before
//! an older write of its own came back applied.

use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockWriteGuard};
use std::time::Instant;

use crate::message::Message;
use crate::topic_tree::RetainTree;

use super::{RetainLimits, RetainRefused};

/// Which write set a retained message: the node that published it and that
/// node's number for the write. A broker outside a cluster stamps every
/// write [`Stamp::LOCAL`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// The publishing node.
    pub node: u64,
    /// Its number for the write, increasing across its restarts.
    pub seq: u64,
}

impl Stamp {
    /// The stamp of a broker that is not part of a cluster.
    pub const LOCAL: Stamp = Stamp { node: 0, seq: 0 };

    /// Whether this write is older than `other` from the same node.
    fn older_than(self, other: Stamp) -> bool {
        self.node == other.node && self.seq < other.seq
    }
}

/// A retained message and the write that set it.
struct Kept {
    message: Arc<Message>,
    stamp: Stamp,
}

/// The retained messages, with the bytes they hold.
#[derive(Default)]
struct Retained {
    tree: RetainTree<Kept>,
    bytes: usize,
}

impl Retained {
    /// Sets (or with an empty payload clears) `message`; `admit` sees the
    /// size of what it replaces and may refuse.
    fn put(
        &mut self,
        message: &Arc<Message>,
        stamp: Stamp,
        admit: impl FnOnce(&Retained, Option<&Kept>) -> bool,
    ) -> Result<(), RetainRefused> {
        let old = self.tree.get(&message.topic);
        if !admit(self, old) {
            return Err(RetainRefused);
        }
        let old_size = old.map_or(0, |kept| kept.message.size());
        if message.payload.is_empty() {
            self.tree.remove(&message.topic);
            self.bytes -= old_size;
        } else {
            let kept = Kept {
                message: Arc::clone(message),
                stamp,
            };
            self.tree.insert(&message.topic, kept);
            self.bytes = self.bytes - old_size + message.size();
        }
        Ok(())
    }
}

/// The retained messages of one broker, shared by its router and, on a
/// node of a cluster, by what applies the metadata group.
#[derive(Default)]
pub struct RetainedStore {
    retained: RwLock<Retained>,
    /// `tidemq_retained_messages`, once the broker has registered it.
    count: OnceLock<prometheus::IntGauge>,
}

impl RetainedStore {
    /// Keeps `gauge` at the number of retained messages from now on.
    pub(crate) fn count_in(&self, gauge: prometheus::IntGauge) {
        gauge.set(self.len() as i64);
        let _ = self.count.set(gauge);
    }

    /// Sets, replaces or (with an empty payload) clears the retained
    /// message of a topic as a publish does, unless that would take the
    /// retained messages past `limits` (clearing, and a replacement no
    /// larger than what it replaces, always pass). Returns the number of
    /// retained messages.
    pub fn set(
        &self,
        message: &Arc<Message>,
        stamp: Stamp,
        limits: RetainLimits,
    ) -> Result<usize, RetainRefused> {
        let mut retained = self.write();
        retained.put(message, stamp, |retained, old| {
            let old = old.map(|kept| kept.message.size());
            let bytes = retained.bytes - old.unwrap_or(0) + message.size();
            let count = retained.tree.len() + usize::from(old.is_none());
            let grows = old.is_none_or(|old| message.size() > old);
            message.payload.is_empty()
                || !grows
                || (count <= limits.max_messages && bytes <= limits.max_bytes)
        })?;
        Ok(self.counted(&retained))
    }

    /// Applies a write the metadata group committed: sets (or clears) its
    /// message unless the topic holds a newer write of the same origin.
    /// The limits were checked where it was published.
    pub(crate) fn apply(&self, message: &Arc<Message>, stamp: Stamp) {
        let mut retained = self.write();
        let _ = retained.put(message, stamp, |_, old| {
            old.is_none_or(|kept| !stamp.older_than(kept.stamp))
        });
        self.counted(&retained);
    }

    /// Replaces every retained message by `loaded` (the metadata group's
    /// whole state, read after a start or a snapshot).
    pub(crate) fn load(&self, loaded: impl IntoIterator<Item = (Arc<Message>, Stamp)>) {
        let mut fresh = Retained::default();
        for (message, stamp) in loaded {
            let _ = fresh.put(&message, stamp, |_, _| true);
        }
        let mut retained = self.write();
        *retained = fresh;
        self.counted(&retained);
    }

    /// Whether `topic` has a retained message.
    pub(crate) fn contains(&self, topic: &str) -> bool {
        self.read().tree.get(topic).is_some()
    }

    /// The unexpired retained messages matching `filter` (no shared
    /// prefix).
    pub(crate) fn matching(&self, filter: &str, now: Instant, out: &mut Vec<Arc<Message>>) {
        self.read().tree.for_each_match(filter, |_, kept| {
            if !kept.message.is_expired(now) {
                out.push(Arc::clone(&kept.message));
            }
        });
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.read().tree.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the retained messages hold ([`Message::size`] of each).
    pub fn bytes(&self) -> usize {
        self.read().bytes
    }

    fn counted(&self, retained: &Retained) -> usize {
        let count = retained.tree.len();
        if let Some(gauge) = self.count.get() {
            gauge.set(count as i64);
        }
        count
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Retained> {
        self.retained.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Retained> {
        self.retained
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tidemq_proto::mqtt::{PublishProperties, QoS};

    use super::*;

    fn message(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: PublishProperties::default(),
            publisher: None,
            expires_at: None,
            id: None,
        })
    }

    fn payload_of(store: &RetainedStore, topic: &str) -> Option<Bytes> {
        let mut out = Vec::new();
        store.matching(topic, Instant::now(), &mut out);
        out.pop().map(|m| m.payload.clone())
    }

    fn stamp(node: u64, seq: u64) -> Stamp {
        Stamp { node, seq }
    }

    #[test]
    fn an_applied_write_never_replaces_a_newer_one_of_its_origin() {
        let store = RetainedStore::default();
        // Node 1 published twice; its first write comes back applied.
        store
            .set(&message("t", b"1"), stamp(1, 1), RetainLimits::NONE)
            .expect("set");
        store
            .set(&message("t", b"2"), stamp(1, 2), RetainLimits::NONE)
            .expect("set");
        store.apply(&message("t", b"1"), stamp(1, 1));
        assert_eq!(payload_of(&store, "t").as_deref(), Some(&b"2"[..]));
        // Another origin's write replaces it whatever its number.
        store.apply(&message("t", b"x"), stamp(2, 0));
        assert_eq!(payload_of(&store, "t").as_deref(), Some(&b"x"[..]));
        // Node 1's second write, committed after it, wins in the end.
        store.apply(&message("t", b"2"), stamp(1, 2));
        assert_eq!(payload_of(&store, "t").as_deref(), Some(&b"2"[..]));
        // A clear is a write like any other.
        store.apply(&message("t", b""), stamp(2, 1));
        assert_eq!(payload_of(&store, "t"), None);
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }

    #[test]
    fn writes_applied_in_one_order_leave_every_store_equal() {
        // Node 1 set a locally, node 2 set b locally; the commit order is
        // b, a. Both stores end at a, as one that only applies does.
        let (one, two, three) = (
            RetainedStore::default(),
            RetainedStore::default(),
            RetainedStore::default(),
        );
        one.set(&message("t", b"a"), stamp(1, 5), RetainLimits::NONE)
            .expect("set");
        two.set(&message("t", b"b"), stamp(2, 9), RetainLimits::NONE)
            .expect("set");
        for store in [&one, &two, &three] {
            store.apply(&message("t", b"b"), stamp(2, 9));
            store.apply(&message("t", b"a"), stamp(1, 5));
            assert_eq!(payload_of(store, "t").as_deref(), Some(&b"a"[..]));
        }
    }

    #[test]
    fn a_load_replaces_everything_and_counts_it() {
        let store = RetainedStore::default();
        let gauge = prometheus::IntGauge::new("retained", "retained").expect("gauge");
        store.count_in(gauge.clone());
        store
            .set(&message("old", b"1"), Stamp::LOCAL, RetainLimits::NONE)
            .expect("set");
        assert_eq!(gauge.get(), 1);
        store.load([
            (message("a", b"1"), stamp(1, 1)),
            (message("b", b"22"), stamp(2, 1)),
        ]);
        assert!(!store.contains("old"));
        assert!(store.contains("a") && store.contains("b"));
        assert_eq!(gauge.get(), 2);
        assert_eq!(
            store.bytes(),
            message("a", b"1").size() + message("b", b"22").size()
        );
    }
}
