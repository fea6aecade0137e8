//! The flat key a session is known by: `{tenant}/{client_id}`.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A session's key, `{tenant}/{client_id}`: built and taken apart here
/// only. A tenant holds no `/` (the configuration refuses one), so the
/// first `/` ends it; the client id may hold any. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(Arc<str>);

impl SessionKey {
    /// The key of `client_id` in `tenant`.
    pub fn new(tenant: &str, client_id: &str) -> SessionKey {
        SessionKey(format!("{tenant}/{client_id}").into())
    }

    /// A key read back from storage; `None` when it has no tenant part.
    pub fn parse(key: &str) -> Option<SessionKey> {
        matches!(key.split_once('/'), Some((tenant, _)) if !tenant.is_empty())
            .then(|| SessionKey(key.into()))
    }

    /// The client id part.
    pub fn client_id(&self) -> &str {
        self.0.split_once('/').map_or(&*self.0, |(_, id)| id)
    }

    /// The key as a shared string (router entries, message publishers).
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl Deref for SessionKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SessionKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::SessionKey;

    #[test]
    fn a_key_is_built_and_taken_apart_in_one_way() {
        let key = SessionKey::new("acme", "dev/1");
        assert_eq!(&*key, "acme/dev/1");
        assert_eq!(key.client_id(), "dev/1", "a client id may hold '/'");
        assert_eq!(SessionKey::parse("acme/dev/1"), Some(key));
        assert_eq!(SessionKey::parse("no-tenant"), None);
        assert_eq!(SessionKey::parse("/x"), None);
        assert_eq!(SessionKey::new("t", "").client_id(), "");
    }
}
