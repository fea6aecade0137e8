//! How one topic filter relates to another, for checking subscriptions against ACL rules.
//!
//! Both relations follow the matching rules of [`crate::topic_tree`], including the `$` rule:
//! a filter whose first level is `+` or `#` matches no topic starting with `$`. Both filters
//! must be valid.

/// Whether every topic that `requested` can match is also matched by `rule`.
///
/// `a/#` covers `a/+/b` and `a`, `a/+` covers `a/b` but not `a/#`, and `#` does not cover
/// `$SYS/#`.
pub(super) fn covers(rule: &str, requested: &str) -> bool {
    let mut rule_levels = rule.split('/');
    let mut requested_levels = requested.split('/');
    let mut depth = 0;
    let mut first_requested = None;
    loop {
        let (r, s) = (rule_levels.next(), requested_levels.next());
        if depth == 0 {
            if dollar_excluded(r, s) {
                return false;
            }
            first_requested = s;
        }
        match (r, s) {
            // `#` also matches the parent level, so it covers `requested` ending here.
            (Some("#"), _) => return true,
            // Where the parent is no topic, `#` matches exactly what `+/#` does.
            (Some("+"), Some("#")) if no_parent_topic(depth, first_requested) => {
                return rule_levels.eq(["#"]);
            }
            // `requested` matches topics of any length from here on, `rule` cannot.
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(r), Some(s)) if r == s => {}
            (None, None) => return true,
            _ => return false,
        }
        depth += 1;
    }
}

/// Whether at least one topic is matched by both `a` and `b`.
pub(super) fn overlaps(a: &str, b: &str) -> bool {
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    let mut depth = 0;
    let mut first_levels = (None, None);
    loop {
        let (x, y) = (a_levels.next(), b_levels.next());
        if depth == 0 {
            if dollar_excluded(x, y) || dollar_excluded(y, x) {
                return false;
            }
            first_levels = (x, y);
        }
        match (x, y) {
            // Only the parent of `#` is common, and it may be no topic.
            (Some("#"), None) | (None, Some("#")) => {
                return !(no_parent_topic(depth, first_levels.0)
                    || no_parent_topic(depth, first_levels.1));
            }
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
        depth += 1;
    }
}

/// Whether the parent of a `#` at `depth` is not a topic: it would have no levels, or be the
/// empty topic (one empty level), which MQTT does not allow.
fn no_parent_topic(depth: usize, first_level: Option<&str>) -> bool {
    depth == 0 || (depth == 1 && first_level == Some(""))
}

/// Whether first levels `wild` and `literal` can never meet because `wild` is a wildcard,
/// which skips `$` topics, and `literal` only matches `$` topics.
fn dollar_excluded(wild: Option<&str>, literal: Option<&str>) -> bool {
    matches!(wild, Some("+" | "#")) && literal.is_some_and(|level| level.starts_with('$'))
}

/// The filter inside a shared subscription `$share/{group}/{filter}`, `Some(requested)` for
/// an ordinary filter, and `None` for a malformed `$share` (missing or wildcard group, or no
/// filter).
pub(super) fn unshare(requested: &str) -> Option<&str> {
    let Some(shared) = requested.strip_prefix("$share/") else {
        return (requested != "$share").then_some(requested);
    };
    let (group, filter) = shared.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
        return None;
    }
    Some(filter)
}

/// Replaces `%c` with `client_id` and `%u` with `username` in one pass, so a substituted value
/// is never substituted again.
///
/// Gives `None`, meaning the rule cannot match, when a placeholder is used but its value is
/// missing (`%u` without a username), empty, or contains `+`, `#` or `/`: such a value would
/// widen the rule to other clients' topics.
pub(super) fn substitute(filter: &str, username: Option<&str>, client_id: &str) -> Option<String> {
    let safe = |value: &str| !value.is_empty() && !value.contains(['+', '#', '/']);
    let mut out = String::with_capacity(filter.len());
    let mut rest = filter;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let value = match after.chars().next() {
            Some('c') => Some(client_id),
            Some('u') => Some(username?),
            _ => None,
        };
        match value {
            Some(value) => {
                if !safe(value) {
                    return None;
                }
                out.push_str(value);
                rest = &after[1..];
            }
            None => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic_tree::{filter_matches, is_valid_filter};

    #[test]
    fn coverage_examples() {
        assert!(covers("a/#", "a/+/b"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/+", "a"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/+/#", "a/#"));
        assert!(covers("+/#", "#"));
        assert!(!covers("+/+/#", "#"));
        // The empty topic does not exist, so `/#` only matches topics of two or more levels.
        assert!(covers("/+/#", "/#"));
        assert!(covers("+/+/#", "/#"));
        assert!(!covers("+/+/#", "+/#"));
        assert!(covers("#", "#"));
        assert!(covers("#", "+/x"));
        assert!(!covers("#", "$SYS/#"));
        assert!(!covers("+/x", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/x/+"));
        assert!(!covers("$SYS/#", "#"));
        assert!(covers("a//b", "a//b"));
        assert!(!covers("a//b", "a/b"));
    }

    #[test]
    fn overlap_examples() {
        assert!(overlaps("a/+", "a/#"));
        assert!(overlaps("a/#", "a"));
        assert!(overlaps("+/b", "a/+"));
        assert!(overlaps("#", "x/y"));
        assert!(!overlaps("a/+", "a"));
        assert!(!overlaps("a/b", "a/c"));
        assert!(!overlaps("#", "$SYS/x"));
        assert!(!overlaps("$SYS/x", "+/x"));
        assert!(overlaps("$SYS/#", "$SYS/x"));
        assert!(!overlaps("/#", "+"));
        assert!(overlaps("+/#", "+"));
        assert!(overlaps("a/#", "a"));
    }

    #[test]
    fn shared_subscriptions() {
        assert_eq!(unshare("$share/g/a/b"), Some("a/b"));
        assert_eq!(unshare("$share/g/#"), Some("#"));
        assert_eq!(unshare("a/b"), Some("a/b"));
        assert_eq!(unshare("$shared/x"), Some("$shared/x"));
        for malformed in [
            "$share",
            "$share/",
            "$share/g",
            "$share/g/",
            "$share//a",
            "$share/+/a",
        ] {
            assert_eq!(unshare(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn substitution() {
        let alice = Some("alice");
        assert_eq!(substitute("d/%c/#", alice, "c1").as_deref(), Some("d/c1/#"));
        assert_eq!(
            substitute("h/%u/%c", alice, "c1").as_deref(),
            Some("h/alice/c1")
        );
        assert_eq!(substitute("x%cy", alice, "c1").as_deref(), Some("xc1y"));
        assert_eq!(
            substitute("50%/%x/%", None, "c1").as_deref(),
            Some("50%/%x/%")
        );
        assert_eq!(substitute("h/%u", None, "c1"), None);
        assert_eq!(substitute("h/%u", Some(""), "c1"), None);
        assert_eq!(substitute("h/%c", alice, ""), None);
        for bad in ["+", "#", "a/b", "a+", "x#"] {
            assert_eq!(substitute("d/%c", alice, bad), None, "{bad:?}");
            assert_eq!(substitute("d/%u", Some(bad), "c1"), None, "{bad:?}");
        }
        // A client id that looks like a placeholder is taken literally.
        assert_eq!(
            substitute("d/%c", Some("alice"), "%u").as_deref(),
            Some("d/%u")
        );
        // `%u` is only required when the filter uses it.
        assert_eq!(substitute("d/%c", None, "c1").as_deref(), Some("d/c1"));
    }

    /// Every valid filter of up to three levels from `a`, `b`, `$x`, the empty level and `+`,
    /// each with and without a trailing `#`.
    fn all_filters() -> Vec<String> {
        let alphabet = ["a", "b", "$x", "", "+"];
        let mut prefixes = vec![String::new()];
        let mut filters = vec!["#".to_owned()];
        for depth in 1..=3 {
            prefixes = prefixes
                .iter()
                .flat_map(|p| {
                    alphabet.iter().map(move |l| {
                        if depth == 1 {
                            l.to_string()
                        } else {
                            format!("{p}/{l}")
                        }
                    })
                })
                .collect();
            for prefix in &prefixes {
                filters.push(format!("{prefix}/#"));
                if !prefix.is_empty() {
                    filters.push(prefix.clone());
                }
            }
        }
        filters
    }

    /// Every topic over the filters' alphabet plus a fresh level `z`, up to one level longer
    /// than the longest filter: enough to witness any difference between two such filters.
    fn all_topics() -> Vec<String> {
        let alphabet = ["a", "b", "$x", "", "z"];
        let mut topics: Vec<String> = alphabet.iter().map(|l| l.to_string()).collect();
        let mut frontier = topics.clone();
        for _ in 1..5 {
            frontier = frontier
                .iter()
                .flat_map(|t| alphabet.iter().map(move |l| format!("{t}/{l}")))
                .collect();
            topics.extend(frontier.iter().cloned());
        }
        topics.retain(|t| !t.is_empty());
        topics
    }

    /// Compares both relations with brute force over every pair of small filters.
    #[test]
    fn relations_agree_with_enumeration() {
        let topics = all_topics();
        let filters = all_filters();
        // One bit per topic, 64 topics to a word.
        let matched: Vec<Vec<u64>> = filters
            .iter()
            .map(|f| {
                assert!(is_valid_filter(f), "{f:?}");
                let mut bits = vec![0u64; topics.len().div_ceil(64)];
                for (i, topic) in topics.iter().enumerate() {
                    if filter_matches(f, topic) {
                        bits[i / 64] |= 1 << (i % 64);
                    }
                }
                bits
            })
            .collect();
        for (rule, rule_matches) in filters.iter().zip(&matched) {
            for (requested, requested_matches) in filters.iter().zip(&matched) {
                let pairs = || rule_matches.iter().zip(requested_matches);
                let covered = pairs().all(|(r, s)| s & !r == 0);
                let overlapping = pairs().any(|(r, s)| r & s != 0);
                assert_eq!(
                    covers(rule, requested),
                    covered,
                    "{rule:?} covers {requested:?}"
                );
                assert_eq!(
                    overlaps(rule, requested),
                    overlapping,
                    "{rule:?} overlaps {requested:?}"
                );
            }
        }
    }
}
