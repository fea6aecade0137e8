//! [`Shares`]: which of a node's subscriptions one message goes to when
//! the node is one of a cluster. A shared subscription group gets each
//! message on one node of the cluster only: the publishing node picks the
//! node, tells it which groups it was picked for, and leaves them out of
//! its own routing.

/// One shared subscription group: its name and its (inner) filter, as in
/// `$share/{group}/{filter}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShareId {
    group: Box<str>,
    filter: Box<str>,
}

impl ShareId {
    /// The group `group` on `filter`.
    pub fn new(group: &str, filter: &str) -> Self {
        ShareId {
            group: group.into(),
            filter: filter.into(),
        }
    }

    /// Parses `$share/{group}/{filter}`; `None` for anything else.
    pub fn parse(shared_filter: &str) -> Option<Self> {
        let shared = tidemq_proto::mqtt::parse_shared_filter(shared_filter).ok()??;
        Some(ShareId::new(shared.group, shared.filter))
    }

    /// Whether this is the group `group` on `filter`.
    pub fn is(&self, group: &str, filter: &str) -> bool {
        &*self.group == group && &*self.filter == filter
    }

    /// `$share/{group}/{filter}`.
    pub fn to_filter(&self) -> String {
        format!("$share/{}/{}", self.group, self.filter)
    }
}

/// Which of this node's matching subscriptions a message goes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Shares {
    /// All of them: a node alone, or one of its own `$SYS` values.
    #[default]
    All,
    /// Published here: every plain subscription, and every shared group
    /// but these, which other nodes of the cluster were picked for.
    Except(Vec<ShareId>),
    /// Forwarded by the node it was published on: the plain subscriptions
    /// if `plain`, and the shared groups this node was picked for.
    Only { plain: bool, groups: Vec<ShareId> },
}

impl Shares {
    /// Whether the plain (not shared) subscriptions get the message.
    pub fn plain(&self) -> bool {
        match self {
            Shares::All | Shares::Except(_) => true,
            Shares::Only { plain, .. } => *plain,
        }
    }

    /// Whether this node's members of group `group` on `filter` get it.
    pub fn group(&self, group: &str, filter: &str) -> bool {
        match self {
            Shares::All => true,
            Shares::Except(others) => !others.iter().any(|id| id.is(group, filter)),
            Shares::Only { groups, .. } => groups.iter().any(|id| id.is(group, filter)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_id_round_trips_through_its_filter() {
        let id = ShareId::parse("$share/g/a/+/c").expect("a shared filter");
        assert!(id.is("g", "a/+/c"));
        assert_eq!(id.to_filter(), "$share/g/a/+/c");
        assert_eq!(ShareId::parse("a/b"), None);
        assert_eq!(ShareId::parse("$share/g"), None, "no filter");
    }

    #[test]
    fn each_kind_of_shares_takes_what_it_says() {
        let g = ShareId::new("g", "t/#");
        assert!(Shares::All.plain() && Shares::All.group("g", "t/#"));
        let except = Shares::Except(vec![g.clone()]);
        assert!(except.plain());
        assert!(!except.group("g", "t/#"));
        assert!(except.group("g", "t/+"), "another filter is another group");
        assert!(except.group("h", "t/#"));
        let only = Shares::Only {
            plain: false,
            groups: vec![g],
        };
        assert!(!only.plain());
        assert!(only.group("g", "t/#"));
        assert!(!only.group("h", "t/#"));
    }
}
