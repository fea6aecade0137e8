//! `tidemq-bench`: load generator for TideMQ.

use clap::{Parser, Subcommand};
use tidemq_bench::meta::{self, MetaCommand};
use tidemq_bench::mqtt::{self, MqttCommand};
use tidemq_bench::storage::{self, AppendArgs, Output};

#[derive(Debug, Parser)]
#[command(name = "tidemq-bench", version, about = "Load generator for TideMQ")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Loads on the embedded storage engine.
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Loads on an MQTT broker: connections, publishers, subscribers, offline sessions.
    #[command(subcommand)]
    Mqtt(MqttCommand),
    /// Loads on a meta service over gRPC: session creation.
    #[command(subcommand)]
    Meta(MetaCommand),
}

#[derive(Debug, Subcommand)]
enum StorageCommand {
    /// Producers appending records to partitions.
    Append(AppendArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Storage(StorageCommand::Append(args)) => {
            let (report, commit) = runtime.block_on(storage::append(&args))?;
            match args.output {
                Output::Table => println!("{report}\n{commit}"),
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "report": report, "commit": commit })
                ),
            }
        }
        Command::Mqtt(command) => runtime.block_on(mqtt::run(&command))?,
        Command::Meta(command) => runtime.block_on(meta::run(&command))?,
    }
    Ok(())
}
