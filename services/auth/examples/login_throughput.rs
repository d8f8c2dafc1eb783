//! Login (and refresh) throughput of the auth service, measured over real HTTP.
//!
//! Starts the users service and the auth service in-process (release build, isolated
//! `TestEnv`: fresh PostgreSQL database, Redis prefix, keys), registers a few accounts, then
//! times one argon2id hash alone, then runs `--concurrency` client tasks that log in back to back for `--seconds`, and reports
//! requests/s and latency percentiles; then the same for refresh (rotation only, no argon2).
//! The login rate limit stays on (it runs on every login) with limits too high to trigger.
//!
//! ```sh
//! cargo run --release -p instaclone-auth --example login_throughput -- --concurrency 8 --seconds 15
//! ```
//!
//! The client shares the machine (and its cores) with both services, PostgreSQL and Redis, so
//! the figure is a lower bound for the service on a dedicated host.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use instaclone_auth::{
    AuthOptions,
    password::{Argon2Params, PasswordHasherPool},
    rate_limit::{Limit, LoginLimits},
};
use instaclone_shared::{config::Secret, testing::TestEnv};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ACCOUNTS: usize = 16;
const PASSWORD: &str = "correct horse battery";

struct Args {
    concurrency: usize,
    seconds: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        concurrency: 8,
        seconds: 15,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let value = raw
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--concurrency" => parsed.concurrency = value.parse()?,
            "--seconds" => parsed.seconds = value.parse()?,
            other => bail!("unknown flag {other} (use --concurrency N --seconds S)"),
        }
    }
    Ok(parsed)
}

struct Run {
    ok: usize,
    failed: usize,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Run {
    fn report(&mut self, what: &str, concurrency: usize) {
        self.latencies.sort();
        let pct = |p: f64| {
            let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
            self.latencies
                .get(index)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "{what:<8} concurrency {concurrency:>3}: {:>8.1} req/s  ({} ok, {} failed in {:.1} s)  \
             latency p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms",
            self.ok as f64 / self.elapsed.as_secs_f64(),
            self.ok,
            self.failed,
            self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.90),
            pct(0.99),
        );
    }
}

/// Runs `concurrency` tasks calling `request(task index)` until `duration` has passed.
async fn hammer<F, Fut>(concurrency: usize, duration: Duration, request: F) -> Run
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let request = request.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    if request(task).await {
                        ok += 1;
                        latencies.push(sent.elapsed());
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed, latencies)
            })
        })
        .collect();
    let mut run = Run {
        ok: 0,
        failed: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        if let Ok((ok, failed, latencies)) = task.await {
            run.ok += ok;
            run.failed += failed;
            run.latencies.extend(latencies);
        }
    }
    run.elapsed = started.elapsed();
    run
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let mut env = TestEnv::new();
    let shutdown = CancellationToken::new();
    let users = instaclone_users::build(&env.settings, shutdown.clone()).await?;
    env.settings.services.users = format!("http://127.0.0.1:{}", users.port());
    tokio::spawn(users.run_until_stopped());

    let options = AuthOptions {
        login_limits: LoginLimits {
            per_account: Limit {
                max_failures: 1_000_000,
                window: Duration::from_secs(60),
            },
            per_address: Limit {
                max_failures: 1_000_000,
                window: Duration::from_secs(60),
            },
        },
        ..AuthOptions::default()
    };
    let params = options.argon2;
    let hashes = options.max_concurrent_hashes;
    let auth =
        instaclone_auth::build_with_options(&env.settings, options, shutdown.clone()).await?;
    let base = format!("http://127.0.0.1:{}", auth.port());
    tokio::spawn(auth.run_until_stopped());
    let Argon2Params {
        memory_kib,
        iterations,
        parallelism,
    } = params;
    println!(
        "argon2id m={memory_kib} KiB t={iterations} p={parallelism}; {hashes} concurrent hashes; \
         {} CPUs",
        std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get)
    );

    // The cost of one hash on an otherwise idle pool: the ceiling is CPUs / this.
    let pool = PasswordHasherPool::new(params, 1).await?;
    let samples = 10;
    let started = Instant::now();
    for _ in 0..samples {
        pool.hash(Secret::new(PASSWORD.to_owned())).await?;
    }
    println!(
        "one argon2id hash: {:.1} ms (mean of {samples}, sequential)",
        started.elapsed().as_secs_f64() * 1000.0 / f64::from(samples)
    );

    let http = reqwest::Client::new();
    let mut refresh_tokens = Vec::new();
    for i in 0..ACCOUNTS {
        let reply: Value = http
            .post(format!("{base}/auth/register"))
            .json(&json!({ "email": format!("bench{i}@example.com"), "password": PASSWORD }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        refresh_tokens.push(
            reply["data"]["refreshToken"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }

    let duration = Duration::from_secs(args.seconds);
    let login = {
        let (http, base) = (http.clone(), base.clone());
        move |task: usize| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let body = json!({
                    "email": format!("bench{}@example.com", task % ACCOUNTS),
                    "password": PASSWORD,
                });
                matches!(
                    http.post(format!("{base}/auth/login")).json(&body).send().await,
                    Ok(response) if response.status().is_success()
                )
            }
        }
    };
    hammer(args.concurrency, duration, login)
        .await
        .report("login", args.concurrency);

    // Refresh: each task owns one session and keeps rotating its token.
    let sessions: Vec<std::sync::Arc<tokio::sync::Mutex<String>>> = (0..args.concurrency)
        .map(|task| {
            std::sync::Arc::new(tokio::sync::Mutex::new(
                refresh_tokens[task % ACCOUNTS].clone(),
            ))
        })
        .collect();
    // Sessions shared between tasks would be reuse; give every task beyond the accounts its own.
    for (task, session) in sessions.iter().enumerate().skip(ACCOUNTS) {
        let reply: Value = http
            .post(format!("{base}/auth/login"))
            .json(&json!({ "email": format!("bench{}@example.com", task % ACCOUNTS), "password": PASSWORD }))
            .send()
            .await?
            .json()
            .await?;
        *session.lock().await = reply["data"]["refreshToken"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    let refresh = {
        let (http, base) = (http.clone(), base.clone());
        move |task: usize| {
            let (http, base, session) = (http.clone(), base.clone(), sessions[task].clone());
            async move {
                let mut token = session.lock().await;
                let Ok(response) = http
                    .post(format!("{base}/auth/refresh"))
                    .bearer_auth(token.as_str())
                    .send()
                    .await
                else {
                    return false;
                };
                let Ok(reply) = response.json::<Value>().await else {
                    return false;
                };
                match reply["data"]["refreshToken"].as_str() {
                    Some(next) => {
                        *token = next.to_owned();
                        true
                    }
                    None => false,
                }
            }
        }
    };
    hammer(args.concurrency, duration, refresh)
        .await
        .report("refresh", args.concurrency);

    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}
