//! Column family names and key encodings (see the schema in the crate docs).

use std::sync::Arc;

use crate::types::NodeId;

/// `g{n}_meta` key of the vote.
pub(crate) const VOTE: &[u8] = b"vote";
/// `g{n}_meta` key of the last committed log id.
pub(crate) const COMMITTED: &[u8] = b"committed";
/// `g{n}_meta` key of the last purged log id.
pub(crate) const LAST_PURGED: &[u8] = b"last_purged";

/// `g{n}_sm` key of the last applied log id. Reserved keys start with `!`,
/// which sorts before every data key and is skipped by snapshots.
pub(crate) const APPLIED: &[u8] = b"!applied";
/// `g{n}_sm` key of the last applied membership.
pub(crate) const MEMBERSHIP: &[u8] = b"!membership";
/// First byte of reserved state machine keys.
pub(crate) const RESERVED_PREFIX: u8 = b'!';

/// Separates client key and filter in subscription keys: MQTT strings may
/// contain `/` but never U+0000, so the split is unambiguous.
const SUB_SEPARATOR: char = '\0';

/// Sorts after every key of the state machine (all keys are UTF-8, and UTF-8
/// never contains 0xFF).
pub(crate) const SM_END: &[u8] = &[0xFF];

/// The three column family names of one group.
#[derive(Debug, Clone)]
pub(crate) struct GroupCfs {
    pub(crate) group: u32,
    pub(crate) log: Arc<str>,
    pub(crate) meta: Arc<str>,
    pub(crate) sm: Arc<str>,
}

impl GroupCfs {
    pub(crate) fn new(group: u32) -> Self {
        GroupCfs {
            group,
            log: format!("g{group}_log").into(),
            meta: format!("g{group}_meta").into(),
            sm: format!("g{group}_sm").into(),
        }
    }

    pub(crate) fn names(&self) -> [&str; 3] {
        [&self.log, &self.meta, &self.sm]
    }
}

/// `g{n}_log` key: the big-endian index, so keys sort by index.
pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index back from a `g{n}_log` key.
pub(crate) fn log_index(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// `s/{client_key}`
pub(crate) fn session_key(client_key: &str) -> Vec<u8> {
    format!("s/{client_key}").into_bytes()
}

/// `s/` followed by a client key prefix.
pub(crate) fn session_prefix(prefix: &str) -> Vec<u8> {
    session_key(prefix)
}

/// `u/{client_key}\0{filter}`
pub(crate) fn subscription_key(client_key: &str, filter: &str) -> Vec<u8> {
    format!("u/{client_key}{SUB_SEPARATOR}{filter}").into_bytes()
}

/// `u/{client_key}\0`: the prefix of all subscriptions of a session.
pub(crate) fn subscription_prefix(client_key: &str) -> Vec<u8> {
    format!("u/{client_key}{SUB_SEPARATOR}").into_bytes()
}

/// `n/{node_id:020}`: zero-padded so nodes sort by id.
pub(crate) fn node_key(node_id: NodeId) -> Vec<u8> {
    format!("n/{node_id:020}").into_bytes()
}

/// `n/`
pub(crate) const NODE_PREFIX: &[u8] = b"n/";

/// `r/{filter}\0{node_id:020}`: a filter's routes sort together, by node.
pub(crate) fn route_key(filter: &str, node_id: NodeId) -> Vec<u8> {
    format!("r/{filter}{SUB_SEPARATOR}{node_id:020}").into_bytes()
}

/// `r/`
pub(crate) const ROUTE_PREFIX: &[u8] = b"r/";

/// `t/{topic}`: one retained message per topic.
pub(crate) fn retained_key(topic: &str) -> Vec<u8> {
    format!("t/{topic}").into_bytes()
}

/// `t/`
pub(crate) const RETAINED_PREFIX: &[u8] = b"t/";

/// `c/{key}`
pub(crate) fn config_key(key: &str) -> Vec<u8> {
    format!("c/{key}").into_bytes()
}

/// `c/`
pub(crate) const CONFIG_PREFIX: &[u8] = b"c/";

/// The smallest key greater than every key starting with `prefix`, or `None`
/// if there is none (an all-0xFF prefix).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index() {
        assert!(log_key(2) < log_key(256));
        assert_eq!(log_index(&log_key(u64::MAX - 1)), Some(u64::MAX - 1));
        assert_eq!(log_index(b"short"), None);
    }

    #[test]
    fn subscription_keys_do_not_collide_on_slashes() {
        assert_ne!(
            subscription_key("t/a/b", "c"),
            subscription_key("t/a", "b/c")
        );
        let prefix = subscription_prefix("t/a");
        assert!(subscription_key("t/a", "x/y").starts_with(&prefix));
        assert!(!subscription_key("t/a/b", "c").starts_with(&prefix));
    }

    #[test]
    fn retained_keys_are_one_per_topic_under_their_prefix() {
        assert!(retained_key("a/b").starts_with(RETAINED_PREFIX));
        assert_ne!(retained_key("a/b"), retained_key("a/b/"));
        assert!(!route_key("a", 1).starts_with(RETAINED_PREFIX));
    }

    #[test]
    fn route_keys_group_a_filter_by_node() {
        assert!(route_key("a", 2) < route_key("a", 10));
        assert_ne!(route_key("a/b", 1), route_key("a", 1));
        assert!(route_key("a", 1).starts_with(ROUTE_PREFIX));
    }

    #[test]
    fn prefix_end_is_exclusive_bound() {
        assert_eq!(prefix_end(b"u/a\0"), Some(b"u/a\x01".to_vec()));
        assert_eq!(prefix_end(&[0x61, 0xFF]), Some(vec![0x62]));
        assert_eq!(prefix_end(&[0xFF]), None);
    }
}
