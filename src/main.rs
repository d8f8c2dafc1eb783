//! `instaclone`: the whole platform in one process (monolithic mode), or a chosen subset of it.
//!
//! Every part runs on its usual port, exactly as its own binary would run it (like Grafana Loki's
//! `-target=all`). Without configured token keys or service credential, this mode makes
//! ephemeral ones at start and says so in the log; the per-service binaries refuse to start
//! without them instead.

use std::{fmt, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::future::try_join_all;
use instaclone_gateway::{GatewaySettings, routes::Upstream};
use instaclone_shared::{
    amqp::QueueSpec,
    auth::{generate_internal_token, generate_key_pair},
    config::{AmqpSettings, Secret, Settings},
    dead_letters,
    server::{ServiceApp, shutdown_on_signal},
    telemetry,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Instaclone: the social backend with realtime notifications"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Parts to run (comma-separated); all of them when omitted.
    #[arg(long, value_delimiter = ',', global = true)]
    only: Vec<Part>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform (the default).
    Run,
    /// Rebuild notifications from the event log, from SINCE up to the log's current end (the
    /// same as `instaclone-notifications replay`). Idempotent: handled events create nothing new.
    /// Needs the `INTERNAL_TOKEN` the running users service uses.
    Replay {
        /// RFC 3339 time to start from, e.g. 2026-01-01T00:00:00Z.
        #[arg(long)]
        since: chrono::DateTime<chrono::Utc>,
    },
    /// Inspect or redrive dead letters: the messages a consumer could never handle.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Write a fresh Ed25519 key pair for access tokens to DIR/jwt_private.pem and DIR/jwt_public.pem.
    Keygen {
        #[arg(long, default_value = "keys")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Count each dead-letter queue's messages and describe the oldest few (JSON); removes nothing.
    List {
        /// Only this work queue (its name with or without `AMQP_QUEUE_PREFIX`, e.g. `notifications`).
        #[arg(long)]
        queue: Option<String>,
    },
    /// Move dead letters back to their work queues to be handled again. Idempotent: consumers
    /// drop what they have already handled, and an empty dead-letter queue moves nothing.
    Redrive {
        #[arg(long)]
        queue: Option<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Gateway,
    Auth,
    Users,
    Posts,
    Notifications,
    Hub,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.to_possible_value().map(|v| v.get_name().to_owned());
        f.write_str(&name.unwrap_or_default())
    }
}

impl Part {
    /// The upstream the gateway knows this part as (the gateway itself is none).
    fn upstream(self) -> Option<Upstream> {
        match self {
            Self::Gateway => None,
            Self::Auth => Some(Upstream::Auth),
            Self::Users => Some(Upstream::Users),
            Self::Posts => Some(Upstream::Posts),
            Self::Notifications => Some(Upstream::Notifications),
            Self::Hub => Some(Upstream::Hub),
        }
    }
}

/// Parts in start order: the gateway last, so it can call the others in-process.
const ALL_PARTS: [Part; 6] = [
    Part::Users,
    Part::Auth,
    Part::Posts,
    Part::Notifications,
    Part::Hub,
    Part::Gateway,
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Keygen { out } => keygen(&out),
        Command::Replay { since } => replay(since).await,
        Command::Dlq { action } => dead_letters(action).await,
        Command::Run => {
            let mut parts = if cli.only.is_empty() {
                ALL_PARTS.to_vec()
            } else {
                cli.only
            };
            parts.sort_by_key(|part| ALL_PARTS.iter().position(|p| p == part));
            parts.dedup();
            run(&parts).await
        }
    }
}

fn keygen(dir: &std::path::Path) -> anyhow::Result<()> {
    let pair = generate_key_pair()?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let private = dir.join("jwt_private.pem");
    let public = dir.join("jwt_public.pem");
    std::fs::write(&private, pair.private_key_pem)
        .with_context(|| format!("write {}", private.display()))?;
    std::fs::write(&public, pair.public_key_pem)
        .with_context(|| format!("write {}", public.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))?;
    }
    eprintln!("wrote {} and {}", private.display(), public.display());
    Ok(())
}

async fn replay(since: chrono::DateTime<chrono::Utc>) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    anyhow::ensure!(
        settings.internal.token.is_some(),
        "set INTERNAL_TOKEN to the credential the running users service uses"
    );
    let report = instaclone_notifications::replay_since(&settings, since).await?;
    let mut stdout = std::io::stdout().lock();
    std::io::Write::write_all(
        &mut stdout,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    std::io::Write::write_all(&mut stdout, b"\n")?;
    Ok(())
}

/// Every work queue of the platform.
fn work_queues(amqp: &AmqpSettings) -> Vec<QueueSpec> {
    vec![
        instaclone_users::posts_count::queue_spec(amqp),
        instaclone_posts::events::queue_spec(amqp),
        instaclone_notifications::events::queue_spec(amqp),
        instaclone_realtime_hub::consumer::queue_spec(amqp),
        instaclone_gateway::feed_cache_queue(amqp),
    ]
}

/// The work queues `name` selects (all when `None`), or an error naming the valid ones.
fn select_queues(amqp: &AmqpSettings, name: Option<&str>) -> anyhow::Result<Vec<QueueSpec>> {
    let all = work_queues(amqp);
    let Some(name) = name else {
        return Ok(all);
    };
    let chosen: Vec<QueueSpec> = all
        .iter()
        .filter(|spec| spec.name == name || spec.name == amqp.queue(name))
        .cloned()
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = all.iter().map(|spec| spec.name.as_str()).collect();
        anyhow::bail!(
            "no work queue `{name}`; the queues are: {}",
            names.join(", ")
        );
    }
    Ok(chosen)
}

async fn dead_letters(action: DlqAction) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    let output = match action {
        DlqAction::List { queue } => {
            let specs = select_queues(&settings.amqp, queue.as_deref())?;
            let report = dead_letters::list(&settings.amqp, &specs)
                .await
                .context("RabbitMQ")?;
            serde_json::to_value(report)?
        }
        DlqAction::Redrive { queue } => {
            let mut moved = serde_json::Map::new();
            for spec in select_queues(&settings.amqp, queue.as_deref())? {
                let count = dead_letters::redrive(&settings.amqp, &spec)
                    .await
                    .context("RabbitMQ")?;
                moved.insert(spec.name, count.into());
            }
            serde_json::json!({ "redriven": moved })
        }
    };
    let mut stdout = std::io::stdout().lock();
    std::io::Write::write_all(
        &mut stdout,
        serde_json::to_string_pretty(&output)?.as_bytes(),
    )?;
    std::io::Write::write_all(&mut stdout, b"\n")?;
    Ok(())
}

async fn run(parts: &[Part]) -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    fill_in_ephemeral_secrets(&mut settings)?;

    let shutdown = shutdown_on_signal();
    let mut apps = Vec::with_capacity(parts.len());
    // The gateway (built last) calls the services of this process directly.
    let mut in_process = Vec::new();
    for part in parts {
        let app = build(*part, &settings, shutdown.clone(), &in_process)
            .await
            .with_context(|| format!("cannot start {part}"))?;
        tracing::info!(part = %part, port = app.port(), "started");
        if let Some(upstream) = part.upstream() {
            in_process.push((upstream, app.router()));
        }
        apps.push(app);
    }
    // If one part fails, stop the others instead of running half a platform.
    let stop_all = shutdown.clone();
    try_join_all(apps.into_iter().map(|app| {
        let stop_all = stop_all.clone();
        async move {
            let result = app.run_until_stopped().await;
            stop_all.cancel();
            result
        }
    }))
    .await?;
    Ok(())
}

fn fill_in_ephemeral_secrets(settings: &mut Settings) -> anyhow::Result<()> {
    let jwt = &mut settings.jwt;
    match (&jwt.private_key_pem, &jwt.public_key_pem) {
        (None, None) => {
            let pair = generate_key_pair()?;
            jwt.private_key_pem = Some(Secret::new(pair.private_key_pem));
            jwt.public_key_pem = Some(pair.public_key_pem);
            tracing::warn!(
                "no JWT keys configured: generated an ephemeral key pair; tokens will not survive a restart (run `instaclone keygen` and set JWT_PRIVATE_KEY_FILE / JWT_PUBLIC_KEY_FILE to keep them)"
            );
        }
        (Some(_), Some(_)) => {}
        _ => anyhow::bail!("set both JWT private and public keys, or neither"),
    }
    if settings.internal.token.is_none() {
        settings.internal.token = Some(generate_internal_token());
        tracing::info!("no INTERNAL_TOKEN configured: generated one for this process");
    }
    Ok(())
}

async fn build(
    part: Part,
    settings: &Settings,
    shutdown: CancellationToken,
    in_process: &[(Upstream, axum::Router)],
) -> anyhow::Result<ServiceApp> {
    Ok(match part {
        Part::Gateway => {
            let gateway_settings = GatewaySettings::from_env()?;
            let services = in_process.to_vec();
            instaclone_gateway::build_in_process(settings, gateway_settings, services, shutdown)
                .await?
        }
        Part::Auth => instaclone_auth::build(settings, shutdown).await?,
        Part::Users => instaclone_users::build(settings, shutdown).await?,
        Part::Posts => instaclone_posts::build(settings, shutdown).await?,
        Part::Notifications => instaclone_notifications::build(settings, shutdown).await?,
        Part::Hub => instaclone_realtime_hub::build(settings, shutdown).await?,
    })
}
