//! `tidemq`: runs a TideMQ node. With no arguments it serves MQTT on
//! 127.0.0.1:1883 (anonymous access allowed on loopback only), the meta
//! service's gRPC on 127.0.0.1:1228 (a single-node Raft cluster,
//! bootstrapped on first start), `/metrics` and `/health` on
//! 127.0.0.1:9090, with its data under `./data`.
//!
//! Once serving it prints one line on stdout that scripts and tests wait for:
//!
//! ```text
//! tidemq ready node=1 mqtt=127.0.0.1:1883 grpc=127.0.0.1:1228 http=127.0.0.1:9090
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tidemq_broker::{Config, Node};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// jemalloc, not glibc's malloc: the node allocates and frees on every
/// message across threads, and with jemalloc the node's CPU per QoS 1
/// message measured 12 % lower for clean sessions and 20 % lower for
/// persistent ones, with the same memory per idle connection
/// (docs/benchmarks.md §12e). A program embedding the broker library
/// picks its own allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "tidemq", version, about = "TideMQ MQTT broker node")]
struct Args {
    /// Configuration file (TOML); every key is optional. See config/tidemq.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// MQTT listen address (overrides listener.bind).
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// Root of the node's data (overrides data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the /metrics and /health endpoint (overrides http.bind).
    #[arg(long)]
    http_bind: Option<SocketAddr>,
    /// Address of the meta service's gRPC server (overrides meta.grpc_addr).
    #[arg(long)]
    meta_grpc_addr: Option<SocketAddr>,
    /// Password file of `user:argon2-hash` lines (overrides auth.password_file).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// ACL rules file (overrides auth.acl_file).
    #[arg(long)]
    acl_file: Option<PathBuf>,
    /// Print an argon2 hash for a password read from stdin, for the password file, and exit.
    #[arg(long)]
    hash_password: bool,
}

impl Args {
    fn apply(self, config: &mut Config) {
        if let Some(bind) = self.bind {
            config.listener.bind = bind;
        }
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        if let Some(bind) = self.http_bind {
            config.http.bind = bind;
        }
        if let Some(addr) = self.meta_grpc_addr {
            config.meta.grpc_addr = addr;
        }
        if let Some(path) = self.password_file {
            config.auth.password_file = Some(path);
        }
        if let Some(path) = self.acl_file {
            config.auth.acl_file = Some(path);
        }
    }
}

fn main() -> anyhow::Result<()> {
    // openraft narrates every election and vote at INFO: keep its WARNs only
    // unless RUST_LOG asks for more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .init();
    let args = Args::parse();
    if args.hash_password {
        let mut password = String::new();
        std::io::stdin().read_line(&mut password)?;
        let hash = tidemq_broker::PasswordFile::hash_password(password.trim_end().as_bytes())?;
        println!("{hash}");
        return Ok(());
    }
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    args.apply(&mut config);
    fit_open_files(&mut config);
    let node_id = config.meta.node_id;
    let node = Node::start(config).context("starting the node")?;
    let waited = node.block_on(async {
        // Handlers first: a signal sent as soon as the ready line is read
        // must find them installed, not kill the process.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let listeners: Vec<String> = node
            .broker()
            .listener_addrs()
            .into_iter()
            .map(|(name, addr)| format!("{name}@{addr}"))
            .collect();
        println!(
            "tidemq ready node={node_id} mqtt={} grpc={} http={} listeners={}",
            node.mqtt_addr(),
            node.grpc_addr(),
            node.http_addr(),
            listeners.join(",")
        );
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    info!("SIGHUP: reloading passwords, ACL and TLS certificates");
                    node.broker().reload();
                }
            }
        }
        anyhow::Ok(())
    });
    info!("shutting down");
    node.shutdown();
    waited
}

/// File descriptors kept for the node's own files (the stores' segments,
/// the meta service's RocksDB, the gRPC and HTTP servers' sockets) when
/// the open-file limit is large; half the limit when it is small.
const FILES_BESIDES_CONNECTIONS: u64 = 1024;

/// Raises the soft open-file limit to the hard one, as a server holding a
/// socket per client must (a shell's default soft limit is often 1,024),
/// and lowers the listeners' `max_connections` when together they would
/// leave fewer than [`FILES_BESIDES_CONNECTIONS`] descriptors for files:
/// a node whose connections took every descriptor could not open a new
/// segment or SST file. Connections past the lowered limit are refused at
/// accept and counted, like any past `max_connections`.
fn fit_open_files(config: &mut Config) {
    let open_files = match raise_open_file_limit() {
        Ok(open_files) => open_files,
        Err(error) => {
            warn!(%error, "cannot read or raise the open-file limit");
            return;
        }
    };
    let reserve = FILES_BESIDES_CONNECTIONS.min(open_files / 2);
    let available = open_files - reserve;
    let wanted: u64 = config
        .all_listeners()
        .map(|listener| listener.max_connections as u64)
        .sum();
    if wanted <= available {
        return;
    }
    for listener in config.all_listeners_mut() {
        let fitted = (listener.max_connections as u64).saturating_mul(available) / wanted;
        listener.max_connections = usize::try_from(fitted.max(1)).unwrap_or(usize::MAX);
    }
    warn!(
        open_files,
        kept_for_files = reserve,
        max_connections = ?config.all_listeners().map(|l| l.max_connections).collect::<Vec<_>>(),
        "the open-file limit is below the listeners' max_connections: lowered them (raise the hard limit: ulimit -Hn, systemd LimitNOFILE=)"
    );
}

/// Sets the soft open-file limit to the hard one; returns the limit now in
/// force.
fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid resource and a pointer to an rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(limit.rlim_cur);
    }
    let before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: a valid resource and a pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    info!(
        from = before,
        to = limit.rlim_cur,
        "raised the open-file limit"
    );
    Ok(limit.rlim_cur)
}
