use super::*;
use Action::{Publish, Subscribe};
use Subscription::{Filtered, Granted, Refused};

const EXAMPLE: &str = "\
# comment
# allow|deny  publish|subscribe|all  <who>  <topic filter>
allow subscribe * $SYS/#
allow all     user:alice   home/alice/#
deny  publish client:sensor-7  #
allow all * devices/%c/#        # %c = client id, %u = username
";

fn rules(text: &str, default_allow: bool) -> AclRules {
    AclRules::parse(text, default_allow).unwrap()
}

fn parse_error(text: &str) -> (usize, String) {
    match AclRules::parse(text, false) {
        Err(AuthError::Parse {
            file,
            line,
            message,
        }) => {
            assert_eq!(file, "<inline>");
            (line, message)
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn example_file() {
    let acl = rules(EXAMPLE, false);
    assert_eq!(acl.len(), 4);
    assert!(!acl.is_empty());
    assert!(acl.check(None, "c1", Subscribe, "$SYS/broker/uptime"));
    assert!(acl.check(None, "c1", Subscribe, "$SYS/#"));
    assert!(!acl.check(None, "c1", Publish, "$SYS/broker/uptime"));
    assert!(acl.check(Some("alice"), "c1", Publish, "home/alice/lights"));
    assert!(acl.check(Some("alice"), "c1", Subscribe, "home/alice/#"));
    assert!(!acl.check(Some("bob"), "c1", Publish, "home/alice/lights"));
    assert!(!acl.check(Some("alice"), "c1", Publish, "home/bob/lights"));
    assert!(acl.check(None, "sensor-1", Publish, "devices/sensor-1/temp"));
    assert!(!acl.check(None, "sensor-1", Publish, "devices/sensor-2/temp"));
    // The deny comes first for sensor-7, whatever the later rule says.
    assert!(!acl.check(None, "sensor-7", Publish, "devices/sensor-7/temp"));
    assert!(acl.check(None, "sensor-7", Subscribe, "devices/sensor-7/cmd"));
}

#[test]
fn first_matching_rule_decides() {
    let deny_first = rules("deny publish * a/secret\nallow publish * a/#", false);
    assert!(!deny_first.check(None, "c", Publish, "a/secret"));
    assert!(deny_first.check(None, "c", Publish, "a/public"));
    let allow_first = rules("allow publish * a/#\ndeny publish * a/secret", false);
    assert!(allow_first.check(None, "c", Publish, "a/secret"));
}

#[test]
fn default_decides_when_nothing_matches() {
    let open = rules("deny all * private/#", true);
    assert!(open.check(None, "c", Publish, "public/x"));
    assert!(!open.check(None, "c", Publish, "private/x"));
    let closed = rules("allow all * public/#", false);
    assert!(!closed.check(None, "c", Publish, "other"));
    assert!(rules("", true).check(None, "c", Subscribe, "#"));
    assert!(!rules("", false).check(None, "c", Subscribe, "x"));
    assert!(rules("", true).is_empty());
}

#[test]
fn who_matching() {
    let acl = rules(
        "allow all user:alice a\nallow all client:c7 b\nallow all * c",
        false,
    );
    assert!(acl.check(Some("alice"), "x", Publish, "a"));
    assert!(!acl.check(Some("alicia"), "x", Publish, "a"));
    assert!(!acl.check(None, "alice", Publish, "a"));
    assert!(acl.check(None, "c7", Publish, "b"));
    assert!(!acl.check(Some("c7"), "c8", Publish, "b"));
    assert!(acl.check(None, "anyone", Publish, "c"));
}

#[test]
fn action_scopes() {
    let acl = rules(
        "allow publish * p\nallow subscribe * s\nallow all * both",
        false,
    );
    assert!(acl.check(None, "c", Publish, "p"));
    assert!(!acl.check(None, "c", Subscribe, "p"));
    assert!(acl.check(None, "c", Subscribe, "s"));
    assert!(!acl.check(None, "c", Publish, "s"));
    assert!(acl.check(None, "c", Publish, "both"));
    assert!(acl.check(None, "c", Subscribe, "both"));
}

#[test]
fn client_and_user_substitution() {
    let acl = rules(
        "allow all * users/%u/#\nallow all * devices/%c/#\nallow all * x/%u-%c",
        false,
    );
    assert!(acl.check(Some("bob"), "c1", Publish, "users/bob/inbox"));
    assert!(!acl.check(Some("bob"), "c1", Publish, "users/alice/inbox"));
    assert!(acl.check(Some("bob"), "c1", Publish, "devices/c1/t"));
    assert!(acl.check(Some("bob"), "c1", Subscribe, "x/bob-c1"));
    // No username: `%u` rules never match, `%c` rules still do.
    assert!(!acl.check(None, "c1", Publish, "users/%u/inbox"));
    assert!(!acl.check(None, "c1", Publish, "users//inbox"));
    assert!(acl.check(None, "c1", Publish, "devices/c1/t"));
    assert!(!acl.check(None, "c1", Publish, "x/-c1"));
}

#[test]
fn substitution_cannot_be_injected() {
    let acl = rules("allow all * devices/%c/#\nallow all * users/%u/#", false);
    for id in ["#", "+", "a/b", "+/x", ""] {
        assert!(!acl.check(None, id, Subscribe, "devices/#"), "{id:?}");
        assert!(!acl.check(None, id, Subscribe, "devices/+/x"), "{id:?}");
        assert!(!acl.check(None, id, Publish, "devices/a/b"), "{id:?}");
        assert!(!acl.check(Some(id), "c1", Subscribe, "users/#"), "{id:?}");
        assert!(!acl.check(Some(id), "c1", Publish, "users/a/b"), "{id:?}");
    }
    // A client id that spells a placeholder is not expanded again.
    assert!(!acl.check(Some("bob"), "%u", Publish, "devices/bob/x"));
    assert!(acl.check(Some("bob"), "%u", Publish, "devices/%u/x"));
}

#[test]
fn a_subscription_is_granted_when_an_allow_rule_covers_it() {
    let acl = rules("allow subscribe * a/#\nallow subscribe * b/+", false);
    for filter in ["a/+/b", "a", "a/#", "b/x", "b/+"] {
        assert_eq!(acl.check_subscribe(None, "c", filter), Granted, "{filter}");
    }
}

#[test]
fn a_subscription_some_rules_allow_is_granted_and_filtered() {
    let acl = rules("allow subscribe * a/#\nallow subscribe * b/+", false);
    // Only b/x-style topics are allowed: delivery checks each message.
    for filter in ["b/#", "#", "+/x"] {
        assert_eq!(acl.check_subscribe(None, "c", filter), Filtered, "{filter}");
        assert!(acl.check(None, "c", Subscribe, filter), "{filter}");
    }
    assert!(acl.check_receive(None, "c", "b/x"));
    assert!(!acl.check_receive(None, "c", "b/x/y"));
    assert!(!acl.check_receive(None, "c", "c/x"));
    // Nothing allows the topic `b` itself.
    assert_eq!(acl.check_subscribe(None, "c", "b"), Refused);
}

#[test]
fn one_deny_rule_does_not_break_a_wildcard_subscription() {
    // The Paho interop suite's ACL, which made `#` fail before.
    let acl = rules("deny subscribe * test/nosubscribe\nallow all * #", false);
    assert_eq!(acl.check_subscribe(None, "c", "#"), Filtered);
    assert_eq!(acl.check_subscribe(None, "c", "test/+"), Filtered);
    assert_eq!(acl.check_subscribe(None, "c", "test/nosubscribe"), Refused);
    assert_eq!(acl.check_subscribe(None, "c", "test/other"), Granted);
    assert!(!acl.check_receive(None, "c", "test/nosubscribe"));
    assert!(acl.check_receive(None, "c", "test/other"));
    assert!(
        !acl.check_receive(None, "c", "$SYS/x"),
        "`#` says nothing of $SYS"
    );
}

#[test]
fn a_deny_rule_covering_the_filter_refuses_it() {
    let acl = rules("deny subscribe * a/secret/#\nallow subscribe * #", false);
    for filter in ["a/secret/#", "a/secret", "a/secret/+/x"] {
        assert_eq!(acl.check_subscribe(None, "c", filter), Refused, "{filter}");
    }
    for filter in ["#", "a/#", "a/+/x", "+/secret", "a/+"] {
        assert_eq!(acl.check_subscribe(None, "c", filter), Filtered, "{filter}");
    }
    for filter in ["a/public/#", "a/public", "b/#"] {
        assert_eq!(acl.check_subscribe(None, "c", filter), Granted, "{filter}");
    }
    assert!(!acl.check_receive(None, "c", "a/secret/k"));
    assert!(acl.check_receive(None, "c", "a/public"));
}

#[test]
fn an_earlier_allow_keeps_a_later_deny_from_refusing() {
    let acl = rules("allow subscribe * a/open\ndeny subscribe * a/#", true);
    assert_eq!(acl.check_subscribe(None, "c", "a/#"), Filtered);
    assert!(acl.check_receive(None, "c", "a/open"));
    assert!(!acl.check_receive(None, "c", "a/closed"));
    assert_eq!(acl.check_subscribe(None, "c", "a/closed"), Refused);
    // The default allows what no rule matches, but a deny overlaps `#`.
    assert_eq!(acl.check_subscribe(None, "c", "#"), Filtered);
    assert_eq!(acl.check_subscribe(None, "c", "b/#"), Granted);
}

#[test]
fn shared_subscriptions_use_the_inner_filter() {
    let acl = rules("allow subscribe * jobs/#", true);
    assert!(acl.check(None, "c", Subscribe, "$share/workers/jobs/+"));
    assert!(!rules("allow subscribe * jobs/#", false).check(
        None,
        "c",
        Subscribe,
        "$share/w/other"
    ));
    let deny = rules("deny subscribe * jobs/#", true);
    assert!(!deny.check(None, "c", Subscribe, "$share/workers/jobs/+"));
    assert!(deny.check(None, "c", Subscribe, "$share/workers/other/+"));
    for malformed in [
        "$share/g",
        "$share/g/",
        "$share//jobs",
        "$share",
        "$share/+/jobs/#",
    ] {
        assert!(!acl.check(None, "c", Subscribe, malformed), "{malformed:?}");
    }
}

#[test]
fn dollar_topics_need_their_own_rules() {
    let acl = rules("allow all * #\nallow all * +/x", false);
    assert!(acl.check(None, "c", Publish, "a/b"));
    assert!(!acl.check(None, "c", Publish, "$SYS/x"));
    assert!(!acl.check(None, "c", Subscribe, "$SYS/#"));
    let deny = rules("deny all * #", true);
    assert!(deny.check(None, "c", Publish, "$SYS/x"));
    assert!(!deny.check(None, "c", Publish, "a"));
}

#[test]
fn invalid_requests_are_refused() {
    let acl = rules("allow all * #", true);
    for topic in ["", "a/+", "a/#", "a\0b"] {
        assert!(!acl.check(None, "c", Publish, topic), "{topic:?}");
    }
    for filter in ["", "a/#/b", "a+", "a/b#"] {
        assert!(!acl.check(None, "c", Subscribe, filter), "{filter:?}");
    }
}

#[test]
fn keywords_are_case_insensitive_and_comments_trail() {
    let acl = rules("ALLOW Publish User:alice a  # why\nDeny ALL * b #", true);
    assert_eq!(acl.len(), 2);
    assert!(acl.check(Some("alice"), "c", Publish, "a"));
    assert!(!acl.check(None, "c", Subscribe, "b"));
}

#[test]
fn malformed_lines_name_their_line() {
    let cases = [
        (
            "permit all * a",
            "expected `allow` or `deny`, found `permit`",
        ),
        (
            "allow read * a",
            "expected `publish`, `subscribe` or `all`, found `read`",
        ),
        (
            "allow all someone a",
            "expected `*`, `user:<name>` or `client:<id>`, found `someone`",
        ),
        (
            "allow all group:x a",
            "expected `*`, `user:<name>` or `client:<id>`, found `group:x`",
        ),
        ("allow all user: a", "empty name in `user:`"),
        ("allow all *", "missing topic filter"),
        ("allow", "missing action"),
        ("allow all * a b", "unexpected `b` after the topic filter"),
        ("allow all * a/#/b", "invalid topic filter `a/#/b`"),
        ("allow all * a+", "invalid topic filter `a+`"),
        (
            "allow all * $share/g/a",
            "`$share/g/a`: shared subscriptions",
        ),
    ];
    for (line, expected) in cases {
        let (number, message) = parse_error(&format!(
            "# header\n\nallow all * ok\n{line}\nallow all * later"
        ));
        assert_eq!(number, 4, "{line}");
        assert!(message.starts_with(expected), "{line}: {message}");
    }
}

#[test]
fn load_reads_a_file_and_reports_errors_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl");
    std::fs::write(&path, EXAMPLE).unwrap();
    assert_eq!(AclRules::load(&path, false).unwrap().len(), 4);
    std::fs::write(&path, "allow all *\n").unwrap();
    let err = AclRules::load(&path, false).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{} line 1: missing topic filter", path.display())),
        "{err}"
    );
    let err = AclRules::load(&dir.path().join("missing"), false).unwrap_err();
    assert!(matches!(err, AuthError::Io { .. }), "{err:?}");
}
