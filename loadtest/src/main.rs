//! `instaclone-loadtest`: load scenarios against a separately started realtime hub (or the
//! minimal broadcast server in `examples/`, for comparison).
//!
//! - `connections`: open N idle WebSocket connections (spread over several 127.0.0.x source
//!   addresses, since one address has only ~28,000 ephemeral ports), hold them, and report the
//!   server process's resident memory per connection from `/proc/<pid>/status`.
//! - `fanout`: M connected clients, events published at a fixed rate, each delivered to every
//!   client; reports deliveries per second and delivery-lag percentiles.
//!
//! Results go to stdout as one JSON object (and to `--json FILE`); progress goes to stderr.

mod client;
mod connections;
mod fanout;

use std::{io::Write, path::PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Load scenarios for the Instaclone realtime hub")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Also write the JSON result to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold N idle WebSocket connections and measure the server's memory per connection.
    Connections(connections::Args),
    /// Fan events out to M connected clients at a set rate; measure throughput and lag.
    Fanout(fanout::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Connections(args) => connections::run(args).await?,
        Scenario::Fanout(args) => fanout::run(args).await?,
    };
    let text = serde_json::to_string_pretty(&result)?;
    writeln!(std::io::stdout().lock(), "{text}")?;
    if let Some(path) = cli.json {
        std::fs::write(&path, format!("{text}\n"))?;
    }
    Ok(())
}
