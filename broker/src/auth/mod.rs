//! Authentication and authorization.
//!
//! - [`PasswordFile`] checks CONNECT credentials against a file of argon2 PHC hashes:
//!
//!   ```text
//!   # username:PHC string
//!   alice:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$...
//!   ```
//!
//! - [`AclRules`] decides whether a client may publish to a topic or subscribe to a filter,
//!   from an ordered rules file where the first matching rule wins:
//!
//!   ```text
//!   # allow|deny  publish|subscribe|all  <who>  <topic filter>
//!   allow subscribe *            $SYS/#
//!   allow all       user:alice   home/alice/#
//!   deny  publish   client:sensor-7  #
//!   allow all       *            devices/%c/#   # %c = client id, %u = username
//!   ```
//!
//! Both files are parsed completely at load time, so a bad line fails startup or reload with
//! its line number instead of surfacing on the first CONNECT.

mod acl;
mod filter;
mod login;
mod password;
mod verified;

pub use acl::{AclRules, Action, Subscription};
pub use login::Login;
pub use password::PasswordFile;
pub use verified::Verified;

use std::path::PathBuf;

/// Errors loading or using the password and ACL files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line of the file is malformed.
    #[error("{file} line {line}: {message}")]
    Parse {
        /// The file's path, or `<inline>` for text given to `parse`.
        file: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// Hashing a new password failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// The `file` name used in [`AuthError::Parse`] for text not read from a file.
const INLINE: &str = "<inline>";

/// Reads `path` to a string, mapping the error to [`AuthError::Io`].
fn read_file(path: &std::path::Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Yields `(line number, trimmed line)` for the lines that are neither blank nor `#` comments.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}
