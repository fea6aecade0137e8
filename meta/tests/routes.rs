//! The route table and the retained messages of the metadata group:
//! `SetRoutes` and `SetRetained` through gRPC, the watcher's first read and
//! the changes applied after it, bad filters and topics refused, and a
//! restart keeping both.

use std::time::Duration;

use tidemq_meta::{
    MetaClient, MetaConfig, MetaError, MetaNodeHandle, MetadataUpdate, RetainedEntry, Route,
};
use tidemq_proto::grpc::v1 as pb;

async fn start(dir: &std::path::Path) -> MetaNodeHandle {
    let config = MetaConfig::new(1, "127.0.0.1:0".parse().expect("addr"), dir);
    MetaNodeHandle::start(config, &prometheus::Registry::new())
        .await
        .expect("meta node starts")
}

fn client(node: &MetaNodeHandle) -> MetaClient {
    MetaClient::with_deadline([node.local_addr().to_string()], Duration::from_secs(10))
        .expect("client")
}

fn route(filter: &str, node_id: u64) -> Route {
    Route {
        filter: filter.to_string(),
        node_id,
    }
}

type Updates = tokio::sync::mpsc::UnboundedReceiver<MetadataUpdate>;

/// The first update `pick` takes (returns `Some` for), skipping the others.
async fn next_update<T>(updates: &mut Updates, pick: impl Fn(MetadataUpdate) -> Option<T>) -> T {
    loop {
        let update = tokio::time::timeout(Duration::from_secs(5), updates.recv())
            .await
            .expect("an update in time")
            .expect("the watcher is open");
        if let Some(picked) = pick(update) {
            return picked;
        }
    }
}

/// The next update carrying route changes.
async fn next_changes(updates: &mut Updates) -> (u64, Vec<(Route, bool)>) {
    next_update(updates, |update| match update {
        MetadataUpdate::Applied {
            applied, changes, ..
        } if !changes.is_empty() => {
            let changes = changes.into_iter().map(|c| (c.route, c.present)).collect();
            Some((applied, changes))
        }
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_read_then_followed_in_apply_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start(dir.path()).await;
    let c = client(&node);
    let first = c
        .set_routes(2, vec!["a/#".into(), "b/+".into()], Vec::new())
        .await?;

    let mut watch = node.watch_metadata().await?;
    assert_eq!(watch.read.routes, [route("a/#", 2), route("b/+", 2)]);
    assert!(watch.read.applied >= first, "the read covers the write");

    let index = c
        .set_routes(3, vec!["a/#".into()], vec!["missing".into()])
        .await?;
    assert!(index > first);
    let (applied, changes) = next_changes(&mut watch.updates).await;
    assert_eq!(applied, index);
    assert_eq!(
        changes,
        [(route("a/#", 3), true), (route("missing", 3), false)]
    );
    c.set_routes(2, Vec::new(), vec!["b/+".into()]).await?;
    let (_, changes) = next_changes(&mut watch.updates).await;
    assert_eq!(changes, [(route("b/+", 2), false)]);

    // A bad filter is refused and nothing of its request is applied.
    let refused = c
        .set_routes(2, vec!["ok".into(), "bad\0".into()], Vec::new())
        .await;
    assert!(
        matches!(refused, Err(MetaError::InvalidArgument { .. })),
        "{refused:?}"
    );
    drop(c);
    node.shutdown().await;

    let node = start(dir.path()).await;
    client(&node).list_nodes().await?;
    let watch = node.watch_metadata().await?;
    assert_eq!(watch.read.routes, [route("a/#", 2), route("a/#", 3)]);
    node.shutdown().await;
    Ok(())
}

fn entry(topic: &str, seq: u64, message: &[u8]) -> pb::RetainedEntry {
    pb::RetainedEntry {
        topic: topic.to_string(),
        origin: 7,
        seq,
        message: message.to_vec(),
    }
}

fn applied_entry(topic: &str, seq: u64, message: &[u8]) -> RetainedEntry {
    RetainedEntry {
        topic: topic.to_string(),
        origin: 7,
        seq,
        message: message.to_vec(),
    }
}

/// The next update carrying retained messages.
async fn next_retained(updates: &mut Updates) -> (u64, Vec<RetainedEntry>) {
    next_update(updates, |update| match update {
        MetadataUpdate::Applied {
            applied, retained, ..
        } if !retained.is_empty() => Some((applied, retained)),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_read_then_followed_and_kept_across_a_restart() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let node = start(dir.path()).await;
    let c = client(&node);
    let first = c
        .set_retained(vec![entry("a/1", 1, b"one"), entry("a/2", 2, b"two")])
        .await?;

    let mut watch = node.watch_metadata().await?;
    assert_eq!(
        watch.read.retained,
        [
            applied_entry("a/1", 1, b"one"),
            applied_entry("a/2", 2, b"two")
        ]
    );
    assert!(watch.read.applied >= first, "the read covers the write");

    // Replaced and cleared in one write, applied in its order.
    let index = c
        .set_retained(vec![entry("a/1", 3, b"uno"), entry("a/2", 4, b"")])
        .await?;
    assert!(index > first);
    let (applied, retained) = next_retained(&mut watch.updates).await;
    assert_eq!(applied, index);
    assert_eq!(
        retained,
        [
            applied_entry("a/1", 3, b"uno"),
            applied_entry("a/2", 4, b"")
        ]
    );

    // A topic with U+0000 is refused, and nothing of its request applied.
    let refused = c
        .set_retained(vec![entry("a/3", 5, b"x"), entry("bad\0", 6, b"x")])
        .await;
    assert!(
        matches!(refused, Err(MetaError::InvalidArgument { .. })),
        "{refused:?}"
    );
    drop(c);
    node.shutdown().await;

    let node = start(dir.path()).await;
    client(&node).list_nodes().await?;
    let watch = node.watch_metadata().await?;
    assert_eq!(watch.read.retained, [applied_entry("a/1", 3, b"uno")]);
    node.shutdown().await;
    Ok(())
}
