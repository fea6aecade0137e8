//! The apply benchmark's modes, each run briefly: every mode applies, and the
//! database holds every session it reported writing.

use std::time::Duration;

use tidemq_examples::raft_apply::{self, ApplyMode, ApplySpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_applies_and_the_database_holds_the_sessions() -> anyhow::Result<()> {
    let spec = ApplySpec {
        concurrency: 4,
        batch: 8,
        duration: Duration::from_millis(300),
        pool_threads: 2,
        pool_queue: 16,
        // More sessions than a short run writes: no overwrites, so the key
        // count must equal the record count.
        sessions: u64::MAX,
        probe_interval: Duration::from_millis(1),
    };
    for mode in ApplyMode::ALL {
        let dir = tempfile::tempdir()?;
        let report = raft_apply::run_mode(dir.path(), mode, spec).await?;
        assert!(report.applies > 0, "{}: no applies", mode.name());
        assert_eq!(report.records, report.applies * spec.batch as u64);
        assert!(report.probes > 0, "{}: the probe never ran", mode.name());

        let path = dir.path().to_path_buf();
        let stored = tokio::task::spawn_blocking(move || {
            let db = raft_apply::open_db(&path)?;
            raft_apply::count_sessions(&db)
        })
        .await??;
        assert_eq!(
            stored,
            report.records,
            "{}: sessions in the database",
            mode.name()
        );
    }
    Ok(())
}

#[test]
fn a_session_value_is_about_150_bytes() {
    let len = raft_apply::session_value_len();
    assert!((120..=200).contains(&len), "session value is {len} bytes");
}
