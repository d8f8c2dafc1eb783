//! Outage drills: the whole platform (the `instaclone` binary) with one dependency cut off for a
//! while, writes made during the cut, and a recipient whose clients do what the protocol asks
//! (resume from the last position on every reconnect). Each drill asserts that every
//! notification the writes caused is in the recipient's history exactly once and reached each of
//! the recipient's clients exactly once, including a client that had received nothing before the
//! cut and reconnects across it.
//!
//! The servers themselves keep running: each outage is a [`TcpProxy`] in front of one of them
//! (or in front of the users service) that is cut and later restored. Writes refused during a
//! cut must be a 503 with `Retry-After` (never a 500) and must leave nothing behind: the drill's
//! writer repeats them after the cut, and a half-done first attempt would show up as a duplicate
//! post or a 409 on the repeated follow.
//!
//! The outage drills run concurrently (each on its own isolated resources) so the suite waits for
//! the longest one, not their sum.

#![allow(clippy::unwrap_used)] // tests fail by panicking

mod common;

use std::{
    collections::HashSet,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use common::platform::{
    LiveClient, Platform, Ports, User, follow, history, post, register, unique_ids, url, wait_until,
};
use instaclone_shared::testing::{TcpProxy, TestClient, TestEnv, TestRequest};
use serde_json::json;

/// How long, after an outage ends, everything it held up may take to arrive.
const CATCH_UP: Duration = Duration::from_secs(120);

/// A recipient with one notification already delivered, and the people who will cause more.
struct Scene {
    name: &'static str,
    platform: Platform,
    /// The gateway, with a timeout.
    gateway: TestClient,
    author: User,
    recipient: User,
    /// Connected before anything happened; holds on (reconnecting) throughout.
    live: LiveClient,
    /// The notification the recipient had before the drill.
    before: String,
    /// Writes answered 503 (and repeated).
    refused: AtomicUsize,
}

impl Scene {
    /// The platform up with `extra_env`; the recipient follows the author (so the author's posts
    /// notify them), a third user follows the recipient (one notification before the drill).
    async fn set_up(
        name: &'static str,
        env: &TestEnv,
        ports: Ports,
        extra_env: &[(&str, String)],
    ) -> Self {
        let platform = Platform::start_on(env, ports, extra_env, 0).await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let gateway = TestClient::with_http(platform.gateway.base_url.clone(), client);
        let tag: String = env.id.chars().filter(char::is_ascii_alphanumeric).collect();
        let author = register(&gateway, &format!("author{tag}")).await;
        let recipient = register(&gateway, &format!("recipient{tag}")).await;
        let earlier = register(&gateway, &format!("earlier{tag}")).await;
        let live = LiveClient::start(&platform.hubs, &recipient, None).await;
        let scene = Self {
            name,
            platform,
            gateway,
            author,
            recipient,
            live,
            before: String::new(),
            refused: AtomicUsize::new(0),
        };
        scene.follow(&scene.recipient, &scene.author.id).await;
        scene.follow(&earlier, &scene.recipient.id).await;
        wait_until(
            &format!("{name}: the notification before the drill"),
            Duration::from_secs(30),
            || async { !scene.live.notifications().is_empty() },
        )
        .await;
        let before = scene.live.notifications()[0]["_id"]
            .as_str()
            .unwrap()
            .to_owned();
        Self { before, ..scene }
    }

    /// `follower` follows `followee`, repeating on 503 until accepted.
    async fn follow(&self, follower: &User, followee: &str) {
        self.write("POST /users/follow", || {
            self.gateway
                .post("/users/follow")
                .bearer(&follower.token)
                .json(&json!({ "userIdToFollow": followee }))
        })
        .await;
    }

    async fn post(&self, caption: &str) {
        self.write("POST /posts", || {
            self.gateway
                .post("/posts")
                .bearer(&self.author.token)
                .json(&json!({ "caption": caption, "mediaUrl": "https://cdn.example.com/a.jpg" }))
        })
        .await;
    }

    /// Sends the request until it succeeds. While a dependency is cut the only other answer
    /// allowed is a 503 in the error envelope with `Retry-After`, which is honoured (as a
    /// client would) and the request repeated.
    async fn write(&self, what: &str, request: impl Fn() -> TestRequest) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(400);
        loop {
            let response = request()
                .try_send()
                .await
                .unwrap_or_else(|e| panic!("{}: {what}: no answer: {e}", self.name));
            let status = response.status;
            if status.is_success() {
                return;
            }
            self.refused.fetch_add(1, Ordering::Relaxed);
            let retry_after = response.header("retry-after");
            let body = &response.body;
            assert_eq!(
                status, 503,
                "{}: {what} answered {status}: {body}",
                self.name
            );
            assert_eq!(
                body["statusCode"], 503,
                "{}: {what}: envelope {body}",
                self.name
            );
            let wait: u64 = retry_after
                .unwrap_or_else(|| panic!("{}: {what}: 503 without Retry-After", self.name))
                .parse()
                .unwrap();
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: {what} never accepted",
                self.name
            );
            tokio::time::sleep(Duration::from_secs(wait.min(2))).await;
        }
    }

    /// A second device of the recipient that connects now (having received nothing on this
    /// connection) and drops; returns the position it will resume from.
    async fn fresh_client_position(&self) -> String {
        let fresh = LiveClient::start(&self.platform.hubs, &self.recipient, None).await;
        assert!(fresh.notifications().is_empty());
        fresh
            .stop()
            .expect("the connected frame carries a position")
    }

    /// The three notifications every drill causes for the recipient: a follow and two posts.
    async fn cause_three(&self) {
        tokio::join!(self.follow(&self.author, &self.recipient.id), async {
            self.post("first during the drill").await;
            self.post("second during the drill").await;
        });
    }

    /// History holds the notification from before plus the three caused, once each; `live` got
    /// all four once each and `resumed` (the fresh client, back after the outage) the three.
    async fn assert_each_exactly_once(&self, resumed: &LiveClient) {
        let name = self.name;
        let gateway = &self.gateway;
        wait_until(
            &format!("{name}: 4 notifications in history and on the sockets"),
            CATCH_UP,
            || async {
                history(gateway, &self.recipient).await.len() >= 4
                    && self.live.notifications().len() >= 4
                    && resumed.notifications().len() >= 3
            },
        )
        .await;
        // Anything sent twice would arrive close behind the first copy.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let stored = history(gateway, &self.recipient).await;
        let stored_ids = unique_ids(&stored, &format!("{name}: history"));
        assert_eq!(stored.len(), 4, "{name}: history {stored:#?}");
        let kinds: Vec<&str> = stored.iter().map(|n| n["type"].as_str().unwrap()).collect();
        let follows = kinds.iter().filter(|k| **k == "follow").count();
        assert_eq!(follows, 2, "{name}: kinds {kinds:?}");
        let posts: HashSet<&str> = stored
            .iter()
            .filter(|n| n["type"] == "post_created")
            .map(|n| n["data"]["postId"].as_str().unwrap())
            .collect();
        assert_eq!(posts.len(), 2, "{name}: two distinct posts notified");

        let live = unique_ids(&self.live.notifications(), &format!("{name}: live socket"));
        assert_eq!(
            live, stored_ids,
            "{name}: the live client got exactly the history"
        );
        assert_eq!(
            self.live.resyncs(),
            0,
            "{name}: the live client was told to resync"
        );
        let mut caused = stored_ids.clone();
        caused.remove(&self.before);
        let fresh = unique_ids(&resumed.notifications(), &format!("{name}: resumed socket"));
        assert_eq!(
            fresh, caused,
            "{name}: the resumed client got exactly what was caused"
        );
        assert_eq!(
            resumed.resyncs(),
            0,
            "{name}: the resumed client was told to resync"
        );
    }
}

/// One outage: cut `proxy` for `outage`, cause three notifications during it, restore, check.
async fn outage_drill(
    name: &'static str,
    env: TestEnv,
    ports: Ports,
    extra_env: Vec<(&'static str, String)>,
    proxy: TcpProxy,
    outage: Duration,
) {
    let scene = Scene::set_up(name, &env, ports, &extra_env).await;
    let resume_from = scene.fresh_client_position().await;
    proxy.cut();
    let cut_at = tokio::time::Instant::now();
    let restore = async {
        tokio::time::sleep_until(cut_at + outage).await;
        proxy.restore().await;
    };
    // The writes start during the cut and, where refused, are repeated until after it.
    tokio::join!(scene.cause_three(), restore);
    let restored_at = tokio::time::Instant::now();
    let resumed =
        LiveClient::start(&scene.platform.hubs, &scene.recipient, Some(resume_from)).await;
    scene.assert_each_exactly_once(&resumed).await;
    eprintln!(
        "{name} drill: {} writes refused with 503; the live client connected {} times; all delivered {:?} after the outage",
        scene.refused.load(Ordering::Relaxed),
        scene.live.connections(),
        restored_at.elapsed().saturating_sub(Duration::from_secs(3)),
    );
}

async fn redis_cut() {
    let mut env = TestEnv::new();
    env.use_single_redis();
    let (proxy, url) = TcpProxy::for_redis(&env.settings).await;
    let extra = vec![
        ("REDIS_URL", url.expose().clone()),
        ("REDIS_CLUSTER", "false".to_owned()),
    ];
    outage_drill("Redis", env, Ports::free(), extra, proxy, secs(90)).await;
}

async fn mongo_cut() {
    let env = TestEnv::new();
    let (proxy, url) = TcpProxy::for_mongo(&env.settings).await;
    let extra = vec![("MONGODB_URL", url.expose().clone())];
    outage_drill("MongoDB", env, Ports::free(), extra, proxy, secs(120)).await;
}

async fn postgres_cut() {
    let env = TestEnv::new();
    let (proxy, url) = TcpProxy::for_postgres(&env.settings).await;
    let extra = vec![("USERS_DATABASE_URL", url.expose().clone())];
    outage_drill("PostgreSQL", env, Ports::free(), extra, proxy, secs(90)).await;
}

async fn rabbitmq_cut() {
    let env = TestEnv::new();
    let (proxy, url) = TcpProxy::for_rabbitmq(&env.settings).await;
    let extra = vec![("AMQP_URL", url.expose().clone())];
    outage_drill("RabbitMQ", env, Ports::free(), extra, proxy, secs(120)).await;
}

/// The users service out of reach of the parts that call it (auth, posts' feed and fan-out,
/// notifications' follower lookups); the gateway still serves its routes in-process.
async fn users_service_cut() {
    let env = TestEnv::new();
    let ports = Ports::free();
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", ports.users)).await;
    let extra = vec![("USERS_URL", url(proxy.port()))];
    outage_drill("users service", env, ports, extra, proxy, secs(240)).await;
}

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outages_lose_and_duplicate_nothing() {
    // `DRILLS=redis,users` runs only the drills whose names contain one of those words.
    let only = std::env::var("DRILLS").unwrap_or_default().to_lowercase();
    let chosen = |name: &str| {
        only.is_empty()
            || only
                .split(',')
                .any(|word| name.to_lowercase().contains(word.trim()))
    };
    let drills = [
        ("Redis", chosen("Redis").then(|| tokio::spawn(redis_cut()))),
        (
            "MongoDB",
            chosen("MongoDB").then(|| tokio::spawn(mongo_cut())),
        ),
        (
            "PostgreSQL",
            chosen("PostgreSQL").then(|| tokio::spawn(postgres_cut())),
        ),
        (
            "RabbitMQ",
            chosen("RabbitMQ").then(|| tokio::spawn(rabbitmq_cut())),
        ),
        (
            "users service",
            chosen("users service").then(|| tokio::spawn(users_service_cut())),
        ),
    ];
    let mut failures = Vec::new();
    for (name, drill) in drills {
        let Some(drill) = drill else { continue };
        if let Err(error) = drill.await {
            failures.push(format!("{name} drill: {}", panic_message(error)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".to_owned()),
        Err(error) => error.to_string(),
    }
}

/// kill -9 of the whole platform while a post fans out to 20 followers: after a restart every
/// follower has each post once in history and once on its socket.
#[tokio::test]
async fn kill_minus_nine_during_a_fan_out_loses_and_duplicates_nothing() {
    let env = TestEnv::new();
    let mut platform = Platform::start(&env, &[], 0).await;
    let gateway = platform.gateway.clone();
    let author = register(&gateway, &format!("star{}", env.id)).await;
    let mut followers = Vec::new();
    for i in 0..20 {
        let follower = register(&gateway, &format!("fan{i}x{}", env.id)).await;
        follow(&gateway, &follower, &author.id).await;
        let live = LiveClient::start(&platform.hubs, &follower, None).await;
        followers.push((follower, live));
    }
    for caption in ["one", "two", "three"] {
        post(&gateway, &author, caption).await;
    }
    wait_until("the fan-out to begin", Duration::from_secs(30), || async {
        followers
            .iter()
            .any(|(_, live)| !live.notifications().is_empty())
    })
    .await;
    platform.kill(0);
    platform.restart_all_in_one(&env).await;

    for (follower, live) in &followers {
        wait_until("3 posts for every follower", CATCH_UP, || async {
            history(&gateway, follower).await.len() >= 3 && live.notifications().len() >= 3
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (follower, live) in &followers {
        let stored = history(&gateway, follower).await;
        assert_eq!(stored.len(), 3, "history of {}: {stored:#?}", follower.id);
        let stored_ids = unique_ids(&stored, "history");
        assert_eq!(unique_ids(&live.notifications(), "socket"), stored_ids);
        assert_eq!(live.resyncs(), 0);
    }
}

/// One of two hub replicas is killed while its clients' notifications are being made: they
/// reconnect to the other replica with their position and miss nothing, see nothing twice.
#[tokio::test]
async fn a_killed_hub_replica_s_clients_resume_on_the_other() {
    let env = TestEnv::new();
    let mut platform = Platform::start(&env, &[], 1).await;
    let gateway = platform.gateway.clone();
    let author = register(&gateway, &format!("poster{}", env.id)).await;
    // Clients prefer the second replica, and fall back to the first.
    let hubs = [platform.hubs[1].clone(), platform.hubs[0].clone()];
    let mut readers = Vec::new();
    for i in 0..5 {
        let reader = register(&gateway, &format!("reader{i}x{}", env.id)).await;
        follow(&gateway, &reader, &author.id).await;
        let live = LiveClient::start(&hubs, &reader, None).await;
        readers.push((reader, live));
    }
    post(&gateway, &author, "before the kill").await;
    wait_until(
        "the first post on every socket",
        Duration::from_secs(30),
        || async {
            readers
                .iter()
                .all(|(_, live)| !live.notifications().is_empty())
        },
    )
    .await;
    platform.kill(1);
    // Made while the clients find the other replica.
    post(&gateway, &author, "during the reconnect").await;
    post(&gateway, &author, "after the kill").await;

    for (reader, live) in &readers {
        wait_until("3 posts for every reader", CATCH_UP, || async {
            history(&gateway, reader).await.len() >= 3 && live.notifications().len() >= 3
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (reader, live) in &readers {
        let stored_ids = unique_ids(&history(&gateway, reader).await, "history");
        assert_eq!(stored_ids.len(), 3);
        assert_eq!(unique_ids(&live.notifications(), "socket"), stored_ids);
        assert!(
            live.connections() >= 2,
            "the client moved to the other replica"
        );
        assert_eq!(live.resyncs(), 0);
    }
}
