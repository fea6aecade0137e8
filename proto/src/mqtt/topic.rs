//! Topic name and filter rules of MQTT (section 4.7) and shared
//! subscriptions (MQTT 5.0 section 4.8.2).
//!
//! Topics are `/`-separated levels. In filters, `+` stands for exactly one
//! level and `#` for any number of trailing levels, including none.

/// The prefix of a shared subscription filter.
const SHARE_PREFIX: &str = "$share/";

/// The longest topic or filter a UTF-8 string field can carry.
const MAX_LEN: usize = 65_535;

/// A `$share/{group}/{filter}` subscription, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share group name.
    pub group: &'a str,
    /// The topic filter the group subscribes to.
    pub filter: &'a str,
}

/// Why a shared subscription filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// `$share//...`: the share group name is empty.
    #[error("shared subscription with an empty group name")]
    EmptyGroup,
    /// The share group name contains `+`, `#` or U+0000.
    #[error("shared subscription group name contains a wildcard or NUL")]
    InvalidGroup,
    /// `$share/{group}` or `$share/{group}/`: no topic filter follows the group.
    #[error("shared subscription without a topic filter")]
    EmptyFilter,
    /// The topic filter after the group is not a valid topic filter.
    #[error("shared subscription with an invalid topic filter")]
    InvalidFilter,
}

/// Whether `topic` is a valid topic name to publish to: 1 to 65,535 bytes,
/// no wildcards, no U+0000.
pub fn is_valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_LEN && !topic.contains(['+', '#', '\0'])
}

/// Whether `filter` is a valid topic filter. A `$share/...` filter is valid
/// when [`parse_shared_filter`] accepts it.
pub fn is_valid_topic_filter(filter: &str) -> bool {
    match parse_shared_filter(filter) {
        Ok(Some(_)) => filter.len() <= MAX_LEN,
        Ok(None) => is_valid_plain_filter(filter),
        Err(_) => false,
    }
}

/// The filter rules without the shared subscription syntax: 1 to 65,535
/// bytes, no U+0000, `#` only as the whole last level, `+` only as a whole
/// level.
fn is_valid_plain_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_LEN || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        let valid = match level {
            "#" => is_last,
            "+" => true,
            _ => !level.contains(['+', '#']),
        };
        if !valid {
            return false;
        }
    }
    true
}

/// Whether `topic` matches `filter`, including the rule that a filter
/// starting with a wildcard does not match topics starting with `$`
/// (MQTT-4.7.2-1).
///
/// A shared filter (`$share/{group}/{filter}`) matches what its inner
/// filter matches. Neither argument is validated: an invalid filter simply
/// matches what its literal levels match.
pub fn matches_filter(filter: &str, topic: &str) -> bool {
    let filter = match parse_shared_filter(filter) {
        Ok(Some(shared)) => shared.filter,
        _ => filter,
    };
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `#` also matches the parent level: `sport/#` matches `sport`.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Splits a `$share/{group}/{filter}`; `Ok(None)` for a non-shared filter.
pub fn parse_shared_filter(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let (group, inner) = rest.split_once('/').unwrap_or((rest, ""));
    if group.is_empty() {
        return Err(TopicError::EmptyGroup);
    }
    if group.contains(['+', '#', '\0']) {
        return Err(TopicError::InvalidGroup);
    }
    if inner.is_empty() {
        return Err(TopicError::EmptyFilter);
    }
    if !is_valid_plain_filter(inner) {
        return Err(TopicError::InvalidFilter);
    }
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}
