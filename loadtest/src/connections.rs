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
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::client;

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

impl Held {
    /// Reads (answering WebSocket pings, consuming SSE heartbeats) until the server closes.
    async fn read_until_closed(self) {
        match self {
            Self::Ws(mut socket) => while let Some(Ok(_)) = socket.next().await {},
            Self::Sse(mut stream) => {
                use tokio::io::AsyncReadExt;
                let mut buffer = [0_u8; 512];
                while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
            }
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let issuer = if args.no_auth {
        None
    } else {
        Some(client::token_issuer()?)
    };
    let rss_before = args.pid.map(client::rss_kib).transpose()?;
    let open = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut handshakes = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let permit = permits.clone().acquire_owned().await?;
        let token = match &issuer {
            Some(issuer) => Some(client::mint(issuer, Uuid::now_v7())?),
            None => None,
        };
        let (url, task_open, task_failed, task_error) = (
            args.url.clone(),
            open.clone(),
            failed.clone(),
            first_error.clone(),
        );
        let source = client::source_address(i, args.sources);
        let transport = args.transport;
        handshakes.push(tokio::spawn(async move {
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
                    task_open.fetch_add(1, Ordering::Relaxed);
                    held.read_until_closed().await;
                    task_open.fetch_sub(1, Ordering::Relaxed);
                }
                Err(error) => {
                    task_failed.fetch_add(1, Ordering::Relaxed);
                    task_error
                        .lock()
                        .map(|mut slot| {
                            slot.get_or_insert_with(|| error.to_string());
                        })
                        .ok();
                }
            }
        }));
        if (i + 1) % 1000 == 0 {
            eprintln!(
                "[{:>6.1}s] {} attempted, {} open, {} failed",
                started.elapsed().as_secs_f64(),
                i + 1,
                open.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            );
        }
    }
    // Wait for the last handshakes.
    let _ = permits
        .acquire_many(u32::try_from(args.concurrency.max(1))?)
        .await?;
    let connect_seconds = started.elapsed().as_secs_f64();
    let opened = open.load(Ordering::Relaxed);
    eprintln!(
        "all attempted in {connect_seconds:.1}s: {opened} open; holding {}s",
        args.hold_secs
    );
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let rss_after = args.pid.map(client::rss_kib).transpose()?;
    let still_open = open.load(Ordering::Relaxed);
    let per_connection_bytes = match (rss_before, rss_after) {
        (Some(before), Some(after)) if still_open > 0 => {
            Some(after.saturating_sub(before) * 1024 / still_open as u64)
        }
        _ => None,
    };
    let error = first_error.lock().ok().and_then(|slot| slot.clone());
    Ok(json!({
        "scenario": "connections",
        "url": args.url,
        "transport": match args.transport { Transport::Ws => "ws", Transport::Sse => "sse" },
        "requested": args.count,
        "sources": args.sources,
        "opened": opened,
        "failed": failed.load(Ordering::Relaxed),
        "firstError": error,
        "connectSeconds": connect_seconds,
        "heldSeconds": args.hold_secs,
        "openAfterHold": still_open,
        "serverPid": args.pid,
        "serverRssBeforeKiB": rss_before,
        "serverRssAfterKiB": rss_after,
        "serverBytesPerConnection": per_connection_bytes,
    }))
}
