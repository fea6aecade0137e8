//! The entries under one filter, one per key.
//!
//! Most filters have one subscriber (a device's own command topic): that
//! one is kept inline in the node. A hash map with one entry allocates four
//! buckets (~320 bytes here) for it. Filters that gain a second subscriber
//! move to a hash map and stay there until they are empty.

use std::collections::HashMap;
use std::hash::Hash;

/// The entries under one filter, one per key.
pub(super) enum Entries<K, V> {
    One(K, V),
    Many(HashMap<K, V>),
}

impl<K: Eq + Hash, V> Entries<K, V> {
    /// Inserts or replaces `key`'s entry; returns the previous value.
    /// `slot` is `None` when the filter has no entries yet.
    pub(super) fn insert(slot: &mut Option<Self>, key: K, value: V) -> Option<V> {
        let (entries, previous) = match slot.take() {
            None => (Entries::One(key, value), None),
            Some(Entries::One(held, previous)) if held == key => {
                (Entries::One(held, value), Some(previous))
            }
            Some(Entries::One(held, held_value)) => {
                let mut map = HashMap::with_capacity(2);
                map.insert(held, held_value);
                map.insert(key, value);
                (Entries::Many(map), None)
            }
            Some(Entries::Many(mut map)) => {
                let previous = map.insert(key, value);
                (Entries::Many(map), previous)
            }
        };
        *slot = Some(entries);
        previous
    }

    /// Removes `key`'s entry, leaving `None` once the last one is gone.
    pub(super) fn remove(slot: &mut Option<Self>, key: &K) -> Option<V> {
        match slot.take() {
            Some(Entries::One(held, value)) if held == *key => Some(value),
            Some(Entries::Many(mut map)) => {
                let removed = map.remove(key);
                if !map.is_empty() {
                    *slot = Some(Entries::Many(map));
                }
                removed
            }
            held => {
                *slot = held;
                None
            }
        }
    }

    /// `key`'s entry.
    #[cfg(test)]
    pub(super) fn get(&self, key: &K) -> Option<&V> {
        match self {
            Entries::One(held, value) => (held == key).then_some(value),
            Entries::Many(map) => map.get(key),
        }
    }

    /// Calls `f` with every entry.
    pub(super) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        match self {
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

    fn collect(slot: &Option<Entries<u8, u32>>) -> HashMap<u8, u32> {
        let mut seen = HashMap::new();
        if let Some(entries) = slot {
            entries.for_each(|k, v| {
                assert!(seen.insert(*k, *v).is_none(), "key {k} given twice");
            });
        }
        seen
    }

    proptest! {
        /// Any sequence of inserts and removals holds what a plain hash
        /// map given the same steps holds, and is `None` exactly when empty.
        #[test]
        fn behaves_as_a_map(steps in proptest::collection::vec((any::<bool>(), 0u8..4, any::<u32>()), 0..64)) {
            let mut slot = None;
            let mut model = HashMap::new();
            for (insert, key, value) in steps {
                if insert {
                    prop_assert_eq!(Entries::insert(&mut slot, key, value), model.insert(key, value));
                } else {
                    prop_assert_eq!(Entries::remove(&mut slot, &key), model.remove(&key));
                }
                prop_assert_eq!(slot.is_none(), model.is_empty());
                prop_assert_eq!(slot.as_ref().and_then(|e| e.get(&key)), model.get(&key));
                prop_assert_eq!(collect(&slot), model.clone());
            }
        }
    }
}
