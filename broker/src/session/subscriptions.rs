//! A session's subscriptions, by filter.
//!
//! Most sessions hold a handful (a device's command topic, a backend's few
//! wildcards), and every idle session keeps its set for its whole life, so
//! the set is one sorted vector: one allocation sized to what it holds
//! (given back to that size when the connection goes idle), no hasher keys,
//! no tree nodes. A B-tree kept a whole 11-slot node (~500 bytes) for one
//! subscription. Lookups are binary searches; an insert or a removal moves
//! the entries after it, at most `session.max_subscriptions` (10,000 by
//! default: ~320 KB moved, a few tens of µs, only for a client that holds
//! that many).

use super::SubscriptionEntry;

/// Subscriptions by filter (shared ones keep their `$share/...` form),
/// sorted by filter, each filter once.
#[derive(Debug, Default)]
pub struct Subscriptions {
    entries: Vec<(Box<str>, SubscriptionEntry)>,
}

impl Subscriptions {
    /// No subscriptions.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    fn position(&self, filter: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|(held, _)| held.as_ref().cmp(filter))
    }

    /// Adds or replaces the subscription on `filter`; returns the one it
    /// replaces.
    pub fn insert(&mut self, filter: &str, entry: SubscriptionEntry) -> Option<SubscriptionEntry> {
        match self.position(filter) {
            Ok(at) => Some(std::mem::replace(&mut self.entries[at].1, entry)),
            Err(at) => {
                self.entries.insert(at, (filter.into(), entry));
                None
            }
        }
    }

    /// Removes the subscription on `filter`.
    pub fn remove(&mut self, filter: &str) -> Option<SubscriptionEntry> {
        let at = self.position(filter).ok()?;
        Some(self.entries.remove(at).1)
    }

    /// The subscription on `filter`.
    #[cfg(test)]
    pub fn get(&self, filter: &str) -> Option<&SubscriptionEntry> {
        let at = self.position(filter).ok()?;
        Some(&self.entries[at].1)
    }

    /// Whether there is a subscription on `filter`.
    pub fn contains_key(&self, filter: &str) -> bool {
        self.position(filter).is_ok()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every subscription, in filter order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SubscriptionEntry)> {
        self.entries
            .iter()
            .map(|(filter, entry)| (&**filter, entry))
    }

    /// A copy of every filter, in order.
    pub fn filters(&self) -> impl Iterator<Item = Box<str>> {
        self.entries.iter().map(|(filter, _)| filter.clone())
    }

    /// Removes them all.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Gives back the room beyond what the set holds (none at all when
    /// empty).
    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use tidemq_proto::mqtt::{QoS, SubscriptionOptions};

    use super::*;

    fn entry(id: u32) -> SubscriptionEntry {
        SubscriptionEntry {
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
            id: Some(id),
            acl_filtered: false,
        }
    }

    #[test]
    fn one_subscription_keeps_one_slot_once_shrunk() {
        let mut subscriptions = Subscriptions::new();
        assert_eq!(subscriptions.insert("cmd/device-1", entry(1)), None);
        subscriptions.shrink_to_fit();
        assert_eq!(subscriptions.entries.capacity(), 1);
        assert_eq!(subscriptions.remove("cmd/device-1"), Some(entry(1)));
        subscriptions.shrink_to_fit();
        assert_eq!(subscriptions.entries.capacity(), 0);
    }

    proptest! {
        /// Any sequence of inserts and removals leaves the same
        /// subscriptions, in the same order, as a `BTreeMap` given the
        /// same steps.
        #[test]
        fn behaves_as_an_ordered_map(
            steps in proptest::collection::vec((any::<bool>(), "[a-d/+#]{0,4}", 0u32..4), 0..64)
        ) {
            let mut subscriptions = Subscriptions::new();
            let mut model = BTreeMap::new();
            for (insert, filter, id) in steps {
                if insert {
                    prop_assert_eq!(
                        subscriptions.insert(&filter, entry(id)),
                        model.insert(filter.clone(), entry(id))
                    );
                } else {
                    prop_assert_eq!(subscriptions.remove(&filter), model.remove(&filter));
                }
                prop_assert_eq!(subscriptions.len(), model.len());
                prop_assert_eq!(subscriptions.contains_key(&filter), model.contains_key(&filter));
                prop_assert_eq!(subscriptions.get(&filter), model.get(&filter));
            }
            let held: Vec<_> = subscriptions.iter().map(|(f, e)| (f.to_string(), *e)).collect();
            let expected: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(held, expected);
        }
    }
}
