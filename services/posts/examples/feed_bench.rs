//! Measures post creation and home-feed reads for a reader who follows many accounts.
//!
//! ```sh
//! cargo run --release -p instaclone-posts --example feed_bench
//! ```
//!
//! Runs the real posts and users services in-process on scratch databases (a `TestEnv`: its own
//! MongoDB database, PostgreSQL database and RabbitMQ exchange, all dropped at the end), then:
//!
//! 1. registers a reader and `BENCH_FOLLOWED` (1,000) authors and makes the reader follow them
//!    all through the users service's public API;
//! 2. seeds posts directly into the posts collection (`insertMany` of 1,000) until
//!    `BENCH_POSTS` (1,000,000) posts or `BENCH_SEED_SECS` (180 s), whichever comes first; the
//!    authors are `BENCH_AUTHORS` (10,000) accounts of which the followed ones are a part, and
//!    creation times are spread over a year;
//! 3. reads the reader's feed once: no home timeline exists yet (the posts were seeded, not
//!    created), so this read rebuilds it from the newest posts of each followed account;
//! 4. measures post-to-feed latency: one post at a time by a followed account, timed until it
//!    is the first item of the reader's feed (`BENCH_VISIBILITY_SAMPLES`, 20);
//! 5. creates posts through `POST /posts` for `BENCH_PHASE_SECS` with `BENCH_CONCURRENCY`
//!    clients, as the followed accounts (outbox write included; the relay publishes and the
//!    timeline consumer fans each post out meanwhile);
//! 6. reads the reader's home feed (`GET /posts/feed?limit=20`, first page and sixth page, both
//!    served by the timeline) for `BENCH_PHASE_SECS` with `BENCH_CONCURRENCY` clients;
//! 7. reads a page below the timeline's floor (served by the fan-out-on-read MongoDB query)
//!    `BENCH_DEEP_READS` (3) times, one at a time, and times the follow-graph call alone.
//!
//! It prints the store size actually reached next to every figure: nothing is extrapolated.
#![allow(clippy::print_stdout)] // A benchmark reports on stdout.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use instaclone_posts::{
    store::{POSTS_COLLECTION, PostStore},
    timeline::{Filter, HomeTimelines, TimelineWindow},
};
use instaclone_shared::{
    auth::InternalToken,
    follow_cache::FollowCache,
    testing::TestEnv,
    users_internal::{MAX_ID_PAGE, NewUser, UsersClient},
};
use mongodb::bson::{doc, oid::ObjectId};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn setting(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(value) => value.parse().with_context(|| format!("{name}={value}")),
        Err(_) => Ok(default),
    }
}

/// Latency summary of one phase.
struct Summary {
    operations: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Summary {
    /// One-at-a-time measurements: `elapsed` is their sum.
    fn of(mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        Self {
            operations: latencies.len(),
            elapsed: latencies.iter().sum(),
            latencies,
        }
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((self.latencies.len() as f64) * p).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn report(&self, what: &str) {
        let per_second = self.operations as f64 / self.elapsed.as_secs_f64();
        println!(
            "{what}: {} in {:.1} s = {per_second:.1}/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.operations,
            self.elapsed.as_secs_f64(),
            ms(self.percentile(0.50)),
            ms(self.percentile(0.99)),
            ms(self.latencies.last().copied().unwrap_or_default()),
        );
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Runs `operation` from `concurrency` tasks until `duration` has passed.
async fn load<F, Fut>(
    concurrency: usize,
    duration: Duration,
    operation: F,
) -> anyhow::Result<Summary>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let operation = Arc::new(operation);
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let operation = operation.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while Instant::now() < deadline {
                let began = Instant::now();
                operation(worker * 1_000_000 + n).await?;
                latencies.push(began.elapsed());
                n += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Summary {
        operations: latencies.len(),
        elapsed,
        latencies,
    })
}

/// A random ObjectId whose timestamp lies within the past year.
fn random_past_object_id(now_secs: u32) -> ObjectId {
    let random = *Uuid::new_v4().as_bytes();
    let back = u32::from_be_bytes([random[0], random[1], random[2], random[3]]) % (365 * 86_400);
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&(now_secs - back).to_be_bytes());
    bytes[4..].copy_from_slice(&random[4..12]);
    ObjectId::from_bytes(bytes)
}

/// The benchmark's knobs, from the environment (see the module docs).
struct Config {
    target_posts: u64,
    seed_budget: Duration,
    followed_count: usize,
    author_count: usize,
    phase: Duration,
    concurrency: usize,
    visibility_samples: u64,
    deep_reads: u64,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let target_posts = setting("BENCH_POSTS", 1_000_000)?;
        let seed_budget = Duration::from_secs(setting("BENCH_SEED_SECS", 180)?);
        let followed_count = usize::try_from(setting("BENCH_FOLLOWED", 1_000)?)?;
        let author_count = usize::try_from(setting("BENCH_AUTHORS", 10_000)?)?.max(followed_count);
        Ok(Self {
            target_posts,
            seed_budget,
            followed_count,
            author_count,
            phase: Duration::from_secs(setting("BENCH_PHASE_SECS", 20)?),
            concurrency: usize::try_from(setting("BENCH_CONCURRENCY", 16)?)?,
            visibility_samples: setting("BENCH_VISIBILITY_SAMPLES", 20)?,
            deep_reads: setting("BENCH_DEEP_READS", 3)?,
        })
    }
}

/// The users and posts services running in-process on a scratch environment, and clients.
struct Bench {
    settings: instaclone_shared::config::Settings,
    shutdown: CancellationToken,
    users_url: String,
    posts_url: String,
    users: UsersClient,
    http: reqwest::Client,
    /// Last, so that it is dropped (and its databases with it) after everything else.
    env: TestEnv,
}

impl Bench {
    async fn start() -> anyhow::Result<Self> {
        let env = TestEnv::new();
        let mut settings = env.settings.clone();
        let shutdown = CancellationToken::new();
        let users_app = instaclone_users::build(&settings, shutdown.clone()).await?;
        let users_url = format!("http://{}", users_app.address());
        tokio::spawn(users_app.run_until_stopped());
        settings.services.users = users_url.clone();
        let posts_app = instaclone_posts::build(&settings, shutdown.clone()).await?;
        let posts_url = format!("http://{}", posts_app.address());
        tokio::spawn(posts_app.run_until_stopped());
        let token = InternalToken::new(
            settings
                .internal
                .token
                .clone()
                .context("test env has a token")?,
        );
        let users = UsersClient::new(&users_url, token, Duration::from_secs(30));
        Ok(Self {
            settings,
            shutdown,
            users_url,
            posts_url,
            users,
            http: reqwest::Client::new(),
            env,
        })
    }

    /// Stops the services and gives them a moment to finish.
    async fn stop(&self) {
        self.shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// `GET /posts/feed?{query}` as `token`, as JSON.
    async fn feed_page(&self, token: &str, query: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/posts/feed?{query}", self.posts_url))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?)
    }
}

/// The reader and the accounts they follow.
struct Reader {
    id: Uuid,
    token: String,
    followed: Vec<Uuid>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let bench = Bench::start().await?;
    let reader = register_reader(&bench, config.followed_count).await?;
    let (authors, stored) = seed_store(&bench, &config, &reader).await?;
    let timelines = first_feed_read(&bench, &reader).await?;
    post_to_feed_latency(&bench, &reader, config.visibility_samples).await?;
    create_posts(&bench, &config, &reader, &authors).await?;
    read_feed_pages(&bench, &config, &reader, stored).await?;
    read_below_the_floor(&bench, &config, &reader, &timelines).await?;
    bench.stop().await;
    Ok(())
}

/// Step 1: the reader and the accounts they follow, followed through the users service's API.
async fn register_reader(bench: &Bench, followed_count: usize) -> anyhow::Result<Reader> {
    let (users, http) = (&bench.users, &bench.http);
    let started = Instant::now();
    let new_user = |name: String| NewUser {
        email: format!("{name}@bench.example.com"),
        username: Some(name),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
    };
    let reader = users.create_user(&new_user("reader".to_owned())).await?.id;
    let reader_token = bench.env.access_token(reader);
    let mut followed = Vec::with_capacity(followed_count);
    for chunk in (0..followed_count).collect::<Vec<_>>().chunks(32) {
        let created = futures_util::future::join_all(
            chunk
                .iter()
                .map(|n| users.create_user_owned(new_user(format!("author{n:05}")))),
        )
        .await;
        for user in created {
            followed.push(user?.id);
        }
    }
    for chunk in followed.chunks(32) {
        let results = futures_util::future::join_all(chunk.iter().map(|id| {
            http.post(format!("{}/users/follow", bench.users_url))
                .bearer_auth(&reader_token)
                .json(&json!({ "userIdToFollow": id }))
                .send()
        }))
        .await;
        for result in results {
            let response = result?;
            if !response.status().is_success() {
                bail!("follow failed: {}", response.status());
            }
        }
    }
    let page = users.following_page(reader, None, MAX_ID_PAGE).await?;
    println!(
        "setup: reader follows {} accounts ({:.1} s)",
        page.ids.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(Reader {
        id: reader,
        token: reader_token,
        followed,
    })
}

/// Step 2: seeds the store directly; returns every author and how many posts the store holds.
async fn seed_store(
    bench: &Bench,
    config: &Config,
    reader: &Reader,
) -> anyhow::Result<(Vec<Uuid>, u64)> {
    let (target_posts, seed_budget) = (config.target_posts, config.seed_budget);
    let mongo = bench.env.mongo(&bench.settings.mongo.posts_database).await;
    let store = PostStore::new(&mongo);
    let mut authors = reader.followed.clone();
    authors.extend((config.followed_count..config.author_count).map(|_| Uuid::now_v7()));
    let now_secs = u32::try_from(chrono::Utc::now().timestamp())?;
    let started = Instant::now();
    let mut seeded: u64 = 0;
    while seeded < target_posts && started.elapsed() < seed_budget {
        let batches = seed_batches(&authors, now_secs, target_posts, seeded);
        let counts: u64 = batches.iter().map(|(count, _)| count).sum();
        let inserts = batches
            .into_iter()
            .map(|(_, documents)| store.seed(documents));
        for result in futures_util::future::join_all(inserts).await {
            result?;
        }
        seeded += counts;
    }
    let seed_secs = started.elapsed().as_secs_f64();
    let stored = mongo
        .collection::<mongodb::bson::Document>(POSTS_COLLECTION)
        .estimated_document_count()
        .await?;
    let followed_ids: Vec<String> = reader.followed.iter().map(Uuid::to_string).collect();
    let by_followed = mongo
        .collection::<mongodb::bson::Document>(POSTS_COLLECTION)
        .count_documents(doc! { "userId": { "$in": followed_ids } })
        .await?;
    println!(
        "seed: {seeded} posts inserted directly in {seed_secs:.1} s = {:.0}/s (target {target_posts}, budget {} s); store holds {stored} posts, {by_followed} by followed accounts, from {} authors",
        seeded as f64 / seed_secs,
        seed_budget.as_secs(),
        config.author_count,
    );
    Ok((authors, stored))
}

/// Posts inserted per `insertMany`.
const SEED_BATCH: u64 = 1_000;
/// `insertMany` calls in flight at once.
const SEED_PARALLEL_BATCHES: u64 = 4;

/// The next round of seeding after `seeded` posts: up to [`SEED_PARALLEL_BATCHES`] batches
/// (their sizes, and the documents) by random `authors`, created within the past year.
fn seed_batches(
    authors: &[Uuid],
    now_secs: u32,
    target_posts: u64,
    seeded: u64,
) -> Vec<(u64, Vec<mongodb::bson::Document>)> {
    (0..SEED_PARALLEL_BATCHES)
        .map(|b| {
            let count = SEED_BATCH.min(target_posts.saturating_sub(seeded + b * SEED_BATCH));
            let documents = (0..count)
                .map(|n| {
                    let pick = usize::from(Uuid::new_v4().as_bytes()[0]) * 256
                        + usize::from(Uuid::new_v4().as_bytes()[1]);
                    let author = authors[pick % authors.len()];
                    PostStore::seed_document(
                        random_past_object_id(now_secs),
                        author,
                        &format!("seeded post {}", seeded + b * SEED_BATCH + n),
                        "https://cdn.example.com/media/seed.jpg",
                    )
                })
                .collect::<Vec<_>>();
            (count, documents)
        })
        .filter(|(count, _)| *count > 0)
        .collect()
}

/// Step 3: the first feed read rebuilds the reader's timeline; returns the timelines, to look
/// at it.
async fn first_feed_read(bench: &Bench, reader: &Reader) -> anyhow::Result<HomeTimelines> {
    let settings = &bench.settings;
    let started = Instant::now();
    let first = bench.feed_page(&reader.token, "limit=20").await?;
    let rebuild = started.elapsed();
    let redis = bench.env.redis().await;
    let follows = FollowCache::new(
        redis.clone(),
        settings.redis.clone(),
        settings.timelines.ttl,
    );
    let timelines = HomeTimelines::new(
        redis,
        &settings.redis.key_prefix,
        settings.timelines.clone(),
        follows,
    );
    let capacity = settings.timelines.capacity.get();
    let (floor, entries) = match timelines
        .read(reader.id, None, capacity, Filter::None)
        .await?
    {
        TimelineWindow::Entries { floor, entries, .. } => (floor, entries.len()),
        TimelineWindow::Missing | TimelineWindow::NoFollowSet => {
            bail!("the first read left no timeline")
        }
    };
    println!(
        "first feed read (rebuilds the timeline from {} sources): {:.1} ms, {} posts on the page; timeline holds {entries} ids, floor {floor}",
        reader.followed.len() + 1,
        ms(rebuild),
        first["data"].as_array().map_or(0, Vec::len),
    );
    Ok(timelines)
}

/// Step 4, post-to-feed latency: how long until a new post by a followed account heads the
/// feed.
async fn post_to_feed_latency(bench: &Bench, reader: &Reader, samples: u64) -> anyhow::Result<()> {
    let followed = &reader.followed;
    let mut visibility = Vec::new();
    for n in 0..samples {
        let author = followed[usize::try_from(n)? % followed.len()];
        visibility.push(
            post_and_wait_until_in_feed(
                &bench.http,
                &bench.posts_url,
                &bench.env.access_token(author),
                &reader.token,
            )
            .await?,
        );
    }
    let visible = Summary::of(visibility);
    println!(
        "post-to-feed: {} posts, from POST /posts to heading the follower's feed p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        visible.operations,
        ms(visible.percentile(0.50)),
        ms(visible.percentile(0.99)),
        ms(visible.latencies.last().copied().unwrap_or_default()),
    );
    Ok(())
}

/// Step 5: post creation through the API, then a wait until the relay and the timeline
/// consumer have caught up.
async fn create_posts(
    bench: &Bench,
    config: &Config,
    reader: &Reader,
    authors: &[Uuid],
) -> anyhow::Result<()> {
    let concurrency = config.concurrency;
    let create = {
        let http = bench.http.clone();
        let url = format!("{}/posts", bench.posts_url);
        // Authors drawn from all of them, as in the seeded store: a tenth are followed by the
        // reader, so their posts are fanned out into the reader's timeline meanwhile.
        let tokens: Arc<Vec<String>> = Arc::new(
            authors
                .iter()
                .map(|id| bench.env.access_token(*id))
                .collect(),
        );
        load(concurrency, config.phase, move |n| {
            let request = http
                .post(&url)
                .bearer_auth(&tokens[n % tokens.len()])
                .json(&json!({ "caption": format!("bench {n}"), "mediaUrl": "https://cdn.example.com/m.jpg" }));
            async move {
                let response = request.send().await?;
                if response.status() != reqwest::StatusCode::CREATED {
                    bail!("create: {}", response.status());
                }
                Ok(())
            }
        })
        .await?
    };
    create.report(&format!("POST /posts ({concurrency} clients)"));
    // Let the relay and the timeline consumer catch up before the reads: wait until a new post
    // by a followed account heads the reader's feed.
    let started = Instant::now();
    let caught_up = post_and_wait_until_in_feed(
        &bench.http,
        &bench.posts_url,
        &bench.env.access_token(reader.followed[0]),
        &reader.token,
    )
    .await?;
    println!(
        "backlog: the relay and the timeline consumer caught up {:.1} s after the create phase ({caught_up:?} for the marker post)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Step 6: home-feed reads through the API, the first page and a page further down (`stored`:
/// the store's size, for the report).
async fn read_feed_pages(
    bench: &Bench,
    config: &Config,
    reader: &Reader,
    stored: u64,
) -> anyhow::Result<()> {
    let concurrency = config.concurrency;
    let first_page = bench.feed_page(&reader.token, "limit=20").await?;
    let mut cursor = first_page["data"][19]["_id"].as_str().map(str::to_owned);
    for _ in 0..4 {
        let Some(before) = cursor.clone() else { break };
        let page = bench
            .feed_page(&reader.token, &format!("limit=20&before={before}"))
            .await?;
        cursor = page["data"][19]["_id"].as_str().map(str::to_owned);
    }
    for (label, query) in [
        ("first page", "limit=20".to_owned()),
        (
            "sixth page",
            format!("limit=20&before={}", cursor.clone().unwrap_or_default()),
        ),
    ] {
        let http = bench.http.clone();
        let url = format!("{}/posts/feed?{query}", bench.posts_url);
        let token = reader.token.clone();
        let feed = load(concurrency, config.phase, move |_| {
            let request = http.get(&url).bearer_auth(&token);
            async move {
                let response = request.send().await?;
                if !response.status().is_success() {
                    bail!("feed: {}", response.status());
                }
                let body: Value = response.json().await?;
                if body["data"].as_array().is_none_or(Vec::is_empty) {
                    bail!("empty feed page");
                }
                Ok(())
            }
        })
        .await?;
        feed.report(&format!(
            "GET /posts/feed {label} ({concurrency} clients, {} followed, {stored}+ posts)",
            reader.followed.len()
        ));
    }
    Ok(())
}

/// Step 7: a page below the timeline's floor comes from MongoDB (fan-out on read), and the
/// follow-graph call every read makes.
async fn read_below_the_floor(
    bench: &Bench,
    config: &Config,
    reader: &Reader,
    timelines: &HomeTimelines,
) -> anyhow::Result<()> {
    let floor = timelines
        .floor(reader.id)
        .await?
        .context("the reader's timeline is gone")?;
    let mut deep = Vec::new();
    for _ in 0..config.deep_reads {
        let started = Instant::now();
        let response = bench
            .http
            .get(format!(
                "{}/posts/feed?limit=20&before={floor}",
                bench.posts_url
            ))
            .bearer_auth(&reader.token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("deep feed page: {}", response.status());
        }
        deep.push(started.elapsed());
    }
    Summary::of(deep).report("GET /posts/feed below the timeline floor, from MongoDB (1 client)");
    let graph = {
        let (users, reader) = (bench.users.clone(), reader.id);
        load(1, config.phase / 2, move |_| {
            let users = users.clone();
            async move {
                users.following_page(reader, None, MAX_ID_PAGE).await?;
                Ok(())
            }
        })
        .await?
    };
    graph.report("users service: followed ids (1 client)");
    Ok(())
}

/// Creates a post as `author_token` and returns how long until it heads the feed of
/// `reader_token` (polled every 2 ms; fails after 60 s).
async fn post_and_wait_until_in_feed(
    http: &reqwest::Client,
    posts_url: &str,
    author_token: &str,
    reader_token: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let created: Value = http
        .post(format!("{posts_url}/posts"))
        .bearer_auth(author_token)
        .json(&json!({ "caption": "visible?", "mediaUrl": "https://cdn.example.com/v.jpg" }))
        .send()
        .await?
        .json()
        .await?;
    let id = created["data"]["_id"]
        .as_str()
        .context("created post id")?
        .to_owned();
    loop {
        let page: Value = http
            .get(format!("{posts_url}/posts/feed?limit=1"))
            .bearer_auth(reader_token)
            .send()
            .await?
            .json()
            .await?;
        if page["data"][0]["_id"].as_str() == Some(id.as_str()) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("post {id} not in the feed after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `create_user` taking its argument by value, so a batch of futures owns its inputs.
trait CreateOwned {
    fn create_user_owned(
        &self,
        user: NewUser,
    ) -> impl std::future::Future<
        Output = Result<
            instaclone_shared::users_internal::UserRecord,
            instaclone_shared::users_internal::ClientError,
        >,
    >;
}

impl CreateOwned for UsersClient {
    async fn create_user_owned(
        &self,
        user: NewUser,
    ) -> Result<
        instaclone_shared::users_internal::UserRecord,
        instaclone_shared::users_internal::ClientError,
    > {
        self.create_user(&user).await
    }
}
