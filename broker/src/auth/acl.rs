//! The ACL rules file: ordered `allow`/`deny` rules, the first matching rule decides.
//!
//! ```text
//! # allow|deny  publish|subscribe|all  <who>  <topic filter>  [# comment]
//! allow subscribe *            $SYS/#
//! allow all       user:alice   home/alice/#
//! deny  publish   client:sensor-7  #
//! allow all       *            devices/%c/#   # %c = client id, %u = username
//! ```
//!
//! `<who>` is `*`, `user:<name>` or `client:<id>`. Fields are separated by whitespace, so
//! names and filters cannot contain spaces; the fourth field is always the filter (even `#`)
//! and anything after it must be a `#` comment. Keywords are case-insensitive.
//!
//! Filters match as in [`crate::topic_tree`], `$` rule included: a rule on `#` or `+/...`
//! says nothing about `$SYS/...` topics, which need rules of their own.

use std::borrow::Cow;
use std::path::Path;

use super::filter::{covers, overlaps, substitute, unshare};
use super::{AuthError, INLINE, content_lines, read_file};
use crate::topic_tree::{filter_matches, is_valid_filter, is_valid_topic_name};

/// What a client asks to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to a topic name.
    Publish,
    /// Subscribe to a topic filter.
    Subscribe,
}

/// What the rules make of a subscription; see [`AclRules::check_subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    /// Every topic the filter can match is allowed.
    Granted,
    /// Some topics are allowed, some may be denied: each message is checked.
    Filtered,
    /// Every topic the filter can match is denied.
    Refused,
}

/// Parsed ACL rules plus the decision used when no rule matches.
#[derive(Debug, Clone)]
pub struct AclRules {
    rules: Vec<Rule>,
    default_allow: bool,
}

impl AclRules {
    /// Parses rules text; `default_allow` decides requests no rule matches. Errors name the
    /// line.
    pub fn parse(text: &str, default_allow: bool) -> Result<Self, AuthError> {
        Self::parse_named(text, INLINE, default_allow)
    }

    /// Reads and parses the rules file at `path`.
    pub fn load(path: &Path, default_allow: bool) -> Result<Self, AuthError> {
        Self::parse_named(
            &read_file(path)?,
            &path.display().to_string(),
            default_allow,
        )
    }

    fn parse_named(text: &str, file: &str, default_allow: bool) -> Result<Self, AuthError> {
        let rules = content_lines(text)
            .map(|(line, content)| {
                Rule::parse(line, content).map_err(|message| AuthError::Parse {
                    file: file.to_owned(),
                    line,
                    message,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            rules,
            default_allow,
        })
    }

    /// Whether the client may perform `action` on `topic`: for a publish,
    /// whether the first rule matching the topic name allows it; for a
    /// subscription, whether [`AclRules::check_subscribe`] grants it.
    ///
    /// `%c` and `%u` in a rule's filter are replaced by the client id and username before
    /// matching. A rule using `%u` never matches a client without a username, and one whose
    /// substituted value is empty or contains `+`, `#` or `/` never matches, so a client id
    /// like `#` cannot widen a rule. An invalid topic name or filter (including a malformed
    /// `$share`) is always refused.
    pub fn check(
        &self,
        username: Option<&str>,
        client_id: &str,
        action: Action,
        topic: &str,
    ) -> bool {
        match action {
            Action::Publish => self.check_topic(username, client_id, Action::Publish, topic),
            Action::Subscribe => {
                self.check_subscribe(username, client_id, topic) != Subscription::Refused
            }
        }
    }

    /// What the rules make of a subscription to `filter`, as Mosquitto and
    /// EMQX users expect: each topic the filter can match is decided by the
    /// first subscribe rule matching that topic (or the default), and the
    /// subscription is
    ///
    /// - [`Subscription::Granted`] when every such topic is allowed,
    /// - [`Subscription::Filtered`] when some are allowed and some may be
    ///   denied (each message is then checked with [`AclRules::check_receive`]
    ///   before it is delivered; `#` with a `deny ... a/secret/#` rule is
    ///   granted this way),
    /// - [`Subscription::Refused`] when the rules deny every topic it can
    ///   match (SUBACK 0x80 in 3.1.1 and 0x87 in 5.0).
    ///
    /// Rules are compared filter to filter: a rule decides the whole request
    /// when its filter covers the requested one (rule `a/#` covers `a/+/b`),
    /// and takes part when the two overlap. A `$share/{group}/{filter}`
    /// subscription is checked by its inner filter.
    pub fn check_subscribe(
        &self,
        username: Option<&str>,
        client_id: &str,
        filter: &str,
    ) -> Subscription {
        let Some(target) = unshare(filter).filter(|f| is_valid_filter(f)) else {
            tracing::debug!(client_id, filter, "ACL refused an invalid filter");
            return Subscription::Refused;
        };
        let (mut allowed_some, mut denied_some) = (false, false);
        for (rule, rule_filter) in self.applicable(username, client_id, Action::Subscribe) {
            if covers(&rule_filter, target) {
                tracing::trace!(
                    client_id,
                    filter,
                    line = rule.line,
                    allow = rule.allow,
                    "ACL rule decided"
                );
                return match (rule.allow, allowed_some, denied_some) {
                    (true, _, false) => Subscription::Granted,
                    (false, false, _) => Subscription::Refused,
                    _ => Subscription::Filtered,
                };
            }
            if overlaps(&rule_filter, target) {
                allowed_some |= rule.allow;
                denied_some |= !rule.allow;
            }
        }
        match (self.default_allow, allowed_some, denied_some) {
            (true, _, false) => Subscription::Granted,
            (false, false, _) => Subscription::Refused,
            _ => Subscription::Filtered,
        }
    }

    /// Whether a subscriber may receive a message published to `topic`:
    /// the first subscribe rule whose filter matches the topic decides.
    pub fn check_receive(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.check_topic(username, client_id, Action::Subscribe, topic)
    }

    /// The first rule for `action` whose filter matches the topic name
    /// decides; without one the default does.
    fn check_topic(
        &self,
        username: Option<&str>,
        client_id: &str,
        action: Action,
        topic: &str,
    ) -> bool {
        if !is_valid_topic_name(topic) {
            tracing::debug!(client_id, ?action, topic, "ACL refused an invalid topic");
            return false;
        }
        for (rule, filter) in self.applicable(username, client_id, action) {
            if filter_matches(&filter, topic) {
                tracing::trace!(
                    client_id,
                    ?action,
                    topic,
                    line = rule.line,
                    allow = rule.allow,
                    "ACL rule applied"
                );
                return rule.allow;
            }
        }
        tracing::trace!(
            client_id,
            ?action,
            topic,
            allow = self.default_allow,
            "ACL default applied"
        );
        self.default_allow
    }

    /// The rules for `action` that apply to this client, in order, each
    /// with its filter after `%c`/`%u` substitution.
    fn applicable<'a>(
        &'a self,
        username: Option<&'a str>,
        client_id: &'a str,
        action: Action,
    ) -> impl Iterator<Item = (&'a Rule, Cow<'a, str>)> + 'a {
        self.rules.iter().filter_map(move |rule| {
            if !rule.scope.includes(action) || !rule.who.matches(username, client_id) {
                return None;
            }
            let filter = if rule.templated {
                Cow::Owned(substitute(&rule.filter, username, client_id)?)
            } else {
                Cow::Borrowed(&*rule.filter)
            };
            Some((rule, filter))
        })
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules (every request gets the default).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Rule {
    line: usize,
    allow: bool,
    scope: Scope,
    who: Who,
    filter: Box<str>,
    /// Whether `filter` contains `%c` or `%u`.
    templated: bool,
}

#[derive(Debug, Clone, Copy)]
enum Scope {
    Publish,
    Subscribe,
    All,
}

impl Scope {
    fn includes(self, action: Action) -> bool {
        match self {
            Scope::All => true,
            Scope::Publish => action == Action::Publish,
            Scope::Subscribe => action == Action::Subscribe,
        }
    }
}

#[derive(Debug, Clone)]
enum Who {
    Anyone,
    User(Box<str>),
    Client(Box<str>),
}

impl Who {
    fn matches(&self, username: Option<&str>, client_id: &str) -> bool {
        match self {
            Who::Anyone => true,
            Who::User(name) => username == Some(&**name),
            Who::Client(id) => client_id == &**id,
        }
    }
}

impl Rule {
    fn parse(line: usize, content: &str) -> Result<Self, String> {
        let mut fields = content.split_whitespace();
        let mut next = |what: &str| {
            fields
                .next()
                .ok_or_else(|| format!("missing {what}; expected `allow|deny publish|subscribe|all <who> <topic filter>`"))
        };
        let allow = match next("permission")?.to_ascii_lowercase().as_str() {
            "allow" => true,
            "deny" => false,
            other => return Err(format!("expected `allow` or `deny`, found `{other}`")),
        };
        let scope = match next("action")?.to_ascii_lowercase().as_str() {
            "publish" => Scope::Publish,
            "subscribe" => Scope::Subscribe,
            "all" => Scope::All,
            other => {
                return Err(format!(
                    "expected `publish`, `subscribe` or `all`, found `{other}`"
                ));
            }
        };
        let who = parse_who(next("who")?)?;
        let filter = next("topic filter")?;
        if let Some(extra) = fields.next()
            && !extra.starts_with('#')
        {
            return Err(format!("unexpected `{extra}` after the topic filter"));
        }
        if !is_valid_filter(filter) {
            return Err(format!("invalid topic filter `{filter}`"));
        }
        if filter == "$share" || filter.starts_with("$share/") {
            return Err(format!(
                "`{filter}`: shared subscriptions are checked by their inner filter; \
                 write the rule without `$share/<group>/`"
            ));
        }
        Ok(Self {
            line,
            allow,
            scope,
            who,
            filter: filter.into(),
            templated: filter.contains("%c") || filter.contains("%u"),
        })
    }
}

fn parse_who(field: &str) -> Result<Who, String> {
    if field == "*" {
        return Ok(Who::Anyone);
    }
    let (kind, name) = field
        .split_once(':')
        .ok_or_else(|| format!("expected `*`, `user:<name>` or `client:<id>`, found `{field}`"))?;
    if name.is_empty() {
        return Err(format!("empty name in `{field}`"));
    }
    match kind.to_ascii_lowercase().as_str() {
        "user" => Ok(Who::User(name.into())),
        "client" => Ok(Who::Client(name.into())),
        _ => Err(format!(
            "expected `*`, `user:<name>` or `client:<id>`, found `{field}`"
        )),
    }
}

#[cfg(test)]
mod tests;
