//! The cluster secret: what a gRPC call to the meta service must carry.
//!
//! The meta service's calls change who votes (`AddMember`, `RemoveMember`),
//! what is stored (`DeleteSession`, `SetClusterConfig`) and what Raft
//! accepts (`Vote`, `AppendEntries`, `InstallSnapshot`). When a node is
//! given a [`ClusterSecret`], its server refuses every call that does not
//! carry it in an `authorization: Bearer {secret}` header
//! (`UNAUTHENTICATED`, counted in `tidemq_meta_unauthenticated_total`), and
//! its own calls, to the other members and from [`crate::MetaClient`],
//! carry it. The comparison takes the same time whatever the header holds.
//!
//! Without a secret anyone who can reach the port is trusted: a node binds a
//! non-loopback address only when a secret is set, or when told explicitly
//! that its network is private.

use std::fmt;
use std::sync::Arc;

use prometheus::IntCounter;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::error::MetaError;

/// The metadata key the secret travels in.
const AUTHORIZATION: &str = "authorization";

/// Fewest bytes a secret may have.
pub const MIN_SECRET_LEN: usize = 16;

/// A shared secret every member of a cluster, and every admin client,
/// holds. Cheap to clone; its `Debug` does not show it.
#[derive(Clone)]
pub struct ClusterSecret {
    /// `Bearer {secret}`, as the header carries it.
    header: Arc<MetadataValue<Ascii>>,
}

impl ClusterSecret {
    /// A secret of at least [`MIN_SECRET_LEN`] printable ASCII characters
    /// (surrounding whitespace, such as a file's last newline, is removed).
    pub fn new(secret: &str) -> Result<ClusterSecret, MetaError> {
        let secret = secret.trim();
        let invalid = |reason: &str| MetaError::InvalidArgument {
            reason: format!("cluster secret: {reason}"),
        };
        if secret.len() < MIN_SECRET_LEN {
            return Err(invalid(&format!(
                "must be at least {MIN_SECRET_LEN} characters"
            )));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("must be printable ASCII without spaces"));
        }
        let header = format!("Bearer {secret}")
            .parse()
            .map_err(|_| invalid("not a valid header value"))?;
        Ok(ClusterSecret {
            header: Arc::new(header),
        })
    }

    /// Whether `presented` (the header's value) is this secret, in time
    /// independent of where they differ.
    fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.header.as_bytes();
        if presented.len() != expected.len() {
            return false;
        }
        let diff = presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// Adds the secret to every outgoing call (nothing without one).
#[derive(Clone, Debug, Default)]
pub struct AttachSecret(pub Option<ClusterSecret>);

impl Interceptor for AttachSecret {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(secret) = &self.0 {
            request
                .metadata_mut()
                .insert(AUTHORIZATION, (*secret.header).clone());
        }
        Ok(request)
    }
}

/// Refuses incoming calls without the secret (lets all through without one).
/// Every service of a node's gRPC server is wrapped in it, the ones given
/// by [`crate::ExtraServices`] too.
#[derive(Clone)]
pub struct RequireSecret {
    pub(crate) secret: Option<ClusterSecret>,
    pub(crate) refused: IntCounter,
}

impl Interceptor for RequireSecret {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(secret) = &self.secret else {
            return Ok(request);
        };
        let presented = request.metadata().get(AUTHORIZATION);
        if presented.is_some_and(|value| secret.matches(value.as_bytes())) {
            return Ok(request);
        }
        self.refused.inc();
        Err(Status::unauthenticated(
            "this meta service requires the cluster secret (authorization: Bearer ...)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_odd_secrets_are_refused() {
        assert!(ClusterSecret::new("short").is_err());
        assert!(ClusterSecret::new("sixteen chars here").is_err(), "spaces");
        assert!(
            ClusterSecret::new("  0123456789abcdef\n").is_ok(),
            "trimmed"
        );
    }

    #[test]
    fn only_the_exact_secret_matches() {
        let secret = ClusterSecret::new("0123456789abcdef").expect("valid");
        assert!(secret.matches(b"Bearer 0123456789abcdef"));
        assert!(!secret.matches(b"Bearer 0123456789abcdeF"));
        assert!(!secret.matches(b"Bearer 0123456789abcde"));
        assert!(!secret.matches(b""));
        assert_eq!(format!("{secret:?}"), "ClusterSecret(..)");
    }
}
