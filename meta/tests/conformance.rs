//! openraft's storage conformance suite, against group 0 of a one-group
//! store and against the last group of a four-group store (whose column
//! families share the database with three other groups).

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use tempfile::TempDir;
use tidemq_meta::{MetaLogStore, MetaStateMachine, TypeConfig};

/// Opens a fresh store in a new temp dir on every call, so every test of the
/// suite gets an independent store; the temp dir is the guard.
struct Builder {
    groups: u32,
    group: usize,
}

impl StoreBuilder<TypeConfig, MetaLogStore, MetaStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, MetaLogStore, MetaStateMachine), StorageError<u64>> {
        let io = |e: &dyn std::fmt::Display| StorageIOError::write(AnyError::error(e.to_string()));
        let dir = tempfile::tempdir().map_err(|e| io(&e))?;
        let registry = prometheus::Registry::new();
        let stores = tidemq_meta::open(dir.path(), self.groups, &registry)
            .await
            .map_err(|e| io(&e))?;
        let (log, sm) = stores
            .into_iter()
            .nth(self.group)
            .ok_or_else(|| io(&"no such group"))?;
        assert_eq!(log.group() as usize, self.group);
        Ok((dir, log, sm))
    }
}

#[test]
fn suite_on_group_0() {
    let builder = Builder {
        groups: 1,
        group: 0,
    };
    Suite::test_all(builder).unwrap();
}

#[test]
fn suite_on_group_3_of_4() {
    let builder = Builder {
        groups: 4,
        group: 3,
    };
    Suite::test_all(builder).unwrap();
}
