//! Topic tries: [`SubscriptionTree`] finds the filters that match a published topic, and
//! [`RetainTree`] finds the retained topics that match a new subscription's filter.
//!
//! Both are keyed by topic level (the text between `/` separators), so a lookup only visits
//! the branches its topic or filter can reach, never every entry. Matching follows MQTT
//! section 4.7:
//!
//! - `+` matches exactly one level, `#` (only valid as the last level) matches its parent
//!   level and everything below it: `a/#` matches `a`, `a/b` and `a/b/c`.
//! - A filter whose first level is `+` or `#` does not match a topic whose first level starts
//!   with `$` (MQTT-4.7.2-1), so `#` does not match `$SYS/uptime` but `$SYS/#` does.
//! - Empty levels are real levels: `a//b` has three levels and `+/+` matches `/x`.
//!
//! Callers validate topics and filters before inserting them; lookups with an invalid topic
//! name or filter match nothing.
//!
//! Nodes live in an arena (a `Vec` plus a free list) rather than as nested boxes, so walking,
//! pruning and dropping a 30 000-level branch needs no recursion and cannot overflow the stack.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

mod entries;
use entries::Entries;

/// Subscriptions indexed by topic-filter level, for matching published topics.
///
/// Each filter holds any number of entries, one per key (typically a client id).
pub struct SubscriptionTree<K, V> {
    trie: Trie<Subscribers<K, V>>,
    len: usize,
}

impl<K: Eq + Hash + Clone, V> SubscriptionTree<K, V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self {
            trie: Trie::new(),
            len: 0,
        }
    }

    /// Inserts or replaces the entry for `key` under `filter`; returns the previous value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let idx = self.trie.find_or_insert(filter);
        let subscribers = &mut self.trie.nodes[idx].payload;
        if subscribers.entries.is_empty() {
            subscribers.filter = filter.into();
        }
        let previous = subscribers.entries.insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes `key`'s entry under `filter`, pruning empty nodes.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let idx = self.trie.find(filter)?;
        let subscribers = &mut self.trie.nodes[idx].payload;
        let removed = subscribers.entries.remove(key)?;
        self.len -= 1;
        if subscribers.entries.is_empty() {
            self.trie.prune(idx);
        }
        Some(removed)
    }

    /// The entry for `key` under `filter`, if any.
    #[cfg(test)]
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let idx = self.trie.find(filter)?;
        self.trie.nodes[idx].payload.entries.get(key)
    }

    /// Calls `f(filter, key, value)` for every entry whose filter matches `topic`.
    ///
    /// `+` matches one level, `#` (last level) matches the parent level and everything below
    /// (`a/#` matches `a`, `a/b`, `a/b/c`). A filter whose first level is `+` or `#` does not
    /// match a topic starting with `$` (MQTT-4.7.2-1). Empty levels are real levels (`a//b`).
    /// A `topic` that is not a valid topic name (empty, or containing `+`, `#` or NUL) matches
    /// nothing. The order of the calls is unspecified.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&str, &K, &V)) {
        if !is_valid_topic_name(topic) {
            return;
        }
        let mut emit = |idx: usize| {
            let subscribers = &self.trie.nodes[idx].payload;
            subscribers
                .entries
                .for_each(|key, value| f(&subscribers.filter, key, value));
        };
        let dollar = topic.starts_with('$');
        // Each item is a node and the part of the topic still to be matched below it.
        let mut stack = vec![(ROOT, Some(topic))];
        while let Some((idx, rest)) = stack.pop() {
            let node = &self.trie.nodes[idx];
            let wildcards = !(dollar && idx == ROOT);
            if wildcards && let Some(&hash) = node.children.get("#") {
                emit(hash);
            }
            let Some(rest) = rest else {
                emit(idx);
                continue;
            };
            let (level, tail) = split_level(rest);
            if wildcards && let Some(&plus) = node.children.get("+") {
                stack.push((plus, tail));
            }
            if let Some(&child) = node.children.get(level) {
                stack.push((child, tail));
            }
        }
    }

    /// The number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree holds no entries.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<K: Eq + Hash + Clone, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for SubscriptionTree<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTree")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Retained messages indexed by topic level, for matching subscription filters.
pub struct RetainTree<V> {
    trie: Trie<Option<Retained<V>>>,
    len: usize,
}

impl<V> RetainTree<V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self {
            trie: Trie::new(),
            len: 0,
        }
    }

    /// Stores `value` for `topic`; returns the value it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let idx = self.trie.find_or_insert(topic);
        match &mut self.trie.nodes[idx].payload {
            Some(retained) => Some(std::mem::replace(&mut retained.value, value)),
            slot @ None => {
                *slot = Some(Retained {
                    topic: topic.into(),
                    value,
                });
                self.len += 1;
                None
            }
        }
    }

    /// Removes the value for `topic`, pruning empty nodes.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let idx = self.trie.find(topic)?;
        let retained = self.trie.nodes[idx].payload.take()?;
        self.len -= 1;
        self.trie.prune(idx);
        Some(retained.value)
    }

    /// The value stored for `topic`, if any.
    pub fn get(&self, topic: &str) -> Option<&V> {
        let idx = self.trie.find(topic)?;
        self.trie.nodes[idx]
            .payload
            .as_ref()
            .map(|retained| &retained.value)
    }

    /// Calls `f(topic, value)` for every retained topic matched by `filter`, walking only the
    /// branches the filter can match (`+` fans out one level, `#` takes the whole subtree
    /// including the parent). A filter whose first level is `+` or `#` skips topics starting
    /// with `$`. An invalid filter matches nothing. The order of the calls is unspecified.
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        if !is_valid_filter(filter) {
            return;
        }
        let mut emit = |idx: usize| {
            if let Some(retained) = &self.trie.nodes[idx].payload {
                f(&retained.topic, &retained.value);
            }
        };
        // Each item is a node and the part of the filter still to be matched below it.
        let mut stack = vec![(ROOT, Some(filter))];
        while let Some((idx, rest)) = stack.pop() {
            let Some(rest) = rest else {
                emit(idx);
                continue;
            };
            let node = &self.trie.nodes[idx];
            match split_level(rest) {
                ("#", _) => self.trie.for_each_in_subtree(idx, &mut emit),
                ("+", tail) => {
                    for (level, &child) in &node.children {
                        if idx != ROOT || !level.starts_with('$') {
                            stack.push((child, tail));
                        }
                    }
                }
                (level, tail) => {
                    if let Some(&child) = node.children.get(level) {
                        stack.push((child, tail));
                    }
                }
            }
        }
    }

    /// The number of retained topics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree holds no retained topics.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<V> Default for RetainTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> fmt::Debug for RetainTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainTree")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Whether `topic` is a valid topic name: non-empty, no wildcard characters, no NUL.
pub(crate) fn is_valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// Whether `filter` is a valid topic filter: non-empty, no NUL, `+` only as a whole level,
/// `#` only as the whole last level.
pub(crate) fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" => return levels.peek().is_none(),
            "+" => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// Whether the topic filter `filter` matches the topic name `topic`, one pair at a time.
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    if topic.starts_with('$') && matches!(filter_levels.clone().next(), Some("+" | "#")) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return filter_levels.next().is_none(),
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Splits off the first level: `"a/b/c"` gives `("a", Some("b/c"))`, `"a"` gives `("a", None)`.
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, tail)) => (level, Some(tail)),
        None => (rest, None),
    }
}

/// The entries subscribed under one filter.
struct Subscribers<K, V> {
    /// The full filter, kept so matches can report it without rebuilding it from the path.
    filter: Box<str>,
    entries: Entries<K, V>,
}

impl<K, V> Default for Subscribers<K, V> {
    fn default() -> Self {
        Self {
            filter: Box::default(),
            entries: Entries::Empty,
        }
    }
}

/// A retained value with its full topic.
struct Retained<V> {
    topic: Box<str>,
    value: V,
}

/// What a trie node holds besides its children.
trait Payload: Default {
    fn is_empty(&self) -> bool;
}

impl<K, V> Payload for Subscribers<K, V> {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<V> Payload for Option<Retained<V>> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }
}

const ROOT: usize = 0;

struct Node<P> {
    /// Index of the parent node (the root is its own parent).
    parent: usize,
    /// This node's key in its parent's `children`.
    level: Box<str>,
    children: HashMap<Box<str>, usize>,
    payload: P,
}

impl<P: Default> Node<P> {
    fn new(parent: usize, level: &str) -> Self {
        Self {
            parent,
            level: level.into(),
            children: HashMap::new(),
            payload: P::default(),
        }
    }
}

/// An arena of nodes; index [`ROOT`] is the root, whose children are the first levels.
/// Freed slots are reset to an empty node and reused.
struct Trie<P> {
    nodes: Vec<Node<P>>,
    free: Vec<usize>,
}

impl<P: Payload> Trie<P> {
    fn new() -> Self {
        Self {
            nodes: vec![Node::new(ROOT, "")],
            free: Vec::new(),
        }
    }

    fn find(&self, path: &str) -> Option<usize> {
        path.split('/').try_fold(ROOT, |idx, level| {
            self.nodes[idx].children.get(level).copied()
        })
    }

    fn find_or_insert(&mut self, path: &str) -> usize {
        let mut idx = ROOT;
        for level in path.split('/') {
            idx = match self.nodes[idx].children.get(level) {
                Some(&child) => child,
                None => {
                    let child = self.alloc(Node::new(idx, level));
                    self.nodes[idx].children.insert(level.into(), child);
                    child
                }
            };
        }
        idx
    }

    fn alloc(&mut self, node: Node<P>) -> usize {
        match self.free.pop() {
            Some(idx) => {
                self.nodes[idx] = node;
                idx
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        }
    }

    /// Frees `idx` and then its ancestors for as long as they hold nothing.
    fn prune(&mut self, mut idx: usize) {
        while idx != ROOT
            && self.nodes[idx].children.is_empty()
            && self.nodes[idx].payload.is_empty()
        {
            let parent = self.nodes[idx].parent;
            let vacant = Node::new(ROOT, "");
            let node = std::mem::replace(&mut self.nodes[idx], vacant);
            self.nodes[parent].children.remove(&node.level);
            self.free.push(idx);
            idx = parent;
        }
    }

    /// Calls `f` on `start` and every node below it, except that below the root it skips
    /// first levels starting with `$` (a leading `#` does not match them).
    fn for_each_in_subtree(&self, start: usize, mut f: impl FnMut(usize)) {
        let mut stack = vec![start];
        while let Some(idx) = stack.pop() {
            f(idx);
            for (level, &child) in &self.nodes[idx].children {
                if idx != ROOT || !level.starts_with('$') {
                    stack.push(child);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
