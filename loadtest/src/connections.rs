//! `connections`: how many idle WebSocket connections one server process holds, and what each
//! costs in resident memory.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use instaclone_shared::auth::TokenIssuer;
use serde_json::json;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::{
    client,
    plot::{Chart, Series, XAxis},
    progress,
    report::{self, CpuWatch, Report},
    stats::{self, Samples},
};

#[derive(clap::Args)]
pub struct Args {
    /// WebSocket URL of the server under test.
    #[arg(long, default_value = "ws://127.0.0.1:3005/realtime/ws")]
    url: String,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Source addresses to spread them over (127.0.0.1 ..= 127.0.0.N).
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// The server's process id, to read its memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Seconds to hold the connections (idle) after the last one opened.
    #[arg(long, default_value_t = 10)]
    hold_secs: u64,
    /// Do not send tokens (for the minimal broadcast server).
    #[arg(long)]
    no_auth: bool,
    /// `ws`, or `sse` (then `--url` is the `http://ip:port/realtime/sse` URL).
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// After the hold, one broadcast round (WebSocket, hub): one notification to every
    /// connected user, published to RabbitMQ as the notifications service would; reports how
    /// many arrived and their delivery lag.
    #[arg(long)]
    round: bool,
    /// Start the round at this Unix time (seconds) rather than right after the hold, so several
    /// load processes (one per replica) broadcast together.
    #[arg(long)]
    round_at_unix: Option<i64>,
    /// Notifications per published event in the round.
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Ws,
    Sse,
}

enum Held {
    Ws(Box<client::Socket>),
    Sse(tokio::net::TcpStream),
}

/// Delivery lags of the broadcast round's notifications, as they arrive.
type Arrivals = Arc<std::sync::Mutex<Samples>>;

impl Held {
    /// Reads (answering WebSocket pings, consuming SSE heartbeats) until the server closes,
    /// recording each notification's lag.
    async fn read_until_closed(self, arrivals: Arrivals) {
        match self {
            Self::Ws(mut socket) => {
                while let Some(Ok(message)) = socket.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(text) = message
                        && let Some((_, Some(created))) =
                            crate::fanout::parse_frame(text.as_str(), crate::fanout::Target::Hub)
                    {
                        let lag = (chrono::Utc::now() - created).to_std().unwrap_or_default();
                        if let Ok(mut samples) = arrivals.lock() {
                            samples.record(lag);
                        }
                    }
                }
            }
            Self::Sse(mut stream) => {
                use tokio::io::AsyncReadExt;
                let mut buffer = [0_u8; 512];
                while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
            }
        }
    }
}

pub async fn run(args: Args, watched: &[u32]) -> anyhow::Result<Report> {
    let issuer = if args.no_auth {
        None
    } else {
        Some(client::token_issuer()?)
    };
    let rss_before = args.pid.map(client::rss_kib).transpose()?;
    let bar = progress::bar(args.count as u64, "connecting");
    let cpu = CpuWatch::start(watched);
    let opening = Opening::new(&args);
    let users = opening.open_all(&args, issuer.as_ref(), &bar).await?;
    // Wait for the last handshakes.
    let _ = opening
        .permits
        .acquire_many(u32::try_from(args.concurrency.max(1))?)
        .await?;
    let connect_seconds = opening.started.elapsed().as_secs_f64();
    let opened = opening.open.load(Ordering::Relaxed);
    progress::finish(
        &bar,
        format!(
            "{opened} open, {} failed; holding {}s",
            opening.failed.load(Ordering::Relaxed),
            args.hold_secs
        ),
    );
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let rss_after = args.pid.map(client::rss_kib).transpose()?;
    let still_open = opening.open.load(Ordering::Relaxed);
    let per_connection_bytes = match (rss_before, rss_after) {
        (Some(before), Some(after)) if still_open > 0 => {
            Some(after.saturating_sub(before) * 1024 / still_open as u64)
        }
        _ => None,
    };
    let round = if args.round {
        Some(broadcast_round(&args, &users, &opening.arrivals, still_open).await?)
    } else {
        None
    };
    let error = opening
        .first_error
        .lock()
        .ok()
        .and_then(|slot| slot.clone());
    let cpu = cpu.finish();
    Ok(build_report(
        &args,
        &opening,
        Measured {
            opened,
            connect_seconds,
            still_open,
            rss: (rss_before, rss_after),
            per_connection_bytes,
            round,
            error,
            cpu,
        },
    ))
}

/// The connections being opened: how many handshakes may run at once, and what each
/// connection's task reports.
struct Opening {
    permits: Arc<Semaphore>,
    open: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
    /// Per opened connection: handshake time (from the attempt) and when it opened.
    handshakes_done: Arc<std::sync::Mutex<Vec<(Duration, f64)>>>,
    arrivals: Arrivals,
    /// The first attempt.
    started: Instant,
}

impl Opening {
    fn new(args: &Args) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(args.concurrency.max(1))),
            open: Arc::new(AtomicUsize::new(0)),
            failed: Arc::new(AtomicUsize::new(0)),
            first_error: Arc::new(std::sync::Mutex::new(None)),
            handshakes_done: Arc::new(std::sync::Mutex::new(Vec::new())),
            arrivals: Arrivals::default(),
            started: Instant::now(),
        }
    }

    /// Starts `--count` connections, `--concurrency` handshakes at a time, each held by a task
    /// of its own until the server closes it; returns their users.
    async fn open_all(
        &self,
        args: &Args,
        issuer: Option<&TokenIssuer>,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<Vec<Uuid>> {
        let mut users = Vec::with_capacity(args.count);
        for i in 0..args.count {
            let permit = self.permits.clone().acquire_owned().await?;
            let user = Uuid::now_v7();
            users.push(user);
            let token = match issuer {
                Some(issuer) => Some(client::mint(issuer, user)?),
                None => None,
            };
            let source = client::source_address(i, args.sources);
            tokio::spawn(self.hold(args, source, token, permit));
            bar.inc(1);
            if (i + 1) % 100 == 0 {
                bar.set_message(format!(
                    "{} open, {} failed",
                    self.open.load(Ordering::Relaxed),
                    self.failed.load(Ordering::Relaxed)
                ));
            }
        }
        Ok(users)
    }

    /// One connection's task: the handshake (giving `permit` back when it is done), then
    /// reading until the server closes.
    fn hold(
        &self,
        args: &Args,
        source: std::net::IpAddr,
        token: Option<String>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (url, transport, started) = (args.url.clone(), args.transport, self.started);
        let (open, failed, first_error, done, arrivals) = (
            self.open.clone(),
            self.failed.clone(),
            self.first_error.clone(),
            self.handshakes_done.clone(),
            self.arrivals.clone(),
        );
        async move {
            let attempt = Instant::now();
            let connected = match transport {
                Transport::Ws => client::connect(&url, source, token.as_deref())
                    .await
                    .map(|socket| Held::Ws(Box::new(socket))),
                Transport::Sse => client::connect_sse(&url, source, token.as_deref())
                    .await
                    .map(Held::Sse),
            };
            drop(permit);
            match connected {
                Ok(held) => {
                    open.fetch_add(1, Ordering::Relaxed);
                    let opened_at = started.elapsed();
                    if let Ok(mut done) = done.lock() {
                        done.push((attempt.elapsed(), opened_at.as_secs_f64()));
                    }
                    held.read_until_closed(arrivals).await;
                    open.fetch_sub(1, Ordering::Relaxed);
                }
                Err(error) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .map(|mut slot| {
                            slot.get_or_insert_with(|| error.to_string());
                        })
                        .ok();
                }
            }
        }
    }
}

/// What the run measured, besides what [`Opening`] counted.
struct Measured {
    opened: usize,
    connect_seconds: f64,
    still_open: usize,
    /// The server's resident memory (KiB) before the first attempt and after the hold.
    rss: (Option<u64>, Option<u64>),
    per_connection_bytes: Option<u64>,
    round: Option<serde_json::Value>,
    error: Option<String>,
    cpu: serde_json::Value,
}

fn build_report(args: &Args, opening: &Opening, measured: Measured) -> Report {
    let Measured {
        opened, still_open, ..
    } = measured;
    let mut handshake = Samples::new();
    let mut opened_at = Vec::new();
    if let Ok(done) = opening.handshakes_done.lock() {
        for &(latency, at) in done.iter() {
            handshake.record(latency);
            opened_at.push(at);
        }
    }
    let per_second =
        stats::per_second(opened_at, measured.connect_seconds.ceil().max(1.0) as usize);
    let handshake_summary = handshake.summary();
    let json = json!({
        "scenario": "connections",
        "url": args.url,
        "transport": match args.transport { Transport::Ws => "ws", Transport::Sse => "sse" },
        "requested": args.count,
        "sources": args.sources,
        "opened": opened,
        "failed": opening.failed.load(Ordering::Relaxed),
        "firstError": measured.error,
        "connectSeconds": measured.connect_seconds,
        "heldSeconds": args.hold_secs,
        "openAfterHold": still_open,
        "serverPid": args.pid,
        "serverRssBeforeKiB": measured.rss.0,
        "serverRssAfterKiB": measured.rss.1,
        "serverBytesPerConnection": measured.per_connection_bytes,
        "handshakeMillis": handshake_summary,
        "openedPerSecond": per_second,
        "round": measured.round,
        "machine": measured.cpu,
    });
    let description = vec![
        format!(
            "{} {} connections to {} from {} source addresses, {} handshakes at a time",
            args.count,
            json["transport"].as_str().unwrap_or("?"),
            args.url,
            args.sources,
            args.concurrency
        ),
        format!(
            "opened {opened}, failed {}, open after {} s idle {still_open}; server {} bytes per connection; handshake {}",
            json["failed"],
            args.hold_secs,
            measured
                .per_connection_bytes
                .map_or_else(|| "?".to_owned(), |b| b.to_string()),
            report::short_summary(&handshake_summary)
        ),
        report::cpu_line(&json["machine"]),
    ];
    Report {
        name: "connections".into(),
        title: "connections: idle sockets held by one server".into(),
        description,
        charts: vec![
            Chart {
                title: "Handshake time by percentile (TCP connect + upgrade)".into(),
                x_label: "percentile".into(),
                y_label: "milliseconds".into(),
                x_axis: XAxis::Percentile,
                series: vec![Series::new("handshake", handshake.percentile_curve())],
            },
            Chart {
                title: "Connections opened per second".into(),
                x_label: "seconds since the first attempt".into(),
                y_label: "connections per second".into(),
                x_axis: XAxis::Linear,
                series: vec![Series::new("opened", stats::series_points(&per_second))],
            },
        ],
        json,
    }
}

/// One notification to every user (the ones whose connection failed simply never receive
/// theirs), then waits until every open connection has its one or 60 s have passed.
async fn broadcast_round(
    args: &Args,
    users: &[Uuid],
    arrivals: &Arrivals,
    open: usize,
) -> anyhow::Result<serde_json::Value> {
    if let Some(at) = args.round_at_unix {
        let wait = at.saturating_sub(chrono::Utc::now().timestamp()).max(0);
        tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or_default())).await;
    }
    let publisher = crate::fanout::NotificationPublisher::connect().await?;
    let started = Instant::now();
    let created = chrono::Utc::now();
    publisher
        .publish(users, args.batch, created, "round")
        .await?;
    let published_seconds = started.elapsed().as_secs_f64();
    let deadline = started + Duration::from_secs(60);
    let received = || {
        arrivals
            .lock()
            .map(|samples| samples.len())
            .unwrap_or_default()
    };
    while received() < open && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_seconds = started.elapsed().as_secs_f64();
    publisher.close().await;
    let mut samples = arrivals
        .lock()
        .map_err(|_| anyhow::anyhow!("arrivals poisoned"))?;
    Ok(json!({
        "expected": open,
        "received": samples.len(),
        "publishedSeconds": published_seconds,
        "allReceivedSeconds": all_seconds,
        "lagMillis": samples.summary(),
    }))
}
