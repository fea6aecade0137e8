//! The route table of the metadata group: `SetRoutes` through gRPC, the
//! watcher's first read and the changes applied after it, bad filters
//! refused, and a restart keeping the routes.

use std::time::Duration;

use tidemq_meta::{MetaClient, MetaConfig, MetaError, MetaNodeHandle, Route, RouteUpdate};

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

/// The next update carrying route changes, skipping the others.
async fn next_changes(
    updates: &mut tokio::sync::mpsc::UnboundedReceiver<RouteUpdate>,
) -> (u64, Vec<(Route, bool)>) {
    loop {
        let update = tokio::time::timeout(Duration::from_secs(5), updates.recv())
            .await
            .expect("an update in time")
            .expect("the watcher is open");
        if let RouteUpdate::Applied { applied, changes } = update
            && !changes.is_empty()
        {
            let changes = changes.into_iter().map(|c| (c.route, c.present)).collect();
            return (applied, changes);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_read_then_followed_in_apply_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start(dir.path()).await;
    let c = client(&node);
    let first = c
        .set_routes(2, vec!["a/#".into(), "b/+".into()], Vec::new())
        .await?;

    let mut watch = node.watch_routes().await?;
    assert_eq!(watch.routes, [route("a/#", 2), route("b/+", 2)]);
    assert!(watch.applied >= first, "the read covers the write");

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
    let watch = node.watch_routes().await?;
    assert_eq!(watch.routes, [route("a/#", 2), route("a/#", 3)]);
    node.shutdown().await;
    Ok(())
}
