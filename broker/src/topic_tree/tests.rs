use super::*;
use proptest::prelude::*;

fn subscribers(tree: &SubscriptionTree<u32, ()>, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    tree.for_each_match(topic, |filter, key, ()| out.push(format!("{filter}@{key}")));
    out.sort();
    out
}

fn retained(tree: &RetainTree<u32>, filter: &str) -> Vec<String> {
    let mut out = Vec::new();
    tree.for_each_match(filter, |topic, _| out.push(topic.to_owned()));
    out.sort();
    out
}

/// Checks one (filter, topic) pair through the plain matcher and both trees.
fn all_agree(filter: &str, topic: &str) -> bool {
    let mut subs = SubscriptionTree::new();
    subs.insert(filter, 1, ());
    let by_subs = !subscribers(&subs, topic).is_empty();
    let mut retains = RetainTree::new();
    retains.insert(topic, 1);
    let by_retain = !retained(&retains, filter).is_empty();
    let plain = filter_matches(filter, topic);
    assert_eq!(
        by_subs, plain,
        "SubscriptionTree vs plain for {filter:?} / {topic:?}"
    );
    assert_eq!(
        by_retain, plain,
        "RetainTree vs plain for {filter:?} / {topic:?}"
    );
    plain
}

#[test]
fn spec_multi_level_wildcard() {
    let filter = "sport/tennis/player1/#";
    assert!(all_agree(filter, "sport/tennis/player1"));
    assert!(all_agree(filter, "sport/tennis/player1/ranking"));
    assert!(all_agree(filter, "sport/tennis/player1/score/wimbledon"));
    assert!(!all_agree(filter, "sport/tennis/player2"));
    assert!(all_agree("sport/#", "sport"));
    assert!(all_agree("#", "sport/tennis"));
    assert!(all_agree("#", "/"));
    assert!(all_agree("+/tennis/#", "sport/tennis/player1"));
}

#[test]
fn spec_single_level_wildcard() {
    assert!(all_agree("sport/tennis/+", "sport/tennis/player1"));
    assert!(all_agree("sport/tennis/+", "sport/tennis/player2"));
    assert!(!all_agree("sport/tennis/+", "sport/tennis/player1/ranking"));
    assert!(!all_agree("sport/+", "sport"));
    assert!(all_agree("sport/+", "sport/"));
    assert!(all_agree("+/+", "/finance"));
    assert!(all_agree("/+", "/finance"));
    assert!(!all_agree("+", "/finance"));
    assert!(all_agree("sport/+/player1", "sport/tennis/player1"));
}

#[test]
fn spec_dollar_topics() {
    assert!(!all_agree("#", "$SYS/monitor/Clients"));
    assert!(!all_agree("+/monitor/Clients", "$SYS/monitor/Clients"));
    assert!(all_agree("$SYS/#", "$SYS/monitor/Clients"));
    assert!(all_agree("$SYS/monitor/+", "$SYS/monitor/Clients"));
    assert!(all_agree("+/monitor/Clients", "SYS/monitor/Clients"));
    // The rule only concerns the first level.
    assert!(all_agree("a/+", "a/$b"));
    assert!(all_agree("a/#", "a/$b/c"));
}

#[test]
fn empty_levels_are_levels() {
    assert!(all_agree("a//b", "a//b"));
    assert!(!all_agree("a/b", "a//b"));
    assert!(all_agree("a/+/b", "a//b"));
    assert!(all_agree("+/+", "/"));
    assert!(!all_agree("+", "/"));
    assert!(all_agree("a/", "a/"));
    assert!(!all_agree("a", "a/"));
}

#[test]
fn subscription_matches_report_full_filter_and_key() {
    let mut tree = SubscriptionTree::new();
    tree.insert("a/b", 1, ());
    tree.insert("a/+", 2, ());
    tree.insert("a/#", 3, ());
    tree.insert("#", 4, ());
    tree.insert("+/b", 5, ());
    tree.insert("a/b/c", 6, ());
    assert_eq!(
        subscribers(&tree, "a/b"),
        ["#@4", "+/b@5", "a/#@3", "a/+@2", "a/b@1"]
    );
    assert_eq!(subscribers(&tree, "a"), ["#@4", "a/#@3"]);
    assert_eq!(subscribers(&tree, "$a/b"), Vec::<String>::new());
}

#[test]
fn subscription_insert_replace_remove_prune() {
    let mut tree = SubscriptionTree::new();
    assert!(tree.is_empty());
    assert_eq!(tree.insert("a/b/c", "c1", 1), None);
    assert_eq!(tree.insert("a/b/c", "c1", 2), Some(1));
    assert_eq!(tree.len(), 1);
    assert_eq!(tree.get("a/b/c", &"c1"), Some(&2));
    assert_eq!(tree.get("a/b", &"c1"), None);
    assert_eq!(tree.get("a/b/c", &"c2"), None);
    assert_eq!(tree.insert("a/b", "c1", 3), None);
    assert_eq!(tree.len(), 2);

    assert_eq!(tree.remove("a/b/c", &"c2"), None);
    assert_eq!(tree.remove("x", &"c1"), None);
    assert_eq!(tree.remove("a/b/c", &"c1"), Some(2));
    assert_eq!(tree.remove("a/b/c", &"c1"), None);
    assert_eq!(tree.len(), 1);
    // `a/b/c` is gone but `a/b` still holds an entry.
    assert_eq!(tree.trie.nodes.len() - tree.trie.free.len(), 3);
    assert_eq!(tree.remove("a/b", &"c1"), Some(3));
    assert!(tree.is_empty());
    assert_eq!(tree.trie.nodes.len() - tree.trie.free.len(), 1);
    assert!(tree.trie.nodes[ROOT].children.is_empty());

    // Freed slots are reused.
    tree.insert("x/y", "c1", 4);
    assert_eq!(tree.trie.nodes.len(), 4);
    let mut seen = Vec::new();
    tree.for_each_match("x/y", |filter, key, value| {
        seen.push((filter.to_owned(), *key, *value))
    });
    assert_eq!(seen, [("x/y".to_owned(), "c1", 4)]);
}

#[test]
fn many_keys_on_one_filter() {
    let mut tree = SubscriptionTree::new();
    for key in 0..100u32 {
        tree.insert("sensors/+/temp", key, key * 10);
    }
    assert_eq!(tree.len(), 100);
    let mut total = 0;
    tree.for_each_match("sensors/7/temp", |filter, _, value| {
        assert_eq!(filter, "sensors/+/temp");
        total += value;
    });
    assert_eq!(total, (0..100).map(|k| k * 10).sum::<u32>());
    for key in 0..99u32 {
        assert_eq!(tree.remove("sensors/+/temp", &key), Some(key * 10));
    }
    assert_eq!(tree.get("sensors/+/temp", &99), Some(&990));
    assert_eq!(tree.remove("sensors/+/temp", &99), Some(990));
    assert!(tree.is_empty());
    assert_eq!(tree.trie.nodes.len() - tree.trie.free.len(), 1);
}

#[test]
fn invalid_lookups_match_nothing() {
    let mut subs = SubscriptionTree::new();
    subs.insert("#", 1, ());
    assert!(subscribers(&subs, "a/+").is_empty());
    assert!(subscribers(&subs, "").is_empty());
    let mut retains = RetainTree::new();
    retains.insert("a/b", 1);
    for filter in ["", "a/#/b", "a+", "a/b#", "#/"] {
        assert!(retained(&retains, filter).is_empty(), "{filter:?}");
    }
}

#[test]
fn retain_insert_replace_remove_prune() {
    let mut tree = RetainTree::new();
    assert_eq!(tree.insert("a/b", 1), None);
    assert_eq!(tree.insert("a/b", 2), Some(1));
    assert_eq!(tree.insert("a", 3), None);
    assert_eq!(tree.insert("a/b/c/d", 4), None);
    assert_eq!(tree.len(), 3);
    assert_eq!(tree.get("a/b"), Some(&2));
    assert_eq!(tree.get("a/b/c"), None);
    assert_eq!(retained(&tree, "a/#"), ["a", "a/b", "a/b/c/d"]);
    assert_eq!(retained(&tree, "a/+"), ["a/b"]);
    assert_eq!(retained(&tree, "+/+/+/d"), ["a/b/c/d"]);

    assert_eq!(tree.remove("a/b/c"), None);
    assert_eq!(tree.remove("a/b/c/d"), Some(4));
    assert_eq!(tree.trie.nodes.len() - tree.trie.free.len(), 3);
    assert_eq!(tree.remove("a"), Some(3));
    assert_eq!(tree.remove("a/b"), Some(2));
    assert!(tree.is_empty());
    assert_eq!(tree.trie.nodes.len() - tree.trie.free.len(), 1);
}

#[test]
fn retain_dollar_topics() {
    let mut tree = RetainTree::new();
    for (i, topic) in ["$SYS/uptime", "$SYS/clients", "sys/uptime", "a/$b"]
        .iter()
        .enumerate()
    {
        tree.insert(topic, i as u32);
    }
    assert_eq!(retained(&tree, "#"), ["a/$b", "sys/uptime"]);
    assert_eq!(retained(&tree, "+/uptime"), ["sys/uptime"]);
    assert_eq!(retained(&tree, "$SYS/#"), ["$SYS/clients", "$SYS/uptime"]);
    assert_eq!(retained(&tree, "a/+"), ["a/$b"]);
}

#[test]
fn deep_branches_need_no_recursion() {
    let deep = "a/".repeat(100_000) + "end";
    let mut subs = SubscriptionTree::new();
    subs.insert(&deep, 1, ());
    subs.insert("a/#", 2, ());
    assert_eq!(subscribers(&subs, &deep).len(), 2);
    let mut retains = RetainTree::new();
    retains.insert(&deep, 1);
    assert_eq!(retained(&retains, "#").len(), 1);
    // Dropping both trees with the deep branch in place must not overflow the stack.
}

/// A deliberately naive matcher, written independently of the code under test.
fn reference_matches(filter: &str, topic: &str) -> bool {
    fn walk(filter: &[&str], topic: &[&str]) -> bool {
        match (filter.split_first(), topic.split_first()) {
            (Some((&"#", rest)), _) => rest.is_empty(),
            (Some((&"+", f_rest)), Some((_, t_rest))) => walk(f_rest, t_rest),
            (Some((f, f_rest)), Some((t, t_rest))) => f == t && walk(f_rest, t_rest),
            (None, None) => true,
            _ => false,
        }
    }
    let filter: Vec<&str> = filter.split('/').collect();
    let topic: Vec<&str> = topic.split('/').collect();
    if topic[0].starts_with('$') && (filter[0] == "+" || filter[0] == "#") {
        return false;
    }
    walk(&filter, &topic)
}

fn topic_strategy() -> impl Strategy<Value = String> {
    let level = prop_oneof![Just("a"), Just("b"), Just("$x"), Just("")];
    proptest::collection::vec(level, 1..=4)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("a topic has at least one character", |topic| {
            !topic.is_empty()
        })
}

fn filter_strategy() -> impl Strategy<Value = String> {
    let level = prop_oneof![Just("a"), Just("b"), Just("$x"), Just(""), Just("+")];
    (proptest::collection::vec(level, 0..=3), any::<bool>()).prop_map(|(mut levels, hash)| {
        if hash {
            levels.push("#");
        }
        // A filter has at least one character.
        match levels.join("/") {
            empty if empty.is_empty() => "#".to_owned(),
            filter => filter,
        }
    })
}

proptest! {
    #[test]
    fn plain_matcher_agrees_with_reference(filter in filter_strategy(), topic in topic_strategy()) {
        prop_assert!(is_valid_filter(&filter));
        prop_assert!(is_valid_topic_name(&topic));
        prop_assert_eq!(filter_matches(&filter, &topic), reference_matches(&filter, &topic));
    }

    #[test]
    fn subscription_tree_agrees_with_reference(
        filters in proptest::collection::vec(filter_strategy(), 0..12),
        topics in proptest::collection::vec(topic_strategy(), 1..8),
        removals in proptest::collection::vec(any::<bool>(), 12),
    ) {
        let mut tree = SubscriptionTree::new();
        // Two keys per filter; duplicates in `filters` replace rather than add.
        let mut entries = std::collections::BTreeSet::new();
        for (i, filter) in filters.iter().enumerate() {
            for key in [i % 3, 10] {
                tree.insert(filter, key, ());
                entries.insert((filter.clone(), key));
            }
        }
        prop_assert_eq!(tree.len(), entries.len());
        let check = |tree: &SubscriptionTree<usize, ()>, entries: &std::collections::BTreeSet<(String, usize)>| {
            for topic in &topics {
                let mut got = Vec::new();
                tree.for_each_match(topic, |filter, key, ()| got.push((filter.to_owned(), *key)));
                got.sort();
                let want: Vec<_> = entries.iter().filter(|(f, _)| reference_matches(f, topic)).cloned().collect();
                assert_eq!(got, want, "topic {:?}", topic);
            }
        };
        check(&tree, &entries);
        for (entry, remove) in entries.clone().iter().zip(&removals) {
            if *remove {
                prop_assert!(tree.remove(&entry.0, &entry.1).is_some());
                entries.remove(entry);
            }
        }
        prop_assert_eq!(tree.len(), entries.len());
        check(&tree, &entries);
        for (filter, key) in &entries {
            prop_assert!(tree.remove(filter, key).is_some());
        }
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.trie.nodes.len() - tree.trie.free.len(), 1);
    }

    #[test]
    fn retain_tree_agrees_with_reference(
        topics in proptest::collection::vec(topic_strategy(), 0..12),
        filters in proptest::collection::vec(filter_strategy(), 1..8),
        removals in proptest::collection::vec(any::<bool>(), 12),
    ) {
        let mut tree = RetainTree::new();
        let mut stored = std::collections::BTreeSet::new();
        for (i, topic) in topics.iter().enumerate() {
            tree.insert(topic, i);
            stored.insert(topic.clone());
        }
        prop_assert_eq!(tree.len(), stored.len());
        let check = |tree: &RetainTree<usize>, stored: &std::collections::BTreeSet<String>| {
            for filter in &filters {
                let mut got = Vec::new();
                tree.for_each_match(filter, |topic, _| got.push(topic.to_owned()));
                got.sort();
                let want: Vec<_> = stored.iter().filter(|t| reference_matches(filter, t)).cloned().collect();
                assert_eq!(got, want, "filter {:?}", filter);
            }
        };
        check(&tree, &stored);
        for (topic, remove) in stored.clone().iter().zip(&removals) {
            if *remove {
                prop_assert!(tree.remove(topic).is_some());
                stored.remove(topic);
            }
        }
        prop_assert_eq!(tree.len(), stored.len());
        check(&tree, &stored);
        for topic in &stored {
            prop_assert!(tree.remove(topic).is_some());
        }
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.trie.nodes.len() - tree.trie.free.len(), 1);
    }
}
