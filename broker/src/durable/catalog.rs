//! The session catalog: where persistent sessions are recorded besides the
//! local store, so that the cluster knows who holds each one.
//!
//! The store keeps the local log; the catalog is the meta service (or
//! nothing, for a broker without one). Both speak [`StoredSession`]; the
//! catalog alone knows the meta service's wire format.

use tidemq_meta::MetaClient;
use tidemq_proto::grpc::v1 as pb;

use super::{DurableError, DurableStore, Record, StoredSession};

/// Where persistent sessions are recorded besides the store's own session
/// partition.
#[derive(Clone, Default)]
pub enum SessionCatalog {
    /// Nowhere else (a broker without a meta service).
    #[default]
    Local,
    /// In the meta service too: one session record per persistent session,
    /// owned by this node.
    Meta {
        /// A client of the meta service.
        client: MetaClient,
        /// This node's id, recorded as the session's owner.
        node_id: u64,
    },
}

impl SessionCatalog {
    /// Whether sessions are recorded anywhere but the local store.
    pub fn is_shared(&self) -> bool {
        matches!(self, SessionCatalog::Meta { .. })
    }

    /// Records `session`, with whether it has a connection.
    pub async fn put(&self, session: &StoredSession, connected: bool) -> Result<(), DurableError> {
        let SessionCatalog::Meta { client, node_id } = self else {
            return Ok(());
        };
        let entry = pb::Session {
            client_key: session.key.clone(),
            node_id: *node_id,
            created_at_ms: 0,
            expiry_secs: session.expiry_secs,
            connected,
            payload: Record::Session(session.clone()).encode()?,
        };
        client.put_session(entry).await?;
        Ok(())
    }

    /// The node the catalog says holds the session `key` (`None`: no node,
    /// or no catalog). A linearizable read of the meta service.
    pub async fn owner(&self, key: &str) -> Result<Option<u64>, DurableError> {
        let SessionCatalog::Meta { client, .. } = self else {
            return Ok(None);
        };
        let record = client.get_session(key).await?;
        Ok(record.map(|r| r.node_id).filter(|&node| node != 0))
    }

    /// Forgets the session `key`.
    pub async fn forget(&self, key: &str) -> Result<(), DurableError> {
        if let SessionCatalog::Meta { client, .. } = self {
            client.delete_session(key).await?;
        }
        Ok(())
    }
}

/// Writes a persistent session's state to the store and the catalog (as
/// connected); both are done on return.
pub async fn put_session(
    store: &DurableStore,
    catalog: &SessionCatalog,
    session: StoredSession,
) -> Result<(), DurableError> {
    futures_util::future::try_join(store.put_session(&session), catalog.put(&session, true))
        .await
        .map(|_| ())
}

/// Records the end of the session `key` in the store and the catalog.
pub async fn end_session(
    store: &DurableStore,
    catalog: &SessionCatalog,
    key: &str,
) -> Result<(), DurableError> {
    futures_util::future::try_join(store.session_gone(key), catalog.forget(key))
        .await
        .map(|_| ())
}
