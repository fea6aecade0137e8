//! `tidemq`: runs a TideMQ node. With no arguments it serves MQTT on
//! 127.0.0.1:1883 with anonymous access allowed on loopback only.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tidemq_broker::{Broker, Config};
use tracing::info;

#[derive(Debug, Parser)]
#[command(name = "tidemq", version, about = "TideMQ MQTT broker node")]
struct Args {
    /// Configuration file (TOML); every key is optional. See config/tidemq.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// MQTT listen address (overrides listener.bind).
    #[arg(long)]
    bind: Option<SocketAddr>,
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if args.hash_password {
        let mut password = String::new();
        std::io::stdin().read_line(&mut password)?;
        let hash =
            tidemq_broker::auth::PasswordFile::hash_password(password.trim_end().as_bytes())?;
        println!("{hash}");
        return Ok(());
    }
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(bind) = args.bind {
        config.listener.bind = bind;
    }
    if let Some(path) = args.password_file {
        config.auth.password_file = Some(path);
    }
    if let Some(path) = args.acl_file {
        config.auth.acl_file = Some(path);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("broker")
        .enable_all()
        .build()?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let broker = Broker::start(config, &registry)
        .await
        .context("starting the broker")?;
    info!(addr = %broker.local_addr(), "tidemq node running; Ctrl-C to stop");
    shutdown_signal().await?;
    info!("shutting down");
    broker.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = term.recv() => {}
    }
    Ok(())
}
