//! Which Raft group owns a key.
//!
//! Group 0 is the metadata group (nodes, cluster configuration). Sessions
//! and subscriptions live in the data groups `1..=data_raft_group_num`,
//! picked by a stable hash of the client key, so a session and its
//! subscriptions are always in the same group. With no data groups,
//! everything is in group 0.

/// Maps keys to groups for a fixed number of groups.
#[derive(Debug, Clone, Copy)]
pub struct GroupRouter {
    groups: u32,
}

impl GroupRouter {
    /// The group holding nodes and cluster configuration.
    pub const METADATA_GROUP: u32 = 0;

    /// A router over `groups` groups in total (metadata group included).
    pub fn new(groups: u32) -> Self {
        Self {
            groups: groups.max(1),
        }
    }

    /// The group of a client key.
    pub fn data_group(&self, client_key: &str) -> u32 {
        if self.groups == 1 {
            return Self::METADATA_GROUP;
        }
        let data_groups = u64::from(self.groups - 1);
        1 + (fnv1a(client_key.as_bytes()) % data_groups) as u32
    }

    /// Every group that holds client keys.
    pub fn data_groups(&self) -> std::ops::Range<u32> {
        if self.groups == 1 {
            0..1
        } else {
            1..self.groups
        }
    }
}

/// FNV-1a, 64 bit: stable across processes, versions and platforms, unlike
/// `std`'s randomly seeded hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_stable_and_spreads() {
        let router = GroupRouter::new(5);
        let mut counts = [0usize; 5];
        for i in 0..10_000 {
            let key = format!("tenant/client-{i}");
            let group = router.data_group(&key);
            assert_eq!(group, router.data_group(&key));
            counts[group as usize] += 1;
        }
        assert_eq!(counts[0], 0, "no client key in the metadata group");
        assert!(counts[1..].iter().all(|&c| c > 2_000), "{counts:?}");
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a test vector");
        assert_eq!(GroupRouter::new(1).data_group("x"), 0);
        assert_eq!(GroupRouter::new(1).data_groups(), 0..1);
    }
}
