//! Runs the notifications service on its own (microservice mode), or replays the event log into
//! it: `instaclone-notifications replay --since 2026-01-01T00:00:00Z`.

use std::io::Write;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use instaclone_shared::{config::Settings, server::shutdown_on_signal, telemetry};

#[derive(Parser)]
#[command(version, about = "Instaclone notifications service")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and consume events (the default).
    Serve,
    /// Rebuild notifications from the event log, from SINCE up to the log's current end.
    /// Idempotent: events already handled create nothing new.
    Replay {
        /// RFC 3339 time to start from, e.g. 2026-01-01T00:00:00Z.
        #[arg(long)]
        since: DateTime<Utc>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = instaclone_notifications::build(&settings, shutdown_on_signal()).await?;
            app.run_until_stopped().await?;
        }
        Command::Replay { since } => {
            let report = instaclone_notifications::replay_since(&settings, since).await?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
        }
    }
    Ok(())
}
