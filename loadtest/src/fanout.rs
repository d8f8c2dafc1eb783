//! `fanout`: M connected clients receive messages published at a fixed rate; every client
//! records when each message arrives, and the lag is measured from the message's *scheduled*
//! send time (start + k / rate), so a publisher that falls behind shows up as lag instead of
//! silently sending less (coordinated omission).
//!
//! Targets:
//! - `--target stack`, end to end through the public API: `--posters` P posters and `--clients`
//!   M followers are registered through the gateway, every follower follows every poster (so
//!   each post is owed to all M followers), the followers hold WebSocket connections to the hub
//!   with their access tokens, and the posters create posts with `POST /posts` at `--rate`
//!   posts per second in all (round-robin over the posters, open loop). Each follower records
//!   every `post_created` notification; after the run, arrivals are joined to the posts by
//!   `postId` (a notification can arrive before the POST's response) and latency is arrival
//!   minus the POST's scheduled time. The path: gateway, posts (MongoDB + outbox), RabbitMQ,
//!   notifications (followers from users, MongoDB writes), RabbitMQ, hub (Redis), socket.
//! - `--target hub`: every tick publishes `notification.created` events (one notification per
//!   client, `--batch` per event) straight to RabbitMQ, as the notifications service does: the
//!   hub's part alone (RabbitMQ, consumer, Redis script, pub/sub, socket write). Clients use
//!   tokens minted with `JWT_PRIVATE_KEY_FILE` (the hub must have the matching public key).
//! - `--target broadcast`: every tick is one text frame sent by a publisher connection to the
//!   minimal broadcast server (`examples/broadcast_server.rs`): the floor.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use instaclone_shared::{
    amqp,
    config::Settings,
    events::{EventEnvelope, NotificationCreated, NotificationView},
};
use lapin::{BasicProperties, options::BasicPublishOptions};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::{
    api::{self, Account, Api},
    backlog, client, open_loop,
    plot::{Chart, Series, XAxis},
    progress,
    report::{self, CpuWatch, Report},
    stats::{self, Samples},
};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Hub,
    Broadcast,
    Stack,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Hub => "hub",
            Self::Broadcast => "broadcast",
            Self::Stack => "stack",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value = "hub")]
    target: Target,
    /// WebSocket URL of the server under test (the hub's, or the broadcast server's).
    #[arg(long, default_value = "ws://127.0.0.1:3005/realtime/ws")]
    url: String,
    /// Connected clients: followers for `stack`, distinct users for `hub`.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Messages per second: posts per second in all for `stack`; ticks per second (one message
    /// to every client each) for `hub` and `broadcast`.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    /// Longest wait for missing deliveries after the last message was due (ends early once
    /// everything arrived).
    #[arg(long, default_value_t = 30)]
    drain_secs: u64,
    /// Notifications per `notification.created` event (`hub`).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Source addresses to spread the clients over (127.0.0.1 ..= 127.0.0.N).
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Posting users (`stack`); every client follows every one of them.
    #[arg(long, default_value_t = 10)]
    posters: usize,
    /// The public API and how hard set-up and posting may push it (`stack`).
    #[command(flatten)]
    stack: crate::api::StackArgs,
}

/// One message as a client received it.
struct Arrival {
    at: Instant,
    wall: DateTime<Utc>,
    /// The post id (`stack`), or the tick number (`hub`, `broadcast`).
    key: String,
    /// The notification's `createdAt` (`stack`, `hub`) or the frame's (`broadcast`).
    created: Option<DateTime<Utc>>,
}

/// Picks the key and creation time out of a text frame: `post_created` notifications
/// (`{"id","type":"notification","data":{...,"type":"post_created","data":{"postId"}}}`) for the
/// hub and the stack, `{"tick","createdAt"}` frames for the broadcast server.
pub(crate) fn parse_frame(text: &str, target: Target) -> Option<(String, Option<DateTime<Utc>>)> {
    let (key, created) = match target {
        Target::Hub | Target::Stack => {
            let frame: HubFrame<'_> = serde_json::from_str(text).ok()?;
            let notification = frame.data.filter(|_| frame.kind == "notification")?;
            if notification.kind != "post_created" {
                return None;
            }
            (
                notification.data.post_id?.into_owned(),
                notification.created_at,
            )
        }
        Target::Broadcast => {
            let frame: BroadcastFrame<'_> = serde_json::from_str(text).ok()?;
            (frame.tick.to_string(), frame.created_at)
        }
    };
    let created = created
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc));
    Some((key, created))
}

/// The fields of a hub frame the clients look at; the rest is skipped unparsed, so the load
/// generator spends its CPU on receiving rather than on decoding what it does not read.
#[derive(serde::Deserialize)]
struct HubFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<FrameNotification<'a>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct FrameNotification<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    data: FramePost<'a>,
    #[serde(borrow)]
    created_at: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FramePost<'a> {
    #[serde(borrow)]
    post_id: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BroadcastFrame<'a> {
    tick: u64,
    #[serde(borrow)]
    created_at: Option<Cow<'a, str>>,
}

/// One client: records every message until told to stop.
async fn receive(
    mut socket: client::Socket,
    target: Target,
    received: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Vec<Arrival> {
    let mut arrivals = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let (at, wall) = (Instant::now(), Utc::now());
                    if let Some((key, created)) = parse_frame(text.as_str(), target) {
                        arrivals.push(Arrival { at, wall, key, created });
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break,
            },
        }
    }
    arrivals
}

/// What the publisher sent: per message key, when it was due (offset from the start and wall
/// time) and, for the stack, when the post was created (the POST's `createdAt`).
struct Sent {
    due: Duration,
    due_wall: DateTime<Utc>,
    post_created: Option<DateTime<Utc>>,
}

/// The stack's POSTs: status counts and timing, beside what [`Sent`] keeps per post.
#[derive(Default)]
struct PostStats {
    due: u64,
    dropped: u64,
    unfinished: u64,
    ok: u64,
    errors: std::collections::BTreeMap<String, u64>,
    latency: Samples,
    service_time: Samples,
}

pub async fn run(args: Args, watched: &[u32]) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.rate > 0.0 && args.clients > 0,
        "rate and clients must be positive"
    );
    anyhow::ensure!(
        args.target != Target::Stack || args.posters > 0,
        "--posters must be positive"
    );
    let api = Api::new(
        &args.stack.api,
        Duration::from_secs(args.stack.timeout_secs),
        args.stack.max_in_flight,
    )?;
    let cast = Cast::prepare(&args, &api).await?;
    let clients = Clients::connect(&args, &cast.tokens).await?;
    // Let the hub finish subscribing everyone.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Publish.
    let total = (args.rate * args.duration_secs as f64).round() as u64;
    let cpu = CpuWatch::start(watched);
    let bar = progress::bar(total, "publishing");
    let (start, sent, posts) = match args.target {
        Target::Stack => publish_to_stack(&args, &api, cast.posters, total, &bar).await,
        Target::Hub => publish_to_hub(&args, &cast.users, total, &bar).await?,
        Target::Broadcast => publish_to_broadcast(&args, total, &bar).await?,
    };
    let publish_seconds = start.elapsed().as_secs_f64();

    let expected = match args.target {
        Target::Stack => posts.ok * args.clients as u64,
        _ => total * args.clients as u64,
    };
    let deadline = start + open_loop::due(total, args.rate) + Duration::from_secs(args.drain_secs);
    let drained = clients
        .drain(expected, deadline, &cpu, cast.backlog)
        .await?;
    let run_seconds = drained.run_seconds(start);
    let deliveries = Deliveries::join(args.target, &drained.per_client, &sent, start);
    Ok(build_report(
        &args,
        Measured {
            total,
            expected,
            publish_seconds,
            run_seconds,
            sent,
            posts,
            deliveries,
            setup: cast.setup,
            backlog_at_end: drained.backlog_at_end,
            cpu: drained.cpu,
        },
    ))
}

/// Who connects, with which token, and who posts.
struct Cast {
    /// One per client: `None` for the broadcast server, which takes no token.
    tokens: Vec<Option<String>>,
    /// The posting accounts (`stack`).
    posters: Vec<Account>,
    /// The clients' users (`hub`).
    users: Vec<Uuid>,
    /// How the set-up went (`stack`).
    setup: Value,
    /// The broker connection for the end-of-run queue depths (`stack`).
    backlog: Option<backlog::Backlog>,
}

impl Cast {
    async fn prepare(args: &Args, api: &Api) -> anyhow::Result<Self> {
        let mut cast = Self {
            tokens: Vec::with_capacity(args.clients),
            posters: Vec::new(),
            users: Vec::new(),
            setup: json!(null),
            backlog: None,
        };
        match args.target {
            Target::Stack => cast.register_stack(args, api).await?,
            Target::Hub => {
                let issuer = client::token_issuer()?;
                for _ in 0..args.clients {
                    let user = Uuid::now_v7();
                    cast.tokens.push(Some(client::mint(&issuer, user)?));
                    cast.users.push(user);
                }
            }
            Target::Broadcast => cast.tokens.resize(args.clients, None),
        }
        Ok(cast)
    }

    /// Registers the posters and the followers through the API, makes every follower follow
    /// every poster, and waits for the queues to settle.
    async fn register_stack(&mut self, args: &Args, api: &Api) -> anyhow::Result<()> {
        let run = api::run_id();
        progress::note(format!(
            "fanout --target stack: {} posters and {} followers ({run}-*) against {}",
            args.posters, args.clients, args.stack.api
        ));
        let clock = Instant::now();
        let mut accounts = api
            .register_many(
                &run,
                args.posters + args.clients,
                args.stack.register_concurrency,
                "registering",
            )
            .await?;
        let register_seconds = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let pairs: Vec<(usize, usize)> = (args.posters..accounts.len())
            .flat_map(|follower| (0..args.posters).map(move |poster| (follower, poster)))
            .collect();
        api.follow_many(&accounts, &pairs, args.stack.setup_concurrency)
            .await?;
        let follow_seconds = clock.elapsed().as_secs_f64();
        let (settle, queues) = backlog::settle(Duration::from_secs(args.stack.settle_secs)).await;
        self.backlog = queues;
        self.setup = json!({
            "runId": run,
            "registerSeconds": register_seconds,
            "follows": pairs.len(),
            "followSeconds": follow_seconds,
            "settle": settle,
        });
        let followers = accounts.split_off(args.posters);
        self.tokens
            .extend(followers.into_iter().map(|a| Some(a.access_token)));
        self.posters = accounts;
        Ok(())
    }
}

/// The connected clients, each a task recording what it receives.
struct Clients {
    stop: watch::Sender<bool>,
    received: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Arrival>>>,
}

/// What the clients received, and the machine's and the queues' state when they stopped.
struct Drained {
    per_client: Vec<Vec<Arrival>>,
    cpu: Value,
    /// When the drain ended.
    ended: Instant,
    backlog_at_end: Value,
}

impl Drained {
    fn run_seconds(&self, start: Instant) -> f64 {
        self.ended.saturating_duration_since(start).as_secs_f64()
    }
}

impl Clients {
    /// Connects one client per token, spread over the source addresses.
    async fn connect(args: &Args, tokens: &[Option<String>]) -> anyhow::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let received = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(args.clients);
        let bar = progress::bar(args.clients as u64, "connecting");
        for (i, token) in tokens.iter().enumerate() {
            let socket = client::connect(
                &args.url,
                client::source_address(i, args.sources),
                token.as_deref(),
            )
            .await
            .with_context(|| format!("client {i} could not connect to {}", args.url))?;
            tasks.push(tokio::spawn(receive(
                socket,
                args.target,
                received.clone(),
                stop_rx.clone(),
            )));
            bar.inc(1);
        }
        progress::finish(&bar, format!("{} clients connected", args.clients));
        Ok(Self {
            stop,
            received,
            tasks,
        })
    }

    /// Waits until every owed delivery (`expected`) arrived, or until `deadline`; then reads
    /// the CPU use and the queue depths, stops the clients and collects what they received.
    async fn drain(
        self,
        expected: u64,
        deadline: Instant,
        cpu: &CpuWatch,
        backlog: Option<backlog::Backlog>,
    ) -> anyhow::Result<Drained> {
        let bar = progress::bar(expected, "deliveries");
        loop {
            let now = self.received.load(Ordering::Relaxed);
            bar.set_position(now);
            if now >= expected || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cpu = cpu.finish();
        let ended = Instant::now();
        let backlog_at_end = backlog::final_depths(backlog).await;
        let _ = self.stop.send(true);
        let mut per_client = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            per_client.push(task.await?);
        }
        progress::finish(
            &bar,
            format!(
                "{} of {expected} received",
                self.received.load(Ordering::Relaxed)
            ),
        );
        Ok(Drained {
            per_client,
            cpu,
            ended,
            backlog_at_end,
        })
    }
}

/// The clients' arrivals joined to what was sent.
#[derive(Default)]
struct Deliveries {
    /// From the scheduled send time to the socket.
    latency: Samples,
    /// Stages (`stack`): due time to the notification's `createdAt`, the post's `createdAt` to
    /// the notification's, and the notification's to the socket.
    to_notification: Samples,
    post_to_notification: Samples,
    notification_to_socket: Samples,
    /// Seconds from the start of publishing to each unique arrival.
    arrival_offsets: Vec<f64>,
    unique: u64,
    duplicates: u64,
    /// Arrivals of messages this run did not send.
    unmatched: u64,
}

impl Deliveries {
    fn join(
        target: Target,
        per_client: &[Vec<Arrival>],
        sent: &HashMap<String, Sent>,
        start: Instant,
    ) -> Self {
        let mut joined = Self::default();
        for arrivals in per_client {
            let mut seen = HashSet::with_capacity(arrivals.len());
            for arrival in arrivals {
                let Some(message) = sent.get(&arrival.key) else {
                    joined.unmatched += 1;
                    continue;
                };
                if !seen.insert(arrival.key.as_str()) {
                    joined.duplicates += 1;
                    continue;
                }
                joined.unique += 1;
                joined.record(target, message, arrival, start);
            }
        }
        joined
    }

    /// One unique arrival of `message`.
    fn record(&mut self, target: Target, message: &Sent, arrival: &Arrival, start: Instant) {
        let at = arrival.at.saturating_duration_since(start);
        self.arrival_offsets.push(at.as_secs_f64());
        match target {
            Target::Stack => {
                self.latency
                    .record(open_loop::corrected_latency(message.due, at));
                if let Some(created) = arrival.created {
                    record_between(&mut self.to_notification, message.due_wall, created);
                    if let Some(post_created) = message.post_created {
                        record_between(&mut self.post_to_notification, post_created, created);
                    }
                    record_between(&mut self.notification_to_socket, created, arrival.wall);
                }
            }
            // The hub's and the broadcast server's messages carry their scheduled time.
            Target::Hub | Target::Broadcast => {
                if let Some(created) = arrival.created {
                    record_between(&mut self.latency, created, arrival.wall);
                }
            }
        }
    }
}

/// Everything a run measured, for its report.
struct Measured {
    /// Messages due.
    total: u64,
    expected: u64,
    publish_seconds: f64,
    run_seconds: f64,
    sent: HashMap<String, Sent>,
    posts: PostStats,
    deliveries: Deliveries,
    setup: Value,
    backlog_at_end: Value,
    cpu: Value,
}

fn build_report(args: &Args, mut measured: Measured) -> Report {
    let Deliveries {
        unique,
        duplicates,
        unmatched,
        ..
    } = measured.deliveries;
    let expected = measured.expected;
    let missing = expected.saturating_sub(unique);
    let seconds = measured.run_seconds.ceil().max(1.0) as usize;
    let arrival_offsets = std::mem::take(&mut measured.deliveries.arrival_offsets);
    let last_arrival = arrival_offsets.iter().copied().fold(0.0_f64, f64::max);
    let delivered = stats::per_second(arrival_offsets, seconds);
    let owed = stats::per_second(
        measured
            .sent
            .values()
            .flat_map(|m| std::iter::repeat_n(m.due.as_secs_f64(), args.clients)),
        seconds,
    );
    // Deliveries per second over the whole delivery: from the start to the last arrival (longer
    // than the publishing when the pipeline falls behind).
    let window = last_arrival.max(measured.publish_seconds).max(f64::EPSILON);
    let latency_summary = measured.deliveries.latency.summary();

    let mut json = json!({
        "scenario": "fanout",
        "target": args.target.name(),
        "url": args.url,
        "clients": args.clients,
        "ratePerSecond": args.rate,
        "durationSeconds": args.duration_secs,
        "messages": measured.total,
        "expectedDeliveries": expected,
        "receivedDeliveries": unique + duplicates,
        "uniqueDeliveries": unique,
        "missingDeliveries": missing,
        "duplicateDeliveries": duplicates,
        "unmatchedDeliveries": unmatched,
        "publishSeconds": measured.publish_seconds,
        "runSeconds": measured.run_seconds,
        "deliveriesPerSecond": unique as f64 / window,
        "lastArrivalSeconds": last_arrival,
        "lagMillis": latency_summary,
        "perSecond": { "delivered": delivered, "owed": owed },
        "machine": measured.cpu,
    });
    let mut latency_series = vec![Series::new(
        match args.target {
            Target::Stack => "POST due -> notification on socket",
            Target::Hub => "publish due -> socket",
            Target::Broadcast => "send due -> socket",
        },
        measured.deliveries.latency.percentile_curve(),
    )];
    let mut description = vec![headline(args)];
    description.push(format!(
        "deliveries expected {expected}, unique {unique}, missing {missing}, duplicate {duplicates}, unmatched {unmatched}; {:.0}/s; lag {}",
        unique as f64 / window,
        report::short_summary(&latency_summary)
    ));
    if args.target == Target::Stack {
        add_stack_details(
            args,
            &mut measured,
            &mut json,
            &mut description,
            &mut latency_series,
        );
    }
    description.push(report::cpu_line(&json["machine"]));
    Report {
        name: format!("fanout-{}", args.target.name()),
        title: format!("fanout --target {}", args.target.name()),
        description,
        charts: charts(latency_series, &delivered, &owed),
        json,
    }
}

/// Latency by percentile, and deliveries per second (`delivered`) against what was owed.
fn charts(latency_series: Vec<Series>, delivered: &[u64], owed: &[u64]) -> Vec<Chart> {
    vec![
        Chart {
            title: "Delivery latency by percentile (from the scheduled send time)".into(),
            x_label: "percentile".into(),
            y_label: "milliseconds".into(),
            x_axis: XAxis::Percentile,
            series: latency_series,
        },
        Chart {
            title: "Deliveries per second".into(),
            x_label: "seconds since publishing started".into(),
            y_label: "deliveries per second".into(),
            x_axis: XAxis::Linear,
            series: vec![
                Series::new("delivered", stats::series_points(delivered)),
                Series::new(
                    "owed (by due time of the message)",
                    stats::series_points(owed),
                )
                .dashed(),
            ],
        },
    ]
}

/// The report's first line: what was sent, to whom, over what.
fn headline(args: &Args) -> String {
    match args.target {
        Target::Stack => format!(
            "{} posts/s for {} s from {} posters, {} followers each (all follow all), over {} and {}",
            args.rate, args.duration_secs, args.posters, args.clients, args.stack.api, args.url
        ),
        Target::Hub => format!(
            "{} ticks/s for {} s to {} clients ({} notifications per event) via RabbitMQ, {}",
            args.rate, args.duration_secs, args.clients, args.batch, args.url
        ),
        Target::Broadcast => format!(
            "{} ticks/s for {} s to {} clients of the broadcast server {}",
            args.rate, args.duration_secs, args.clients, args.url
        ),
    }
}

/// The stack's set-up, its POSTs and the stages of a delivery, in the JSON, the description
/// and the latency chart.
fn add_stack_details(
    args: &Args,
    measured: &mut Measured,
    json: &mut Value,
    description: &mut Vec<String>,
    latency_series: &mut Vec<Series>,
) {
    let posts = &mut measured.posts;
    let stages = &mut measured.deliveries;
    json["setup"] = std::mem::take(&mut measured.setup);
    json["backlogAtEnd"] = std::mem::take(&mut measured.backlog_at_end);
    json["posters"] = json!(args.posters);
    json["posts"] = json!({
        "due": posts.due,
        "dropped": posts.dropped,
        "unfinished": posts.unfinished,
        "ok": posts.ok,
        "errors": posts.errors,
        "latencyMillis": posts.latency.summary(),
        "serviceTimeMillis": posts.service_time.summary(),
    });
    json["stagesMillis"] = json!({
        "dueToNotificationCreated": stages.to_notification.summary(),
        "postCreatedToNotificationCreated": stages.post_to_notification.summary(),
        "notificationCreatedToSocket": stages.notification_to_socket.summary(),
    });
    description.push(format!(
        "POST {} (ok {}, dropped {}, errors {:?}); notification createdAt -> socket {}",
        report::short_summary(&json["posts"]["latencyMillis"]),
        posts.ok,
        posts.dropped,
        posts.errors,
        report::short_summary(&json["stagesMillis"]["notificationCreatedToSocket"]),
    ));
    latency_series.push(Series::new(
        "POST response (from due)",
        posts.latency.percentile_curve(),
    ));
    latency_series.push(
        Series::new(
            "POST due -> notification createdAt",
            stages.to_notification.percentile_curve(),
        )
        .dashed(),
    );
    latency_series.push(
        Series::new(
            "notification createdAt -> socket",
            stages.notification_to_socket.percentile_curve(),
        )
        .dashed(),
    );
}

fn record_between(samples: &mut Samples, from: DateTime<Utc>, to: DateTime<Utc>) {
    let micros = (to - from).num_microseconds().unwrap_or(0).max(0);
    samples.record_micros(u64::try_from(micros).unwrap_or(0));
}

/// The wall-clock time of `start` (an `Instant`), for comparing with server timestamps.
fn wall_of(start: Instant) -> DateTime<Utc> {
    let (now, wall) = (Instant::now(), Utc::now());
    wall - chrono::Duration::from_std(now.saturating_duration_since(start)).unwrap_or_default()
}

/// The stack: posts through the API, open loop, round-robin over the posters.
async fn publish_to_stack(
    args: &Args,
    api: &Api,
    posters: Vec<Account>,
    total: u64,
    bar: &indicatif::ProgressBar,
) -> (Instant, HashMap<String, Sent>, PostStats) {
    let posters = Arc::new(posters);
    let schedule = args.stack.schedule(args.rate, total);
    let outcome = open_loop::run(schedule, bar, |k| {
        let (api, posters) = (api.clone(), posters.clone());
        async move {
            let poster = &posters[k as usize % posters.len()];
            let body = api::post_body(&format!("fanout post {k}"));
            let answer = api
                .send(
                    Method::POST,
                    "/posts",
                    Some(&poster.access_token),
                    Some(&body),
                )
                .await;
            match answer {
                Ok(answer) if answer.status == StatusCode::CREATED => {
                    let post: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
                    let id = post["data"]["_id"].as_str().map(str::to_owned);
                    let created = post["data"]["createdAt"]
                        .as_str()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&Utc));
                    Ok((id, created))
                }
                Ok(answer) => Err(answer.status.as_u16().to_string()),
                Err(error) if error.is_timeout() => Err("timeout".to_owned()),
                Err(_) => Err("transport".to_owned()),
            }
        }
    })
    .await;
    let start_wall = wall_of(outcome.start);
    let mut sent = HashMap::with_capacity(outcome.done.len());
    let mut posts = PostStats {
        due: total,
        dropped: outcome.dropped.len() as u64,
        unfinished: outcome.unfinished,
        ..PostStats::default()
    };
    for done in &outcome.done {
        match &done.value {
            Ok((Some(id), created)) => {
                posts.ok += 1;
                posts.latency.record(done.latency());
                posts.service_time.record(done.service_time());
                sent.insert(
                    id.clone(),
                    Sent {
                        due: done.due,
                        due_wall: start_wall
                            + chrono::Duration::from_std(done.due).unwrap_or_default(),
                        post_created: *created,
                    },
                );
            }
            Ok((None, _)) => *posts.errors.entry("no post id".into()).or_default() += 1,
            Err(kind) => *posts.errors.entry(kind.clone()).or_default() += 1,
        }
    }
    (outcome.start, sent, posts)
}

/// Every tick's messages, keyed by tick number (what the clients see as the key).
fn ticks_sent(total: u64, rate: f64, start_wall: DateTime<Utc>) -> HashMap<String, Sent> {
    (0..total)
        .map(|tick| {
            let due = open_loop::due(tick, rate);
            let due_wall = start_wall + chrono::Duration::from_std(due).unwrap_or_default();
            (
                tick.to_string(),
                Sent {
                    due,
                    due_wall,
                    post_created: None,
                },
            )
        })
        .collect()
}

async fn publish_to_hub(
    args: &Args,
    users: &[Uuid],
    ticks: u64,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(Instant, HashMap<String, Sent>, PostStats)> {
    let publisher = NotificationPublisher::connect().await?;
    let start = tokio::time::Instant::now();
    let start_wall = Utc::now();
    let sent = ticks_sent(ticks, args.rate, start_wall);
    for tick in 0..ticks {
        let due = open_loop::due(tick, args.rate);
        tokio::time::sleep_until(start + due).await;
        let created = start_wall + chrono::Duration::from_std(due).unwrap_or_default();
        publisher
            .publish(users, args.batch, created, &tick.to_string())
            .await?;
        bar.inc(1);
    }
    progress::finish(bar, format!("{ticks} ticks published"));
    publisher.close().await;
    Ok((start.into_std(), sent, PostStats::default()))
}

/// Publishes notifications to the hub's exchange as the notifications service would.
pub(crate) struct NotificationPublisher {
    settings: Settings,
    connection: lapin::Connection,
    channel: lapin::Channel,
}

impl NotificationPublisher {
    pub(crate) async fn connect() -> anyhow::Result<Self> {
        let settings = Settings::from_env()?;
        let connection = amqp::connect(&settings.amqp).await?;
        let channel = connection.create_channel().await?;
        amqp::declare_topology(&channel, &settings.amqp).await?;
        Ok(Self {
            settings,
            connection,
            channel,
        })
    }

    /// One `post_created` notification for each of `users` (post id `key`, created at
    /// `created`): `batch` per `notification.created` event.
    pub(crate) async fn publish(
        &self,
        users: &[Uuid],
        batch: usize,
        created: DateTime<Utc>,
        key: &str,
    ) -> anyhow::Result<()> {
        let mut confirms = Vec::new();
        for chunk in users.chunks(batch.max(1)) {
            let notifications = chunk
                .iter()
                .map(|user| NotificationView {
                    id: Uuid::now_v7().simple().to_string(),
                    user_id: *user,
                    kind: "post_created".to_owned(),
                    message: "loadtest posted".to_owned(),
                    data: json!({ "authorId": Uuid::nil(), "postId": key }),
                    read: false,
                    created_at: created,
                    updated_at: created,
                })
                .collect();
            let event = EventEnvelope::new("loadtest", &NotificationCreated { notifications })?;
            confirms.push(
                self.channel
                    .basic_publish(
                        &self.settings.amqp.exchange,
                        &event.event_type,
                        BasicPublishOptions::default(),
                        &event.to_vec(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?,
            );
        }
        drop(confirms);
        Ok(())
    }

    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, "done").await;
        let _ = self.connection.close(200, "done").await;
    }
}

async fn publish_to_broadcast(
    args: &Args,
    ticks: u64,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(Instant, HashMap<String, Sent>, PostStats)> {
    let mut publisher = client::connect(&args.url, client::source_address(0, 1), None).await?;
    let padding = Arc::new("x".repeat(200));
    let start = tokio::time::Instant::now();
    let start_wall = Utc::now();
    let sent = ticks_sent(ticks, args.rate, start_wall);
    for tick in 0..ticks {
        let due = open_loop::due(tick, args.rate);
        tokio::time::sleep_until(start + due).await;
        let created = start_wall + chrono::Duration::from_std(due).unwrap_or_default();
        let frame = json!({ "tick": tick, "createdAt": created.to_rfc3339(), "padding": *padding });
        publisher
            .send(Message::Text(frame.to_string().into()))
            .await?;
        bar.inc(1);
    }
    progress::finish(bar, format!("{ticks} ticks sent"));
    Ok((start.into_std(), sent, PostStats::default()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn post_created_frames_give_the_post_id() {
        let frame = r#"{"id":"1700000000000-0","type":"notification","data":{"_id":"n1","userId":"u","type":"post_created","message":"ada posted","data":{"authorId":"a","postId":"65f0c0ffee","caption":null,"mediaUrl":"https://x/y.jpg"},"read":false,"createdAt":"2026-11-26T12:00:00.250Z","updatedAt":"2026-11-26T12:00:00.250Z"}}"#;
        for target in [Target::Stack, Target::Hub] {
            let (key, created) = parse_frame(frame, target).unwrap();
            assert_eq!(key, "65f0c0ffee");
            assert_eq!(created.unwrap().timestamp_millis() % 1000, 250);
        }
        let follow = r#"{"id":"1-0","type":"notification","data":{"type":"follow","data":{"followerId":"f"}}}"#;
        assert!(parse_frame(follow, Target::Stack).is_none());
        assert!(parse_frame(r#"{"type":"resync","reason":"trimmed"}"#, Target::Stack).is_none());
        assert!(parse_frame("not json", Target::Hub).is_none());
    }

    #[test]
    fn broadcast_frames_give_the_tick() {
        let frame = r#"{"tick":7,"createdAt":"2026-11-26T12:00:00+00:00","padding":"xx"}"#;
        let (key, created) = parse_frame(frame, Target::Broadcast).unwrap();
        assert_eq!(key, "7");
        assert!(created.is_some());
    }

    #[test]
    fn ticks_are_keyed_by_number_with_their_due_times() {
        let start = Utc::now();
        let sent = ticks_sent(3, 2.0, start);
        assert_eq!(sent.len(), 3);
        assert_eq!(sent["2"].due, Duration::from_secs(1));
        assert_eq!((sent["2"].due_wall - start).num_milliseconds(), 1000);
    }
}
