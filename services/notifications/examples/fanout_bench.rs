//! Measures a post's fan-out: notifications stored per second and the time from `post.created`
//! published to the last `notification.created` received, for authors with N followers.
//!
//! ```sh
//! CARGO_TARGET_DIR=... cargo run --release -p instaclone-notifications --example fanout_bench -- 1000 100000
//! ```
//!
//! Runs the real users service and notifications service in this process on an isolated
//! `TestEnv` (fresh PostgreSQL and MongoDB databases, own exchange and queues, all removed at
//! the end) against the backing servers the environment points at. Followers are seeded with
//! SQL straight into the users database. While the big fan-out runs, one `user.followed` is
//! published to show that other events are not held up behind it.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a benchmark's report is its output

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use instaclone_notifications::events::queue_spec;
use instaclone_shared::{
    amqp::{EventPublisher, declare_work_queue},
    auth::InternalToken,
    events::{EventEnvelope, NotificationCreated, PostCreated, UserFollowed, event_type},
    testing::TestEnv,
    users_internal::{NewUser, UsersClient},
};
use lapin::{options::BasicConsumeOptions, types::FieldTable};
use mongodb::bson::{Document, doc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let sizes: Vec<i64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("follower counts are integers"))
        .collect();
    let sizes = if sizes.is_empty() { vec![1000] } else { sizes };
    for followers in sizes {
        run(followers).await;
    }
}

async fn run(followers: i64) {
    let mut env = TestEnv::new();
    let shutdown = CancellationToken::new();
    let users_app = instaclone_users::build(&env.settings, shutdown.clone())
        .await
        .unwrap();
    let users_url = format!("http://127.0.0.1:{}", users_app.port());
    tokio::spawn(users_app.run_until_stopped());
    env.settings.services.users = users_url.clone();
    let (_connection, channel) = env.amqp_channel().await;
    declare_work_queue(
        &channel,
        &env.settings.amqp,
        &queue_spec(&env.settings.amqp),
    )
    .await
    .unwrap();
    let notifications = instaclone_notifications::build(&env.settings, shutdown.clone())
        .await
        .unwrap();
    tokio::spawn(notifications.run_until_stopped());

    let users = UsersClient::new(
        &users_url,
        InternalToken::new(env.settings.internal.token.clone().unwrap()),
        Duration::from_secs(10),
    );
    let author = users
        .create_user(&NewUser {
            email: format!("author{}@example.com", env.id),
            username: Some(format!("author{}", env.id)),
            password_hash: "x".to_owned(),
        })
        .await
        .unwrap();
    let seeding = Instant::now();
    seed_followers(&env, author.id, followers).await;
    println!(
        "\n== {followers} followers (seeded in {:.1?})",
        seeding.elapsed()
    );

    // Everything the hub would receive.
    let queue = env
        .observer_queue(&channel, &[event_type::NOTIFICATION_CREATED])
        .await;
    let mut created = channel
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    let publisher = EventPublisher::new(env.settings.amqp.clone());
    publisher
        .publish(
            &EventEnvelope::new(
                "bench",
                &UserFollowed {
                    follower_id: Uuid::now_v7(),
                    followed_id: Uuid::now_v7(),
                    follower_username: "warmup".to_owned(),
                },
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let _warmup = created.next().await;

    let post = EventEnvelope::new(
        "bench",
        &PostCreated {
            post_id: "65f0c0ffee0000000000abcd".to_owned(),
            author_id: author.id,
            caption: Some("benchmark".to_owned()),
            media_url: "https://cdn.example.com/bench.jpg".to_owned(),
            created_at: chrono::Utc::now(),
        },
    )
    .unwrap();
    let bystander_recipient = Uuid::now_v7();
    let bystander = EventEnvelope::new(
        "bench",
        &UserFollowed {
            follower_id: Uuid::now_v7(),
            followed_id: bystander_recipient,
            follower_username: "bystander".to_owned(),
        },
    )
    .unwrap();

    let started = Instant::now();
    publisher.publish(&post).await.unwrap();
    let published_in = started.elapsed();

    let mut recipients: HashSet<Uuid> = HashSet::with_capacity(usize::try_from(followers).unwrap());
    let mut emitted = 0usize;
    let mut first_at = None;
    let mut bystander_sent_at = None;
    let mut bystander_latency = None;
    let target = usize::try_from(followers).unwrap();
    while recipients.len() < target || bystander_latency.is_none() {
        let delivery = tokio::time::timeout(Duration::from_secs(120), created.next())
            .await
            .expect("no notification.created for 2 minutes")
            .unwrap()
            .unwrap();
        let notifications = EventEnvelope::decode_batch(&delivery.data)
            .unwrap()
            .into_iter()
            .flat_map(|event| event.data::<NotificationCreated>().unwrap().notifications);
        for notification in notifications {
            if notification.user_id == bystander_recipient {
                bystander_latency = bystander_sent_at.map(|at: Instant| at.elapsed());
                continue;
            }
            first_at.get_or_insert_with(|| started.elapsed());
            emitted += 1;
            recipients.insert(notification.user_id);
        }
        // Once the fan-out is under way, another event arrives.
        if bystander_sent_at.is_none() && recipients.len() >= target / 10 {
            bystander_sent_at = Some(Instant::now());
            publisher.publish(&bystander).await.unwrap();
        }
    }
    let last_emitted = started.elapsed();

    let database = env.mongo(&env.settings.mongo.notifications_database).await;
    let stored = database
        .collection::<Document>("notifications")
        .count_documents(doc! { "eventId": post.id.to_string() })
        .await
        .unwrap();
    assert_eq!(
        stored,
        u64::try_from(followers).unwrap(),
        "every follower stored once"
    );
    let seconds = last_emitted.as_secs_f64();
    println!("post.created published (confirmed) in {published_in:.1?}");
    println!(
        "first notification.created after   {:.1?}",
        first_at.unwrap_or_default()
    );
    println!("last notification.created after    {last_emitted:.2?}");
    println!(
        "notifications stored               {stored} ({emitted} emitted, {} distinct recipients)",
        recipients.len()
    );
    println!(
        "stored and emitted per second      {:.0}",
        stored as f64 / seconds
    );
    println!(
        "a follow published mid-fan-out was emitted after {:.1?}",
        bystander_latency.unwrap_or_default()
    );
    println!("peak RSS of this process           {}", peak_rss());
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn seed_followers(env: &TestEnv, author: Uuid, count: i64) {
    let pool = env.postgres().await;
    sqlx::query(
        "WITH seeded AS ( \
             INSERT INTO users (id, email, username, password_hash) \
             SELECT gen_random_uuid(), 'seed' || i || '@example.com', 'seed_' || i, 'x' \
             FROM generate_series(1, $1) AS i RETURNING id) \
         INSERT INTO follows (id, follower_id, followed_id) \
         SELECT gen_random_uuid(), id, $2 FROM seeded",
    )
    .bind(count)
    .bind(author)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
