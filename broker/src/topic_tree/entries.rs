//! The entries under one filter, one per key.
//!
//! Most filters have one subscriber (a device's own command topic): that
//! one is kept inline in the node. A hash map with one entry allocates four
//! buckets (~320 bytes here) for it. Filters that gain a second subscriber
//! move to a hash map and stay there until they are empty.

use std::collections::HashMap;
use std::hash::Hash;

/// The entries under one filter, one per key.
#[derive(Default)]
pub(super) enum Entries<K, V> {
    /// No one subscribes (the node is pruned unless it has children).
    #[default]
    Empty,
    One(K, V),
    Many(HashMap<K, V>),
}

impl<K, V> Entries<K, V> {
    /// Whether there are none.
    pub(super) fn is_empty(&self) -> bool {
        matches!(self, Entries::Empty)
    }
}

impl<K: Eq + Hash, V> Entries<K, V> {
    /// Inserts or replaces `key`'s entry; returns the previous value.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let (entries, previous) = match std::mem::take(self) {
            Entries::Empty => (Entries::One(key, value), None),
            Entries::One(held, previous) if held == key => {
                (Entries::One(held, value), Some(previous))
            }
            Entries::One(held, held_value) => {
                let mut map = HashMap::with_capacity(2);
                map.insert(held, held_value);
                map.insert(key, value);
                (Entries::Many(map), None)
            }
            Entries::Many(mut map) => {
                let previous = map.insert(key, value);
                (Entries::Many(map), previous)
            }
        };
        *self = entries;
        previous
    }

    /// Removes `key`'s entry; empty once the last one is gone.
    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        match std::mem::take(self) {
            Entries::One(held, value) if held == *key => Some(value),
            Entries::Many(mut map) => {
                let removed = map.remove(key);
                if !map.is_empty() {
                    *self = Entries::Many(map);
                }
                removed
            }
            held => {
                *self = held;
                None
            }
        }
    }

    /// `key`'s entry.
    #[cfg(test)]
    pub(super) fn get(&self, key: &K) -> Option<&V> {
        match self {
            Entries::Empty => None,
            Entries::One(held, value) => (held == key).then_some(value),
            Entries::Many(map) => map.get(key),
        }
    }

    /// Calls `f` with every entry.
    pub(super) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        match self {
            Entries::Empty => {}
            Entries::One(key, value) => f(key, value),
            Entries::Many(map) => map.iter().for_each(|(key, value)| f(key, value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::Entries;

    fn collect(entries: &Entries<u8, u32>) -> HashMap<u8, u32> {
        let mut seen = HashMap::new();
        entries.for_each(|k, v| {
            assert!(seen.insert(*k, *v).is_none(), "key {k} given twice");
        });
        seen
    }

    proptest! {
        /// Any sequence of inserts and removals holds what a plain hash
        /// map given the same steps holds, and is `Empty` exactly when empty.
        #[test]
        fn behaves_as_a_map(steps in proptest::collection::vec((any::<bool>(), 0u8..4, any::<u32>()), 0..64)) {
            let mut entries = Entries::Empty;
            let mut model = HashMap::new();
            for (insert, key, value) in steps {
                if insert {
                    prop_assert_eq!(entries.insert(key, value), model.insert(key, value));
                } else {
                    prop_assert_eq!(entries.remove(&key), model.remove(&key));
                }
                prop_assert_eq!(entries.is_empty(), model.is_empty());
                prop_assert_eq!(entries.get(&key), model.get(&key));
                prop_assert_eq!(collect(&entries), model.clone());
            }
        }
    }
}
