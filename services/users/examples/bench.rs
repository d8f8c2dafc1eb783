//! Load measurement of the users service: follow throughput and follower-page reads for a user
//! with 100,000 followers, against the real PostgreSQL and RabbitMQ.
//!
//! ```sh
//! cargo run --release -p instaclone-users --example bench -- \
//!     [--users 2000] [--follows 20000] [--concurrency 32] [--followers 100000] [--serve]
//! ```
//!
//! It starts the service in-process on an isolated `TestEnv` (its own database and exchange,
//! removed at the end), seeds users with SQL, then drives the HTTP API with a tokio load
//! generator in the same process (so client and server share the machine's cores). With
//! `--serve` it keeps serving afterwards and prints `wrk` commands (see `bench/follow.lua`) to
//! measure the same routes from outside; Ctrl-C ends it.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a measurement tool, not service code

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use instaclone_shared::{auth::InternalToken, testing::TestEnv, users_internal::UsersClient};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Options {
    users: usize,
    follows: usize,
    concurrency: usize,
    followers: usize,
    serve: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    Options {
        users: value("--users", 2000),
        follows: value("--follows", 20_000),
        concurrency: value("--concurrency", 32),
        followers: value("--followers", 100_000),
        serve: args.iter().any(|a| a == "--serve"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Sequential timed GETs of `url`; returns the sorted latencies.
async fn time_gets(http: &reqwest::Client, url: &str, token: &str, runs: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let response = http.get(url).bearer_auth(token).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        let _ = response.bytes().await.unwrap();
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}

#[tokio::main]
async fn main() {
    let options = options();
    let mut env = TestEnv::new();
    env.settings.postgres.max_connections = 10; // the production default
    let shutdown = CancellationToken::new();
    let app = instaclone_users::build(&env.settings, shutdown.clone())
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let server = tokio::spawn(app.run_until_stopped());
    let pool = env.postgres().await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .build()
        .unwrap();
    println!("users service at {base}, database test_{}_users", env.id);

    // --- Follow throughput -------------------------------------------------------------------
    let users: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO users (id, email, username, password_hash) \
         SELECT gen_random_uuid(), 'bench' || n || '@example.com', 'bench' || n, 'h' \
         FROM generate_series(1, $1) n RETURNING id",
    )
    .bind(i64::try_from(options.users).unwrap())
    .fetch_all(&pool)
    .await
    .unwrap();
    let tokens: Arc<Vec<String>> = Arc::new(users.iter().map(|u| env.access_token(*u)).collect());
    let users = Arc::new(users);
    // Pair i: follower i % U follows the user (i / U + 1) places after it: all distinct, never self.
    let pair = {
        let count = users.len();
        move |i: usize| (i % count, (i % count + i / count + 1) % count)
    };
    assert!(
        options.follows / options.users + 2 < options.users,
        "too many follows for that many users"
    );

    let run_follows = |range: std::ops::Range<usize>| {
        let next = Arc::new(AtomicUsize::new(range.start));
        let workers: Vec<_> = (0..options.concurrency)
            .map(|_| {
                let (http, base, next) = (http.clone(), base.clone(), next.clone());
                let (users, tokens, end) = (users.clone(), tokens.clone(), range.end);
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut failures = 0usize;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= end {
                            break;
                        }
                        let (follower, target) = pair(i);
                        let started = Instant::now();
                        let response = http
                            .post(format!("{base}/users/follow"))
                            .bearer_auth(&tokens[follower])
                            .json(&serde_json::json!({ "userIdToFollow": users[target] }))
                            .send()
                            .await
                            .unwrap();
                        if response.status() != reqwest::StatusCode::CREATED {
                            failures += 1;
                        }
                        let _ = response.bytes().await;
                        latencies.push(started.elapsed());
                    }
                    (latencies, failures)
                })
            })
            .collect();
        async move {
            let mut all = Vec::new();
            let mut failures = 0;
            for worker in workers {
                let (latencies, failed) = worker.await.unwrap();
                all.extend(latencies);
                failures += failed;
            }
            all.sort();
            (all, failures)
        }
    };
    let warmup = 1000.min(options.follows / 10);
    let _ = run_follows(0..warmup).await;
    let started = Instant::now();
    let (latencies, failures) = run_follows(warmup..warmup + options.follows).await;
    let elapsed = started.elapsed();
    println!();
    println!(
        "follow: {} requests, {} concurrent, {:.1} s, {:.0} req/s, failures {failures}",
        latencies.len(),
        options.concurrency,
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "follow latency: p50 {}  p95 {}  p99 {}  max {}",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.95)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0))
    );
    // Wait for the relay to drain the outbox, and time it.
    let drain_started = Instant::now();
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "outbox drained {} s after the last follow",
        format_args!("{:.2}", drain_started.elapsed().as_secs_f64())
    );

    // --- A user with many followers ----------------------------------------------------------
    let star: Uuid = sqlx::query_scalar(
        "INSERT INTO users (id, email, username, password_hash) \
         VALUES (gen_random_uuid(), 'star@example.com', 'star', 'h') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let seed_started = Instant::now();
    sqlx::query(
        "INSERT INTO users (id, email, username, password_hash) \
         SELECT gen_random_uuid(), 'fan' || n || '@example.com', 'fan' || n, 'h' \
         FROM generate_series(1, $1) n",
    )
    .bind(i64::try_from(options.followers).unwrap())
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO follows (id, follower_id, followed_id) \
         SELECT gen_random_uuid(), id, $1 FROM users WHERE username LIKE 'fan%'",
    )
    .bind(star)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE users SET followers_count = (SELECT count(*) FROM follows WHERE followed_id = $1) WHERE id = $1")
        .bind(star)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
    println!();
    println!(
        "seeded {} followers of one user in {:.1} s",
        options.followers,
        seed_started.elapsed().as_secs_f64()
    );
    let viewer = env.access_token(users[0]);

    let runs = 200;
    let first = time_gets(
        &http,
        &format!("{base}/users/{star}/followers?limit=100"),
        &viewer,
        runs,
    )
    .await;
    // A cursor deep in the list: the follower at position 90% from the newest.
    let deep_cursor: Uuid = sqlx::query_scalar(
        "SELECT follower_id FROM follows WHERE followed_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1",
    )
    .bind(star)
    .bind(i64::try_from(options.followers * 9 / 10).unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    let deep = time_gets(
        &http,
        &format!("{base}/users/{star}/followers?limit=100&cursor={deep_cursor}"),
        &viewer,
        runs,
    )
    .await;
    let profile = time_gets(&http, &format!("{base}/users/{star}"), &viewer, runs).await;
    for (name, latencies) in [
        ("followers page (100 profiles), first page", &first),
        ("followers page (100 profiles), at 90,000", &deep),
        ("profile with counts", &profile),
    ] {
        println!(
            "{name}: {runs} sequential requests, p50 {}  p95 {}  p99 {}",
            ms(percentile(latencies, 0.5)),
            ms(percentile(latencies, 0.95)),
            ms(percentile(latencies, 0.99))
        );
    }

    // The notification fan-out's read: every follower id, in pages of the maximum size.
    let client = UsersClient::new(
        &base,
        InternalToken::new(env.settings.internal.token.clone().unwrap()),
        Duration::from_secs(30),
    );
    let mut stream_times = Vec::new();
    let mut page_times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut cursor: Option<String> = None;
        let mut total = 0;
        loop {
            let page_started = Instant::now();
            let page = client
                .followers_page(
                    star,
                    cursor.as_deref(),
                    instaclone_shared::users_internal::MAX_ID_PAGE,
                )
                .await
                .unwrap();
            page_times.push(page_started.elapsed());
            total += page.ids.len();
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(total, options.followers);
        stream_times.push(started.elapsed());
    }
    stream_times.sort();
    page_times.sort();
    println!(
        "internal follower ids, all {} in pages of 5000: 5 runs, median {}  (per page p50 {}  p99 {})",
        options.followers,
        ms(percentile(&stream_times, 0.5)),
        ms(percentile(&page_times, 0.5)),
        ms(percentile(&page_times, 0.99))
    );

    if options.serve {
        // Fresh pairs for wrk: further offsets than the ones already followed.
        let path = std::env::temp_dir().join("instaclone-users-follow-pairs.csv");
        let offset = options.follows / options.users + 2;
        let lines: Vec<String> = (0..users.len() * 20)
            .map(|i| {
                let follower = i % users.len();
                let target = (follower + offset + i / users.len()) % users.len();
                format!("{},{}", tokens[follower], users[target])
            })
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        println!();
        println!("serving; measure from outside with, e.g.:");
        println!(
            "  wrk -t2 -c32 -d20s -H 'Authorization: Bearer {viewer}' '{base}/users/{star}/followers?limit=100'"
        );
        println!(
            "  FOLLOW_PAIRS={} wrk -t2 -c32 -d10s -s services/users/bench/follow.lua {base} -- 2",
            path.display()
        );
        println!("({} fresh follow pairs; Ctrl-C to stop)", lines.len());
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
    let _ = server.await;
    pool.close().await;
    drop(env);
}
