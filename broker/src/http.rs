//! The node's HTTP endpoint: `GET /metrics`, `GET /health` and
//! `POST /admin/reload`.
//!
//! - `/metrics`: every metric of the node's one [`Registry`] (broker, meta
//!   service, runtimes) in the Prometheus text format.
//! - `/health`: `200` with a small JSON body while every Raft group of the
//!   meta service has a leader and the node's route table has caught up
//!   with the metadata group since the start (it refuses clients until
//!   then: CONNACK 0x88, 3.1.1 0x03), `503` with the same body otherwise
//!   (`"status"`: `"no_leader"` or `"catching_up"`):
//!
//! ```text
//! {"status":"ok","node_id":1,"mqtt":"127.0.0.1:1883","grpc":"127.0.0.1:1228",
//!  "meta_leader":true,"groups":2,"groups_led":2,"groups_without_leader":[],
//!  "leaders":[1,1],
//!  "cluster":{"caught_up":true,"leader":1,"routes":3,"routes_applied":41,"route_table_lag":0,
//!   "members":[{"id":1,"addr":"127.0.0.1:1221","voter":true},
//!    {"id":2,"addr":"127.0.0.1:1222","voter":true,"link":"up","queued":0,"routes_confirmed":41}]}}
//! ```
//!
//! `meta_leader` says whether this node leads the metadata group (0);
//! `leaders` is each group's leader (`null`: none). `cluster` is this node's
//! view of the brokers' cluster: the metadata group's members (a learner is
//! not a voter), and for each other member this node's link to it (`idle`:
//! nothing sent yet, `up`, `down`), the messages queued for it and the
//! highest route index it confirmed having applied.
//!
//! - `/admin/reload`: what SIGHUP does (passwords, ACL, certificates); `200`
//!   with `{"reloaded":true,"failed":[]}`, or `500` with what kept its old
//!   settings and why: `{"reloaded":false,"failed":[{"what":"auth","error":"..."}]}`.
//!
//! With `http.token_file` set, every request must carry the token as
//! `authorization: Bearer {token}`; others get `401` (counted in
//! `tidemq_http_unauthorized_total`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tidemq_meta::openraft::Raft;
use tidemq_meta::{NodeId, TypeConfig};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// What the handlers read.
pub(crate) struct Endpoints {
    /// The node's registry.
    pub registry: Registry,
    /// This node's id in the meta service.
    pub node_id: NodeId,
    /// The bound MQTT address.
    pub mqtt: SocketAddr,
    /// The bound gRPC address.
    pub grpc: SocketAddr,
    /// The Raft instance of every meta group.
    pub rafts: Arc<Vec<Raft<TypeConfig>>>,
    /// `authorization` a request must carry (`Bearer {token}`), if any.
    pub token: Option<String>,
    /// Requests refused for want of it.
    pub unauthorized: prometheus::IntCounter,
    /// Reloads the broker's files.
    pub reloader: Arc<crate::broker::Reloader>,
    /// The node's part in its cluster.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Endpoints {
    /// Whether `headers` carry the token, when one is required (compared in
    /// time independent of where they differ).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let expected = format!("Bearer {token}");
        let presented = headers
            .get(header::AUTHORIZATION)
            .map_or(&[][..], |v| v.as_bytes());
        let same = presented.len() == expected.len()
            && presented
                .iter()
                .zip(expected.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            self.unauthorized.inc();
        }
        same
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this endpoint requires the token of http.token_file\n",
    )
        .into_response()
}

/// A running HTTP server.
pub(crate) struct HttpServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Binds `addr` and serves on `runtime`.
    pub(crate) fn start(
        runtime: &Handle,
        addr: SocketAddr,
        endpoints: Endpoints,
    ) -> std::io::Result<HttpServer> {
        // Bound inside the serving runtime so that its reactor owns the socket.
        let listener = runtime.block_on(TcpListener::bind(addr))?;
        let local_addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/health", get(health))
            .route("/admin/reload", axum::routing::post(reload))
            .with_state(Arc::new(endpoints));
        let (stop, mut stopped) = watch::channel(false);
        let task = runtime.spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                warn!(error = %e, "HTTP endpoint failed");
            }
        });
        info!(%local_addr, "HTTP endpoint started");
        Ok(HttpServer {
            local_addr,
            stop,
            task,
        })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits (up to 5 s) for open requests to finish.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            // A client holding a keep-alive connection open.
            abort.abort();
        }
        info!("HTTP endpoint stopped");
    }
}

async fn metrics(State(endpoints): State<Arc<Endpoints>>, headers: HeaderMap) -> Response {
    if !endpoints.authorized(&headers) {
        return unauthorized();
    }
    let families = endpoints.registry.gather();
    let encoder = TextEncoder::new();
    let mut body = Vec::with_capacity(64 * 1024);
    match encoder.encode(&families, &mut body) {
        Ok(()) => (
            [(header::CONTENT_TYPE, encoder.format_type().to_string())],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn reload(State(endpoints): State<Arc<Endpoints>>, headers: HeaderMap) -> Response {
    if !endpoints.authorized(&headers) {
        return unauthorized();
    }
    // File reads and certificate parsing: off the runtime's workers.
    let reloader = Arc::clone(&endpoints.reloader);
    let Ok(failed) = tokio::task::spawn_blocking(move || reloader.reload()).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "reload task failed\n").into_response();
    };
    let status = if failed.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let failed: Vec<_> = failed
        .into_iter()
        .map(|(what, error)| serde_json::json!({ "what": what, "error": error }))
        .collect();
    let body = serde_json::json!({ "reloaded": failed.is_empty(), "failed": failed });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn health(State(endpoints): State<Arc<Endpoints>>, headers: HeaderMap) -> Response {
    if !endpoints.authorized(&headers) {
        return unauthorized();
    }
    let mut without_leader = Vec::new();
    let mut leaders = Vec::new();
    let mut led = 0;
    let mut meta_leader = false;
    for (group, raft) in endpoints.rafts.iter().enumerate() {
        let leader = raft.metrics().borrow().current_leader;
        leaders.push(leader);
        match leader {
            None => without_leader.push(group),
            Some(id) if id == endpoints.node_id => {
                led += 1;
                meta_leader |= group == 0;
            }
            Some(_) => {}
        }
    }
    let caught_up = endpoints.cluster.as_ref().is_none_or(|c| c.caught_up());
    let healthy = without_leader.is_empty() && caught_up;
    let state = match (without_leader.is_empty(), caught_up) {
        (false, _) => "no_leader",
        (true, false) => "catching_up",
        (true, true) => "ok",
    };
    let body = serde_json::json!({
        "status": state,
        "node_id": endpoints.node_id,
        "mqtt": endpoints.mqtt.to_string(),
        "grpc": endpoints.grpc.to_string(),
        "meta_leader": meta_leader,
        "groups": endpoints.rafts.len(),
        "groups_led": led,
        "groups_without_leader": without_leader,
        "leaders": leaders,
        "cluster": endpoints.cluster.as_ref().map(|c| c.status()),
    })
    .to_string();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
