//! The password file: one `username:PHC-hash` line per user, hashes made with argon2.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{
    Output, ParamsString, PasswordHash, PasswordHashString, PasswordHasher, PasswordVerifier, Salt,
    SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};

use super::{AuthError, INLINE, content_lines, read_file};

/// Salt of the dummy hash verified for unknown users; its value never matters.
const DUMMY_SALT: &str = "dGlkZW1xLWR1bW15LXNhbHQ";

/// Users and their argon2 password hashes.
///
/// Verification costs one argon2 hash with the parameters stored in the user's PHC string,
/// so it takes milliseconds: call it off the async executor threads.
#[derive(Clone)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHashString>,
    /// Verified instead of a real hash when the user is unknown, so that answering "no such
    /// user" takes as long as answering "wrong password". It copies the parameters of the
    /// first user's hash (the cost of an argon2 hash depends only on them).
    dummy: Option<PasswordHashString>,
}

impl PasswordFile {
    /// Parses lines `username:$argon2id$v=19$...` (PHC string); `#` comments and blank lines
    /// are ignored, and whitespace around the username and the hash is trimmed. Duplicate users, a missing `:`, an empty username or a hash that is not a
    /// usable argon2 PHC string are errors naming the line number.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        Self::parse_named(text, INLINE)
    }

    /// Reads and parses the password file at `path`.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        Self::parse_named(&read_file(path)?, &path.display().to_string())
    }

    fn parse_named(text: &str, file: &str) -> Result<Self, AuthError> {
        let mut users = HashMap::new();
        let mut first_hash = None;
        for (line, content) in content_lines(text) {
            let error = |message: String| AuthError::Parse {
                file: file.to_owned(),
                line,
                message,
            };
            let (user, hash) = content
                .split_once(':')
                .ok_or_else(|| error("expected `username:hash`".into()))?;
            let user = user.trim();
            if user.is_empty() {
                return Err(error("empty username".into()));
            }
            let hash = parse_hash(hash.trim()).map_err(error)?;
            if users.contains_key(user) {
                return Err(error(format!("duplicate user `{user}`")));
            }
            first_hash.get_or_insert_with(|| hash.clone());
            users.insert(user.to_owned(), hash);
        }
        let dummy = dummy_hash(first_hash.as_ref())
            .or_else(|_| dummy_hash(None))
            .ok();
        Ok(Self { users, dummy })
    }

    /// Whether `password` is `username`'s password, verified with argon2.
    ///
    /// An unknown user gives `false` after verifying against a dummy hash with the same cost,
    /// so that user existence does not leak through timing.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        let argon2 = Argon2::default();
        match self.users.get(username) {
            Some(hash) => argon2
                .verify_password(password, &hash.password_hash())
                .is_ok(),
            None => {
                if let Some(dummy) = &self.dummy {
                    let _ = argon2.verify_password(password, &dummy.password_hash());
                }
                tracing::debug!(username, "login attempt for unknown user");
                false
            }
        }
    }

    /// A PHC hash of `password` for a new password-file line: argon2id with default
    /// parameters and a random salt from the operating system.
    pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password, &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| AuthError::Hash(e.to_string()))
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file lists no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

impl fmt::Debug for PasswordFile {
    /// Shows the user count only: hashes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// Parses a PHC string and checks everything argon2 will need to verify against it, so a bad
/// hash fails at load time rather than making every login for that user fail.
fn parse_hash(text: &str) -> Result<PasswordHashString, String> {
    let hash = PasswordHash::new(text).map_err(|e| format!("invalid PHC hash: {e}"))?;
    Algorithm::try_from(hash.algorithm)
        .map_err(|_| format!("unsupported algorithm `{}`", hash.algorithm))?;
    if let Some(version) = hash.version {
        Version::try_from(version).map_err(|e| format!("unsupported argon2 version: {e}"))?;
    }
    Params::try_from(&hash).map_err(|e| format!("invalid argon2 parameters: {e}"))?;
    let salt = hash.salt.ok_or("missing salt")?;
    let mut salt_buf = [0u8; Salt::MAX_LENGTH];
    let salt_len = salt
        .decode_b64(&mut salt_buf)
        .map_err(|e| format!("invalid salt: {e}"))?
        .len();
    if salt_len < argon2::MIN_SALT_LEN {
        return Err(format!(
            "salt is {salt_len} bytes, argon2 needs at least {}",
            argon2::MIN_SALT_LEN
        ));
    }
    if hash.hash.is_none() {
        return Err("missing hash output".into());
    }
    Ok(hash.serialize())
}

/// A hash nobody's password matches, costing the same to verify as `template` (or as the
/// argon2id defaults without one).
fn dummy_hash(
    template: Option<&PasswordHashString>,
) -> Result<PasswordHashString, argon2::password_hash::Error> {
    let template = template.map(PasswordHashString::password_hash);
    let (algorithm, version, params, output_len) = match &template {
        Some(hash) => (
            hash.algorithm,
            hash.version,
            hash.params.clone(),
            hash.hash.map_or(Params::DEFAULT_OUTPUT_LEN, |h| h.len()),
        ),
        None => (
            Algorithm::Argon2id.ident(),
            Some(Version::V0x13.into()),
            ParamsString::try_from(&Params::default())?,
            Params::DEFAULT_OUTPUT_LEN,
        ),
    };
    let output = [0u8; Output::MAX_LENGTH];
    let hash = PasswordHash {
        algorithm,
        version,
        params,
        salt: Some(Salt::from_b64(DUMMY_SALT)?),
        hash: Some(Output::new(&output[..output_len])?),
    };
    Ok(hash.serialize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash with parameters cheap enough for debug-build tests.
    fn cheap_hash(password: &str) -> String {
        let argon2 = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        );
        let salt = SaltString::generate(&mut OsRng);
        argon2
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn parse_error(text: &str) -> (usize, String) {
        match PasswordFile::parse(text) {
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
    fn verifies_good_and_bad_passwords() {
        let text = format!(
            "# users\n\nalice:{}\r\n  bob : {}  \n# carol:disabled\n",
            cheap_hash("wonderland"),
            cheap_hash("builder"),
        );
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 2);
        assert!(!file.is_empty());
        assert!(file.verify("alice", b"wonderland"));
        assert!(!file.verify("alice", b"builder"));
        assert!(!file.verify("alice", b""));
        assert!(!file.verify("bob ", b"builder"));
        assert!(file.verify("bob", b"builder"));
        assert!(!file.verify("carol", b"disabled"));
        assert!(!file.verify("mallory", b"wonderland"));
    }

    #[test]
    fn other_argon2_variants_verify() {
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(1024, 1, 1, None).unwrap(),
        );
        let salt = SaltString::generate(&mut OsRng);
        let hash = argon2i.hash_password(b"pw", &salt).unwrap().to_string();
        let file = PasswordFile::parse(&format!("u:{hash}")).unwrap();
        assert!(file.verify("u", b"pw"));
        assert!(!file.verify("u", b"pW"));
    }

    #[test]
    fn empty_file_has_no_users() {
        let file = PasswordFile::parse("# nothing yet\n\n").unwrap();
        assert!(file.is_empty());
        assert!(!file.verify("anyone", b""));
        let dummy = file.dummy.unwrap();
        assert_eq!(
            dummy.password_hash().params,
            ParamsString::try_from(&Params::default()).unwrap()
        );
    }

    #[test]
    fn unknown_users_cost_a_hash_like_the_first_user() {
        let file = PasswordFile::parse(&format!("alice:{}", cheap_hash("pw"))).unwrap();
        let dummy = file.dummy.clone().unwrap();
        let alice = file.users["alice"].password_hash();
        assert_eq!(dummy.password_hash().algorithm, alice.algorithm);
        assert_eq!(dummy.password_hash().params, alice.params);
        assert_eq!(
            dummy.password_hash().hash.unwrap().len(),
            alice.hash.unwrap().len()
        );
        assert!(!file.verify("nobody", b"pw"));
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let good = cheap_hash("pw");
        let (line, message) = parse_error(&format!("# c\nalice:{good}\nbob {good}\n"));
        assert_eq!((line, message.as_str()), (3, "expected `username:hash`"));
        let (line, message) = parse_error(&format!("alice:{good}\n\nalice:{good}\n"));
        assert_eq!(line, 3);
        assert!(message.contains("duplicate user `alice`"), "{message}");
        let (line, message) = parse_error(&format!(":{good}"));
        assert_eq!((line, message.as_str()), (1, "empty username"));

        let bad_hashes = [
            ("not-a-hash", "invalid PHC hash"),
            ("", "invalid PHC hash"),
            (
                "$scrypt$ln=16,r=8,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
                "unsupported algorithm",
            ),
            (
                "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0",
                "missing hash output",
            ),
            ("$argon2id$v=19$m=1024,t=1,p=1", "missing salt"),
            (
                "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
                "invalid argon2 parameters",
            ),
            (
                "$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
                "salt is 4 bytes",
            ),
            (
                "$argon2id$v=18$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
                "unsupported argon2 version",
            ),
        ];
        for (hash, expected) in bad_hashes {
            let (line, message) = parse_error(&format!("# header\nuser:{hash}"));
            assert_eq!(line, 2, "{hash}");
            assert!(message.starts_with(expected), "{hash}: {message}");
        }
    }

    #[test]
    fn error_display_names_file_and_line() {
        let err = PasswordFile::parse("x").unwrap_err();
        assert_eq!(err.to_string(), "<inline> line 1: expected `username:hash`");
    }

    #[test]
    fn load_reads_a_file_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, format!("alice:{}\n", cheap_hash("pw"))).unwrap();
        let file = PasswordFile::load(&path).unwrap();
        assert!(file.verify("alice", b"pw"));

        std::fs::write(&path, "broken\n").unwrap();
        match PasswordFile::load(&path) {
            Err(AuthError::Parse { file, line: 1, .. }) => {
                assert_eq!(file, path.display().to_string())
            }
            other => panic!("expected a parse error, got {other:?}"),
        }

        let missing = dir.path().join("missing");
        match PasswordFile::load(&missing) {
            Err(err @ AuthError::Io { .. }) => {
                assert!(
                    err.to_string()
                        .starts_with(&format!("cannot read {}: ", missing.display()))
                );
                assert!(std::error::Error::source(&err).is_some());
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn debug_output_hides_hashes() {
        let hash = cheap_hash("pw");
        let file = PasswordFile::parse(&format!("alice:{hash}")).unwrap();
        let debug = format!("{file:?}");
        assert!(
            !debug.contains("argon2") && !debug.contains("alice"),
            "{debug}"
        );
    }

    #[test]
    fn hash_password_round_trips() {
        let hash = PasswordFile::hash_password(b"s3cret").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let file = PasswordFile::parse(&format!("alice:{hash}")).unwrap();
        assert!(file.verify("alice", b"s3cret"));
        assert!(!file.verify("alice", b"s3cret "));
        assert_ne!(
            hash,
            PasswordFile::hash_password(b"s3cret").unwrap(),
            "salts must differ"
        );
    }
}
