//! `fanout`: M connected clients; every tick one message per client is published; each client
//! measures the lag from the message's scheduled creation time to its arrival.
//!
//! Against the hub (`--target hub`) a tick publishes `notification.created` events (one
//! notification per client, `--batch` notifications per event) to RabbitMQ, exactly as the
//! notifications service does, so the lag covers RabbitMQ, the consumer, the Redis script,
//! pub/sub and the socket write. Against the minimal broadcast server (`--target broadcast`) a
//! tick is one text frame sent by a publisher connection and broadcast to everyone: the floor.
//!
//! Creation times are the *scheduled* send times (start + k / rate), so a publisher that falls
//! behind shows up as lag instead of silently sending less (coordinated omission).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use instaclone_shared::{
    amqp,
    config::Settings,
    events::{EventEnvelope, NotificationCreated, NotificationView},
};
use lapin::{BasicProperties, options::BasicPublishOptions};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::client;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Hub,
    Broadcast,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value = "hub")]
    target: Target,
    /// WebSocket URL of the server under test.
    #[arg(long, default_value = "ws://127.0.0.1:3005/realtime/ws")]
    url: String,
    /// Connected clients (each a distinct user for the hub).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Ticks per second; each tick sends one message to every client.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    /// Notifications per `notification.created` event (hub target).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value_t = 4)]
    sources: u8,
}

struct ClientResult {
    lags_micros: Vec<u32>,
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.rate > 0.0 && args.clients > 0,
        "rate and clients must be positive"
    );
    let issuer = match args.target {
        Target::Hub => Some(client::token_issuer()?),
        Target::Broadcast => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut users = Vec::with_capacity(args.clients);
    let mut clients = Vec::with_capacity(args.clients);
    let started = Instant::now();
    for i in 0..args.clients {
        let user = Uuid::now_v7();
        let token = match &issuer {
            Some(issuer) => Some(client::mint(issuer, user)?),
            None => None,
        };
        let socket = client::connect(
            &args.url,
            client::source_address(i, args.sources),
            token.as_deref(),
        )
        .await
        .with_context(|| format!("client {i} could not connect"))?;
        users.push(user);
        clients.push(tokio::spawn(receive(socket, args.target, stop_rx.clone())));
    }
    eprintln!(
        "{} clients connected in {:.1}s",
        args.clients,
        started.elapsed().as_secs_f64()
    );
    // Let the hub finish subscribing everyone.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let ticks = (args.rate * args.duration_secs as f64).round() as u64;
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let publishing = Instant::now();
    match args.target {
        Target::Hub => publish_to_hub(&args, &users, ticks, period).await?,
        Target::Broadcast => publish_to_broadcast(&args, ticks, period).await?,
    }
    let publish_seconds = publishing.elapsed().as_secs_f64();
    eprintln!("published {ticks} ticks in {publish_seconds:.1}s; draining");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop_tx.send(true);

    let mut lags = Vec::new();
    for client in clients {
        lags.extend(client.await?.lags_micros);
    }
    let expected = ticks as usize * args.clients;
    let received = lags.len();
    lags.sort_unstable();
    let percentile = |p: f64| -> Option<f64> {
        let index = ((lags.len() as f64 * p).ceil() as usize).saturating_sub(1);
        lags.get(index).map(|micros| f64::from(*micros) / 1000.0)
    };
    let window = publish_seconds.max(f64::EPSILON);
    Ok(json!({
        "scenario": "fanout",
        "target": match args.target { Target::Hub => "hub", Target::Broadcast => "broadcast" },
        "url": args.url,
        "clients": args.clients,
        "ratePerSecond": args.rate,
        "durationSeconds": args.duration_secs,
        "batch": args.batch,
        "expectedDeliveries": expected,
        "receivedDeliveries": received,
        "deliveriesPerSecond": received as f64 / window,
        "lagMillis": {
            "p50": percentile(0.50),
            "p90": percentile(0.90),
            "p99": percentile(0.99),
            "max": percentile(1.0),
        },
    }))
}

/// One client: records the lag of every message until told to stop.
async fn receive(
    mut socket: client::Socket,
    target: Target,
    mut stop: watch::Receiver<bool>,
) -> ClientResult {
    let mut lags_micros = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let now = chrono::Utc::now();
                    if let Some(created) = created_at(text.as_str(), target) {
                        let micros = (now - created).num_microseconds().unwrap_or(0).max(0);
                        lags_micros.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    }
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break,
            },
        }
    }
    ClientResult { lags_micros }
}

fn created_at(text: &str, target: Target) -> Option<chrono::DateTime<chrono::Utc>> {
    let frame: Value = serde_json::from_str(text).ok()?;
    let stamp = match target {
        Target::Hub if frame["type"] == "notification" => frame["data"]["createdAt"].as_str()?,
        Target::Hub => return None,
        Target::Broadcast => frame["createdAt"].as_str()?,
    };
    chrono::DateTime::parse_from_rfc3339(stamp)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn scheduled(
    start_wall: chrono::DateTime<chrono::Utc>,
    period: Duration,
    tick: u64,
) -> chrono::DateTime<chrono::Utc> {
    let offset = period.mul_f64(tick as f64);
    start_wall + chrono::Duration::from_std(offset).unwrap_or_default()
}

async fn publish_to_hub(
    args: &Args,
    users: &[Uuid],
    ticks: u64,
    period: Duration,
) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let connection = amqp::connect(&settings.amqp).await?;
    let channel = connection.create_channel().await?;
    amqp::declare_topology(&channel, &settings.amqp).await?;
    let start = tokio::time::Instant::now();
    let start_wall = chrono::Utc::now();
    for tick in 0..ticks {
        tokio::time::sleep_until(start + period.mul_f64(tick as f64)).await;
        let created = scheduled(start_wall, period, tick);
        let mut confirms = Vec::new();
        for chunk in users.chunks(args.batch.max(1)) {
            let notifications = chunk
                .iter()
                .map(|user| NotificationView {
                    id: Uuid::now_v7().simple().to_string(),
                    user_id: *user,
                    kind: "post_created".to_owned(),
                    message: "loadtest posted".to_owned(),
                    data: json!({ "authorId": Uuid::nil(), "postId": tick.to_string() }),
                    read: false,
                    created_at: created,
                    updated_at: created,
                })
                .collect();
            let event = EventEnvelope::new("loadtest", &NotificationCreated { notifications })?;
            confirms.push(
                channel
                    .basic_publish(
                        &settings.amqp.exchange,
                        &event.event_type,
                        BasicPublishOptions::default(),
                        &event.to_vec(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?,
            );
        }
        drop(confirms);
    }
    let _ = channel.close(200, "done").await;
    let _ = connection.close(200, "done").await;
    Ok(())
}

async fn publish_to_broadcast(args: &Args, ticks: u64, period: Duration) -> anyhow::Result<()> {
    let mut publisher = client::connect(&args.url, client::source_address(0, 1), None).await?;
    let padding = Arc::new("x".repeat(200));
    let start = tokio::time::Instant::now();
    let start_wall = chrono::Utc::now();
    for tick in 0..ticks {
        tokio::time::sleep_until(start + period.mul_f64(tick as f64)).await;
        let created = scheduled(start_wall, period, tick);
        let frame = json!({ "tick": tick, "createdAt": created.to_rfc3339(), "padding": *padding });
        publisher
            .send(Message::Text(frame.to_string().into()))
            .await?;
    }
    Ok(())
}
