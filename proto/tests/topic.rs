//! Topic names, filters, wildcard matching and shared subscriptions
//! (MQTT 5.0 sections 4.7 and 4.8.2, with the spec's own examples).

use proptest::prelude::*;
use tidemq_proto::mqtt::{
    SharedFilter, TopicError, is_valid_topic_filter, is_valid_topic_name, matches_filter,
    parse_shared_filter,
};

#[test]
fn topic_names() {
    for valid in [
        "a",
        "/",
        "a/b",
        "/finance",
        "$SYS/broker",
        "sport/ tennis",
        "ü/€",
        "a//b",
    ] {
        assert!(is_valid_topic_name(valid), "{valid:?}");
    }
    for invalid in ["", "a/+", "+", "#", "a/#", "a+b", "a#", "a\0b"] {
        assert!(!is_valid_topic_name(invalid), "{invalid:?}");
    }
    assert!(is_valid_topic_name(&"a".repeat(65_535)));
    assert!(!is_valid_topic_name(&"a".repeat(65_536)));
}

#[test]
fn topic_filters() {
    for valid in [
        "#",
        "+",
        "+/+",
        "/+",
        "sport/#",
        "sport/tennis/+",
        "sport/+/player1",
        "+/tennis/#",
        "a//b",
        "$SYS/#",
        "$share",
        "$share/group/a/+/#",
        "$share/g/#",
    ] {
        assert!(is_valid_topic_filter(valid), "{valid:?}");
    }
    for invalid in [
        "",
        "sport/tennis#",
        "sport/tennis/#/ranking",
        "sport+",
        "+a",
        "##",
        "a/#/",
        "a\0",
        "$share/",
        "$share//a",
        "$share/g",
        "$share/g/",
        "$share/g+/a",
        "$share/a#/b",
        "$share/g/a#",
    ] {
        assert!(!is_valid_topic_filter(invalid), "{invalid:?}");
    }
}

#[test]
fn multi_level_wildcard() {
    for topic in [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
    ] {
        assert!(matches_filter("sport/tennis/player1/#", topic), "{topic}");
    }
    // `#` includes the parent level.
    assert!(matches_filter("sport/#", "sport"));
    assert!(matches_filter(
        "sport/tennis/player1/#",
        "sport/tennis/player1"
    ));
    assert!(matches_filter("#", "a/b/c"));
    assert!(matches_filter("#", "/"));
    assert!(!matches_filter("sport/#", "sports"));
    assert!(!matches_filter("sport/tennis/#", "sport"));
}

#[test]
fn single_level_wildcard() {
    assert!(matches_filter("sport/tennis/+", "sport/tennis/player1"));
    assert!(matches_filter("sport/tennis/+", "sport/tennis/player2"));
    assert!(!matches_filter(
        "sport/tennis/+",
        "sport/tennis/player1/ranking"
    ));
    assert!(!matches_filter("sport/+", "sport"));
    assert!(matches_filter("sport/+", "sport/"));
    assert!(matches_filter("+/+", "/finance"));
    assert!(matches_filter("/+", "/finance"));
    assert!(!matches_filter("+", "/finance"));
    assert!(matches_filter("+/tennis/#", "sport/tennis"));
    assert!(matches_filter("a/+/c", "a//c"));
}

#[test]
fn exact_levels() {
    assert!(matches_filter("a/b", "a/b"));
    assert!(!matches_filter("a/b", "a/b/c"));
    assert!(!matches_filter("a/b/c", "a/b"));
    assert!(!matches_filter("a/b", "a/B"));
    assert!(!matches_filter("a/b", "a/b/"));
}

#[test]
fn dollar_topics_and_leading_wildcards() {
    assert!(!matches_filter("#", "$SYS/monitor/Clients"));
    assert!(!matches_filter("+/monitor/Clients", "$SYS/monitor/Clients"));
    assert!(!matches_filter("+", "$SYS"));
    assert!(matches_filter("$SYS/#", "$SYS/monitor/Clients"));
    assert!(matches_filter("$SYS/monitor/+", "$SYS/monitor/Clients"));
    assert!(matches_filter("$SYS/#", "$SYS"));
    // The rule is about the first character of the topic only.
    assert!(matches_filter("+/$x", "a/$x"));
    assert!(matches_filter("#", "a/$x"));
}

#[test]
fn shared_filters() {
    assert_eq!(parse_shared_filter("a/b"), Ok(None));
    assert_eq!(parse_shared_filter("$share"), Ok(None));
    assert_eq!(parse_shared_filter("$SYS/x"), Ok(None));
    assert_eq!(
        parse_shared_filter("$share/consumers/sport/+/#"),
        Ok(Some(SharedFilter {
            group: "consumers",
            filter: "sport/+/#"
        }))
    );
    assert_eq!(
        parse_shared_filter("$share/g//"),
        Ok(Some(SharedFilter {
            group: "g",
            filter: "/"
        }))
    );
    assert_eq!(parse_shared_filter("$share/"), Err(TopicError::EmptyGroup));
    assert_eq!(
        parse_shared_filter("$share//a"),
        Err(TopicError::EmptyGroup)
    );
    assert_eq!(
        parse_shared_filter("$share/g+/a"),
        Err(TopicError::InvalidGroup)
    );
    assert_eq!(
        parse_shared_filter("$share/#/a"),
        Err(TopicError::InvalidGroup)
    );
    assert_eq!(
        parse_shared_filter("$share/g"),
        Err(TopicError::EmptyFilter)
    );
    assert_eq!(
        parse_shared_filter("$share/g/"),
        Err(TopicError::EmptyFilter)
    );
    assert_eq!(
        parse_shared_filter("$share/g/a/#/b"),
        Err(TopicError::InvalidFilter)
    );
    assert_eq!(
        parse_shared_filter("$share/g/a+"),
        Err(TopicError::InvalidFilter)
    );
}

#[test]
fn shared_filters_match_like_their_inner_filter() {
    assert!(matches_filter("$share/g/sport/#", "sport/tennis"));
    assert!(!matches_filter("$share/g/sport/#", "news"));
    assert!(!matches_filter("$share/g/#", "$SYS/x"));
}

proptest! {
    /// A topic matches itself as a filter, and `#` matches every topic
    /// that does not start with `$`.
    #[test]
    fn topics_match_themselves(topic in "[a-z$/]{1,20}") {
        prop_assert!(is_valid_topic_name(&topic));
        prop_assert!(is_valid_topic_filter(&topic) || topic.starts_with("$share/"));
        prop_assert!(matches_filter(&topic, &topic));
        prop_assert_eq!(matches_filter("#", &topic), !topic.starts_with('$'));
    }

    /// Replacing any level of a topic by `+` still matches it, except a
    /// leading `+` against a `$` topic.
    #[test]
    fn plus_replaces_any_level(topic in "[a-z$]{0,3}(/[a-z$]{0,3}){0,4}", at in any::<prop::sample::Index>()) {
        prop_assume!(!topic.is_empty());
        let mut levels: Vec<&str> = topic.split('/').collect();
        let i = at.index(levels.len());
        levels[i] = "+";
        let filter = levels.join("/");
        prop_assert!(is_valid_topic_filter(&filter));
        let dollar_rule = i == 0 && topic.starts_with('$');
        prop_assert_eq!(matches_filter(&filter, &topic), !dollar_rule);
    }

    /// Validation and matching never panic on arbitrary text.
    #[test]
    fn arbitrary_text_never_panics(filter in "\\PC{0,16}", topic in "\\PC{0,16}") {
        let _ = is_valid_topic_filter(&filter);
        let _ = is_valid_topic_name(&topic);
        let _ = matches_filter(&filter, &topic);
        let _ = parse_shared_filter(&filter);
    }
}
