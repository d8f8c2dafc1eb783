//! What the hub's durable append costs Redis, on a single server or a Redis Cluster: appends
//! `--recipients` notifications (one per user, as a fan-out does) through [`Store::append`] in
//! consumer-sized batches, and reports appends per second and the Redis CPU per append (the
//! `used_cpu_sys` + `used_cpu_user` of every master, before and after).
//!
//! ```sh
//! cargo run --release -p instaclone-realtime-hub --example append_bench -- 100000 1000
//! REDIS_CLUSTER=true REDIS_URL=redis://127.0.0.1:6391 \
//!   cargo run --release -p instaclone-realtime-hub --example append_bench -- 100000 1000
//! ```
//!
//! Arguments: recipients (default 100,000), recipients per batch (default 1,000). Keys go under
//! a fresh `bench:<id>:` prefix and are deleted afterwards.

#![allow(clippy::print_stdout)] // A benchmark reports on stdout.

use std::time::{Duration, Instant};

use instaclone_realtime_hub::store::{Append, Store};
use instaclone_shared::{config::Settings, db, redis_conn::RedisConnection, testing::delete_keys};
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let recipients: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let batch: usize = args.next().map_or(Ok(1_000), |a| a.parse())?;
    let mut settings = Settings::from_env()?;
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    settings.redis.key_prefix = format!("bench:{run}:");
    let redis = db::connect_redis(&settings.redis, Duration::from_secs(5)).await?;
    let store = Store::new(redis.clone(), settings.redis.clone(), 1000);

    let users: Vec<Uuid> = (0..recipients).map(|_| Uuid::now_v7()).collect();
    let ids: Vec<String> = (0..recipients).map(|i| format!("{i:024x}")).collect();
    let json: Vec<String> = users
        .iter()
        .zip(&ids)
        .map(|(user, id)| {
            format!(
                r#"{{"_id":"{id}","userId":"{user}","type":"post","data":{{"postId":"65a000000000000000000001","caption":"a caption of a typical length for a post"}},"read":false,"createdAt":"2026-12-03T12:00:00.000Z"}}"#
            )
        })
        .collect();
    let cpu_before = redis_cpu(&redis).await?;
    let started = Instant::now();
    for start in (0..recipients).step_by(batch.max(1)) {
        let end = (start + batch).min(recipients);
        let appends: Vec<Append<'_>> = (start..end)
            .map(|i| Append {
                user: users[i],
                notification_id: &ids[i],
                created_at_millis: 1_764_763_200_000,
                notification_json: &json[i],
            })
            .collect();
        let appended = store.append(&appends).await?;
        assert_eq!(appended.new, appends.len(), "every append is new");
    }
    let elapsed = started.elapsed();
    let cpu = redis_cpu(&redis).await? - cpu_before;
    println!(
        "{} Redis, {recipients} appends in batches of {batch}: {:.0} appends/s, Redis CPU {:.1} µs per append",
        if redis.is_cluster() {
            "cluster"
        } else {
            "single"
        },
        recipients as f64 / elapsed.as_secs_f64(),
        cpu * 1e6 / recipients as f64,
    );
    for master in redis.masters().await? {
        delete_keys(master, &format!("{}*", settings.redis.key_prefix)).await;
    }
    Ok(())
}

/// CPU seconds (system + user) used so far by every master.
async fn redis_cpu(redis: &RedisConnection) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for master in redis.masters().await? {
        let mut node = redis::Client::open(master)?
            .get_multiplexed_async_connection()
            .await?;
        let info: String = redis::cmd("INFO").arg("CPU").query_async(&mut node).await?;
        total += info
            .lines()
            .filter_map(|line| line.split_once(':'))
            .filter(|(name, _)| *name == "used_cpu_sys" || *name == "used_cpu_user")
            .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(total)
}
