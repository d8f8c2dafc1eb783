//! `instaclone-loadtest`: load scenarios against a separately started Instaclone (or the minimal
//! broadcast server in `examples/`, for comparison).
//!
//! - `connections`: open N idle WebSocket connections (spread over several 127.0.0.x source
//!   addresses, since one address has only ~28,000 ephemeral ports), hold them, and report the
//!   server process's resident memory per connection from `/proc/<pid>/status`.
//! - `fanout`: M connected clients, messages published at a fixed rate, each delivered to every
//!   client; reports deliveries (expected, missing, duplicate), deliveries per second and
//!   delivery-lag percentiles. `--target stack` goes end to end through the public API (posts
//!   created with `POST /posts`, `post_created` notifications on the hub's WebSocket);
//!   `--target hub` publishes straight to RabbitMQ; `--target broadcast` is the floor.
//! - `rest-mix`: the social-network request mix (home feed, user timeline, new post) at a fixed
//!   rate, open loop, with latency counted from each request's due time.
//! - `seed-feed`: prepares a home-feed benchmark for `wrk` (a reader following `--followed`
//!   accounts, `--posts` posts inserted straight into the posts collection, the reader's home
//!   timeline built and checked, the reader's token written to a file). Its result has no
//!   charts: the plot holds only the header.
//!
//! Each run prints its result as one JSON object on stdout and writes it to `--json FILE`
//! (default `loadtest/results/<scenario>-<UTC time>.json`), with an SVG plot beside it
//! (`--plot FILE`; latency by percentile and throughput over time). Progress goes to stderr.

mod api;
mod backlog;
mod client;
mod connections;
mod fanout;
mod open_loop;
mod plot;
mod progress;
mod report;
mod rest_mix;
mod seed_feed;
mod stats;

use std::{io::Write, path::PathBuf};

use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(
    version,
    about = "Load scenarios for Instaclone: sockets, fan-out, the REST mix, feed set-up"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Write the JSON result to this file [default: RESULTS_DIR/<scenario>-<UTC time>.json].
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Write the SVG plot to this file [default: the JSON file's name with `.svg`].
    #[arg(long, global = true)]
    plot: Option<PathBuf>,
    /// Where results go when `--json` is not given.
    #[arg(long, global = true, default_value = "loadtest/results")]
    results_dir: PathBuf,
    /// Processes whose CPU use to report over the measured phase (repeatable), e.g. the
    /// `instaclone` server and the MongoDB-protocol server.
    #[arg(long = "watch-pid", global = true)]
    watch_pids: Vec<u32>,
    /// Free text kept in the result and on the plot (e.g. "FEED_CACHE_TTL_SECS=0").
    #[arg(long, global = true)]
    note: Option<String>,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold N idle WebSocket connections and measure the server's memory per connection.
    Connections(connections::Args),
    /// Fan messages out to M connected clients at a set rate; measure deliveries and lag.
    Fanout(fanout::Args),
    /// The REST mix (60% home feed, 30% user timeline, 10% new post) at a fixed rate.
    RestMix(rest_mix::Args),
    /// Prepare a home-feed benchmark for wrk: a reader following N accounts, P seeded posts,
    /// the reader's token in a file. The token lives ACCESS_TOKEN_TTL_SECS (default 900 s):
    /// run this and the stack with it set long enough for the benchmark.
    SeedFeed(seed_feed::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let started_at = chrono::Utc::now();
    let watched = cli.watch_pids.clone();
    let mut report = match cli.scenario {
        Scenario::Connections(args) => connections::run(args, &watched).await?,
        Scenario::Fanout(args) => fanout::run(args, &watched).await?,
        Scenario::RestMix(args) => rest_mix::run(args, &watched).await?,
        Scenario::SeedFeed(args) => seed_feed::run(args, &watched).await?,
    };
    let json_path = match cli.json {
        Some(path) => path,
        None => {
            std::fs::create_dir_all(&cli.results_dir)?;
            cli.results_dir.join(format!(
                "{}-{}.json",
                report.name,
                started_at.format("%Y%m%dT%H%M%SZ")
            ))
        }
    };
    let plot_path = cli.plot.unwrap_or_else(|| json_path.with_extension("svg"));
    let command_line: Vec<String> = std::env::args().collect();
    if let Some(object) = report.json.as_object_mut() {
        object.insert("startedAt".into(), json!(started_at.to_rfc3339()));
        object.insert("commandLine".into(), json!(command_line.join(" ")));
        object.insert("note".into(), json!(cli.note));
        object.insert("plotFile".into(), json!(plot_path.display().to_string()));
    }
    let mut description = report.description;
    if let Some(note) = &cli.note {
        description.push(format!("note: {note}"));
    }
    description.push(format!(
        "{} UTC; {}",
        started_at.format("%Y-%m-%d %H:%M:%S"),
        command_line.join(" ")
    ));
    let svg = plot::render(&report.title, &description, &report.charts);
    let text = serde_json::to_string_pretty(&report.json)?;
    writeln!(std::io::stdout().lock(), "{text}")?;
    std::fs::write(&json_path, format!("{text}\n"))?;
    std::fs::write(&plot_path, svg)?;
    eprintln!("wrote {} and {}", json_path.display(), plot_path.display());
    Ok(())
}
