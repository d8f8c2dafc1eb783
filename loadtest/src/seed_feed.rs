//! `seed-feed`: prepares a home-feed benchmark on an already running stack, for `wrk` to
//! measure `GET /posts/feed` through the gateway afterwards.
//!
//! A feed read is only as hard as the reader's graph and the store behind it, and building both
//! through the public API would take hours (argon2 per registration, one `POST /posts` per post,
//! each fanned out). So this scenario builds them the cheap way, then checks the result through
//! the public API:
//!
//! 1. creates a reader and `--followed` authors through the users service's internal API
//!    (`POST /internal/users` with `INTERNAL_TOKEN` and a fixed dummy password hash: no argon2),
//!    with unique names per run, so runs never collide;
//! 2. makes the reader follow every author through the gateway (`POST /users/follow`), with an
//!    access token minted with `JWT_PRIVATE_KEY_FILE`;
//! 3. inserts `--posts` posts straight into the posts service's `posts` collection
//!    (`insertMany` batches, documents as `PostStore::seed_document` builds them, no outbox
//!    fields, so no event is published), by the followed authors and `--other-authors` random
//!    ids picked uniformly, created at random times over the past year;
//! 4. reads the reader's feed once through the gateway (this builds the reader's Redis home
//!    timeline, since seeded posts never went through the fan-out), then again (which the
//!    gateway's feed cache may answer), then once from the posts service itself (`POSTS_URL`,
//!    past that cache), and checks all three return the same page, and that it is the newest
//!    posts seeded for the followed authors;
//! 5. writes the reader's token to `--token-out` and prints the `wrk` command to run next.
//!
//! Configuration comes from the environment exactly as the stack reads it
//! (`Settings::from_env`): `MONGODB_URL`, `POSTS_MONGODB_DATABASE`, `INTERNAL_TOKEN`,
//! `JWT_PRIVATE_KEY_FILE`, `USERS_URL`, `ACCESS_TOKEN_TTL_SECS`, ...

use std::{
    collections::HashSet,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::{StreamExt, stream};
use instaclone_posts::store::{POSTS_COLLECTION, PostStore};
use instaclone_shared::{
    auth::{InternalToken, TokenIssuer},
    config::Settings,
    db,
    users_internal::{NewUser, UsersClient},
};
use mongodb::bson::{Document, oid::ObjectId};
use rand::Rng;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    api::{self, Api},
    client, progress,
    report::{self, CpuWatch, Report},
};

/// The password hash of every account created here: a well-formed argon2 string nobody knows
/// the password of (these accounts never log in; their tokens are minted).
const DUMMY_PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
/// The media URL of every seeded post.
const SEED_MEDIA_URL: &str = "https://cdn.example.com/media/seed.jpg";
/// How far back seeded posts are dated: one year.
const SPREAD_SECS: u32 = 365 * 86_400;

/// Options of `seed-feed`. The reader's token lives `ACCESS_TOKEN_TTL_SECS` (read here, from
/// this process's environment); the default 900 s is shorter than most benchmark sessions, so
/// run both the stack and this with e.g. `ACCESS_TOKEN_TTL_SECS=36000`.
#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the public API (the gateway).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    api: String,
    /// Accounts the reader follows.
    #[arg(long, default_value_t = 1000)]
    followed: usize,
    /// Posts to insert into the posts collection.
    #[arg(long, default_value_t = 1_000_000)]
    posts: u64,
    /// Further post authors, random ids that nobody follows (they need no account).
    #[arg(long, default_value_t = 9_000)]
    other_authors: usize,
    /// Account creations, and follows, in flight during set-up.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Posts per `insertMany`.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// `insertMany` calls in flight.
    #[arg(long, default_value_t = 4)]
    parallel_batches: usize,
    /// Page size of the warm-up reads and of the printed `wrk` URL.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Where to write the reader's access token (for `wrk`: `TOKEN=$(cat FILE)`).
    #[arg(long, default_value = "loadtest/results/feed-token.txt")]
    token_out: PathBuf,
    /// Timeout of one request.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

/// What the seeding phase did.
#[derive(Debug, Default)]
struct Seeded {
    posts: u64,
    by_followed: u64,
    /// The newest posts by followed authors, newest first (at most `--limit`): the first page
    /// the reader's feed must return.
    newest_followed: Vec<ObjectId>,
}

/// One read of the reader's first feed page.
struct FeedRead {
    millis: f64,
    status: u16,
    cache: Option<String>,
    ids: Vec<String>,
    authors: Vec<String>,
}

impl FeedRead {
    fn note(&self, what: &str) {
        progress::note(format!(
            "{what}: {:.1} ms, {} posts, x-cache {}",
            self.millis,
            self.ids.len(),
            self.cache.as_deref().unwrap_or("-")
        ));
    }

    fn to_json(&self) -> Value {
        json!({
            "latencyMillis": self.millis,
            "status": self.status,
            "posts": self.ids.len(),
            "xCache": self.cache,
        })
    }
}

pub async fn run(args: Args, watched: &[u32]) -> anyhow::Result<Report> {
    anyhow::ensure!(args.followed > 0, "--followed must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(args.limit > 0, "--limit must be at least 1");
    let settings = Settings::from_env()?;
    let issuer = TokenIssuer::from_settings(&settings.jwt)
        .context("minting the reader's token needs JWT_PRIVATE_KEY_FILE (the stack's key)")?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let token = InternalToken::from_settings(
        &settings.internal,
        "seed-feed creates accounts through the users service's internal API",
    )?;
    let users = UsersClient::new(&settings.services.users, token, timeout);
    let api = Api::new(&args.api, timeout, args.concurrency)?;
    let run = api::run_id();
    progress::note(format!(
        "seed-feed: reader and {} followed authors ({run}_*) on {}, {} posts into {}.{POSTS_COLLECTION}, via {}",
        args.followed, settings.services.users, args.posts, settings.mongo.posts_database, args.api
    ));

    let clock = Instant::now();
    let (reader, followed) = create_accounts(&users, &run, args.followed, args.concurrency).await?;
    let create_seconds = clock.elapsed().as_secs_f64();
    let reader_token = client::mint(&issuer, reader)?;
    let clock = Instant::now();
    follow_all(&api, &reader_token, &followed, args.concurrency).await?;
    let follow_seconds = clock.elapsed().as_secs_f64();

    let database = db::connect_mongo(
        &settings.mongo.url,
        &settings.mongo.posts_database,
        settings.startup_wait,
    )
    .await?;
    let posts = database.collection::<Document>(POSTS_COLLECTION);
    let cpu = CpuWatch::start(watched);
    let clock = Instant::now();
    let seeded = seed_posts(&posts, &args, &run, &followed).await?;
    let seed_seconds = clock.elapsed().as_secs_f64();
    let seed_machine = cpu.finish();
    let stored = posts.estimated_document_count().await?;

    // A fresh token for the benchmark: seeding a million posts takes minutes of its lifetime.
    let expires =
        chrono::Utc::now() + chrono::Duration::from_std(issuer.access_ttl()).unwrap_or_default();
    let reader_token = client::mint(&issuer, reader)?;
    let posts_service = Api::new(&settings.services.posts, timeout, 1)?;
    let warm = warm_up(
        &api,
        &posts_service,
        &reader_token,
        &args,
        &seeded,
        &followed,
    )
    .await?;
    write_token(&args.token_out, &reader_token)?;
    let wrk = wrk_command(&args.token_out, &args.api, args.limit);
    progress::note(format!(
        "reader token written to {} (expires {}, ACCESS_TOKEN_TTL_SECS={}); next:\n  {wrk}",
        args.token_out.display(),
        expires.to_rfc3339(),
        issuer.access_ttl().as_secs()
    ));
    if issuer.access_ttl() < Duration::from_secs(3600) {
        progress::note("warning: the token expires within the hour; set ACCESS_TOKEN_TTL_SECS");
    }
    Ok(build_report(
        &args,
        &settings,
        Outcome {
            run,
            reader,
            follows: followed.len(),
            create_seconds,
            follow_seconds,
            seeded,
            seed_seconds,
            seed_machine,
            stored,
            warm,
            expires,
            wrk,
        },
    ))
}

/// Everything a run found, for its report.
struct Outcome {
    run: String,
    reader: Uuid,
    follows: usize,
    create_seconds: f64,
    follow_seconds: f64,
    seeded: Seeded,
    seed_seconds: f64,
    seed_machine: Value,
    stored: u64,
    warm: WarmUp,
    expires: chrono::DateTime<chrono::Utc>,
    wrk: String,
}

/// The JSON result (never the token itself) and the lines of the plot's header.
fn build_report(args: &Args, settings: &Settings, outcome: Outcome) -> Report {
    let Outcome { seeded, warm, .. } = &outcome;
    let (first, second) = (&warm.first, &warm.second);
    let seed_rate = seeded.posts as f64 / outcome.seed_seconds.max(f64::EPSILON);
    let json = json!({
        "scenario": "seed-feed",
        "api": args.api,
        "config": {
            "followed": args.followed,
            "posts": args.posts,
            "otherAuthors": args.other_authors,
            "concurrency": args.concurrency,
            "batch": args.batch,
            "parallelBatches": args.parallel_batches,
            "pageLimit": args.limit,
            "usersUrl": settings.services.users,
            "postsUrl": settings.services.posts,
            "postsDatabase": settings.mongo.posts_database,
            "runId": outcome.run,
        },
        "readerId": outcome.reader,
        "setup": {
            "createAccountsSeconds": outcome.create_seconds,
            "followSeconds": outcome.follow_seconds,
            "follows": outcome.follows,
        },
        "seed": {
            "posts": seeded.posts,
            "byFollowed": seeded.by_followed,
            "seconds": outcome.seed_seconds,
            "postsPerSecond": seed_rate,
            "storeEstimatedCount": outcome.stored,
            "machine": outcome.seed_machine,
        },
        "warmUp": {
            "first": first.to_json(),
            "second": second.to_json(),
            "directFromPostsService": warm.direct.to_json(),
            "sameIds": first.ids == second.ids && first.ids == warm.direct.ids,
            "matchesNewestSeeded": warm.newest_ok,
        },
        "tokenFile": args.token_out.display().to_string(),
        "tokenExpiresAt": outcome.expires.to_rfc3339(),
        "wrkCommand": outcome.wrk,
    });
    let description = vec![
        format!(
            "reader follows {} accounts; {} posts seeded ({} by followed authors) in {:.1} s = {seed_rate:.0}/s; store holds ~{}",
            outcome.follows, seeded.posts, seeded.by_followed, outcome.seed_seconds, outcome.stored,
        ),
        format!(
            "warm-up GET /posts/feed?limit={}: {:.1} ms ({} posts, x-cache {}), then {:.1} ms (x-cache {}), from the posts service {:.1} ms",
            args.limit,
            first.millis,
            first.ids.len(),
            first.cache.as_deref().unwrap_or("-"),
            second.millis,
            second.cache.as_deref().unwrap_or("-"),
            warm.direct.millis,
        ),
        report::cpu_line(&json["seed"]["machine"]),
    ];
    Report {
        name: "seed-feed".into(),
        title: "seed-feed: home-feed benchmark set-up".into(),
        description,
        charts: Vec::new(),
        json,
    }
}

/// The account of name `name` (a valid username: lowercase letters, digits, `_`).
fn new_user(name: String) -> NewUser {
    NewUser {
        email: format!("{name}@seed-feed.example"),
        username: Some(name),
        password_hash: DUMMY_PASSWORD_HASH.to_owned(),
    }
}

/// Creates the reader `<run>_reader` and `count` authors `<run>_a<i>`; returns their ids.
async fn create_accounts(
    users: &UsersClient,
    run: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(Uuid, Vec<Uuid>)> {
    let reader = users
        .create_user(&new_user(format!("{run}_reader")))
        .await
        .context("creating the reader through the users service's /internal/users")?
        .id;
    let bar = progress::bar(count as u64, "accounts");
    let created: Vec<anyhow::Result<Uuid>> = stream::iter(0..count)
        .map(|i| {
            let (users, bar) = (users.clone(), bar.clone());
            let user = new_user(format!("{run}_a{i}"));
            async move {
                let record = users
                    .create_user(&user)
                    .await
                    .with_context(|| format!("creating account {:?}", user.username))?;
                bar.inc(1);
                Ok(record.id)
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let followed = created.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    progress::finish(&bar, format!("reader and {count} authors created"));
    Ok((reader, followed))
}

/// The reader follows every one of `followed` through the public API; any non-2xx fails.
async fn follow_all(
    api: &Api,
    reader_token: &str,
    followed: &[Uuid],
    concurrency: usize,
) -> anyhow::Result<()> {
    let bar = progress::bar(followed.len() as u64, "following");
    let results: Vec<anyhow::Result<()>> = stream::iter(followed.iter().copied())
        .map(|id| {
            let (api, bar) = (api.clone(), bar.clone());
            let token = reader_token.to_owned();
            async move {
                let body = json!({ "userIdToFollow": id });
                let answer = api
                    .send(Method::POST, "/users/follow", Some(&token), Some(&body))
                    .await
                    .with_context(|| format!("POST {}", api.url("/users/follow")))?;
                anyhow::ensure!(
                    answer.status.is_success(),
                    "POST /users/follow {{\"userIdToFollow\":\"{id}\"}}: {} {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
                bar.inc(1);
                Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    progress::finish(&bar, format!("{} follows", followed.len()));
    Ok(())
}

/// Who may author a post: the first `followed` are the reader's, the rest are followed by no one.
struct Authors {
    ids: Vec<Uuid>,
    followed: usize,
}

impl Authors {
    fn new(followed: &[Uuid], others: usize) -> Self {
        let mut ids = followed.to_vec();
        ids.extend((0..others).map(|_| Uuid::new_v4()));
        Self {
            ids,
            followed: followed.len(),
        }
    }
}

/// A random ObjectId whose timestamp lies within [`SPREAD_SECS`] before `now_secs`.
fn random_past_object_id(rng: &mut impl Rng, now_secs: u32) -> ObjectId {
    let mut bytes = [0_u8; 12];
    let at = now_secs.saturating_sub(rng.gen_range(0..SPREAD_SECS));
    bytes[..4].copy_from_slice(&at.to_be_bytes());
    rng.fill(&mut bytes[4..]);
    ObjectId::from_bytes(bytes)
}

/// Keeps the `limit` greatest (newest) ids of `ids`, newest first.
fn keep_newest(ids: &mut Vec<ObjectId>, limit: usize) {
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.dedup();
    ids.truncate(limit);
}

/// `count` post documents numbered from `first`, by authors picked uniformly; with what they
/// add to [`Seeded`].
fn build_batch(
    rng: &mut impl Rng,
    authors: &Authors,
    run: &str,
    first: u64,
    count: usize,
    now_secs: u32,
    limit: usize,
) -> (Vec<Document>, Seeded) {
    let mut documents = Vec::with_capacity(count);
    let mut seeded = Seeded::default();
    for n in 0..count {
        let id = random_past_object_id(rng, now_secs);
        let pick = rng.gen_range(0..authors.ids.len());
        if pick < authors.followed {
            seeded.by_followed += 1;
            seeded.newest_followed.push(id);
        }
        let caption = format!("seed-feed {run} post {}", first + n as u64);
        documents.push(PostStore::seed_document(
            id,
            authors.ids[pick],
            &caption,
            SEED_MEDIA_URL,
        ));
    }
    seeded.posts = count as u64;
    keep_newest(&mut seeded.newest_followed, limit);
    (documents, seeded)
}

/// `(first post number, posts)` of each batch of at most `batch` that make up `total`.
fn batches(total: u64, batch: usize) -> impl Iterator<Item = (u64, usize)> {
    let size = batch.max(1) as u64;
    (0..total.div_ceil(size)).map(move |b| {
        let first = b * size;
        (first, usize::try_from(size.min(total - first)).unwrap_or(0))
    })
}

/// Inserts `--posts` documents in `--batch`es, `--parallel-batches` at a time.
async fn seed_posts(
    posts: &mongodb::Collection<Document>,
    args: &Args,
    run: &str,
    followed: &[Uuid],
) -> anyhow::Result<Seeded> {
    let authors = Arc::new(Authors::new(followed, args.other_authors));
    let now_secs = u32::try_from(chrono::Utc::now().timestamp())?;
    let bar = progress::bar(args.posts, "seeding posts");
    let mut inserts = stream::iter(batches(args.posts, args.batch))
        .map(|(first, count)| {
            // Built when the stream asks for the next batch, so at most
            // `parallel_batches` batches are in memory.
            let (documents, seeded) = build_batch(
                &mut rand::thread_rng(),
                &authors,
                run,
                first,
                count,
                now_secs,
                args.limit,
            );
            let posts = posts.clone();
            async move {
                posts
                    .insert_many(documents)
                    .ordered(false)
                    .await
                    .with_context(|| {
                        format!("insertMany of posts {first}..{}", first + count as u64)
                    })?;
                anyhow::Ok(seeded)
            }
        })
        .buffer_unordered(args.parallel_batches.max(1));
    let mut total = Seeded::default();
    while let Some(seeded) = inserts.next().await {
        let seeded = seeded?;
        bar.inc(seeded.posts);
        total.posts += seeded.posts;
        total.by_followed += seeded.by_followed;
        total.newest_followed.extend(seeded.newest_followed);
        keep_newest(&mut total.newest_followed, args.limit);
    }
    let rate = total.posts as f64 / bar.elapsed().as_secs_f64().max(f64::EPSILON);
    progress::finish(
        &bar,
        format!(
            "{} posts inserted ({} by followed authors), {rate:.0}/s",
            total.posts, total.by_followed
        ),
    );
    Ok(total)
}

/// `GET /posts/feed?limit=` as the reader, timed; any non-2xx or malformed body fails.
async fn read_feed(api: &Api, token: &str, limit: usize) -> anyhow::Result<FeedRead> {
    let path = format!("/posts/feed?limit={limit}");
    let started = Instant::now();
    let answer = api
        .send(Method::GET, &path, Some(token), None)
        .await
        .with_context(|| format!("GET {}", api.url(&path)))?;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        answer.status.is_success(),
        "GET {path}: {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    let body: Value = serde_json::from_slice(&answer.body).context("feed body is not JSON")?;
    let page = body["data"]
        .as_array()
        .context("feed body has no data array")?;
    let field = |post: &Value, name: &str| post[name].as_str().unwrap_or_default().to_owned();
    Ok(FeedRead {
        millis,
        status: answer.status.as_u16(),
        cache: answer
            .headers
            .get("x-cache")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        ids: page.iter().map(|post| field(post, "_id")).collect(),
        authors: page.iter().map(|post| field(post, "userId")).collect(),
    })
}

/// The warm-up reads of the reader's first page.
struct WarmUp {
    /// Through the gateway; builds the reader's home timeline.
    first: FeedRead,
    /// Through the gateway again (the gateway's feed cache may answer it).
    second: FeedRead,
    /// Straight from the posts service, past the gateway's cache: the timeline's answer.
    direct: FeedRead,
    /// Whether the page is the newest posts seeded for the followed authors.
    newest_ok: bool,
}

/// Reads the reader's first page through the gateway twice (the first read builds the home
/// timeline), then once from the posts service itself; fails when the pages differ. A page
/// that is not the newest seeded for the followed authors only warns.
async fn warm_up(
    api: &Api,
    posts_service: &Api,
    token: &str,
    args: &Args,
    seeded: &Seeded,
    followed: &[Uuid],
) -> anyhow::Result<WarmUp> {
    let first = read_feed(api, token, args.limit).await?;
    first.note("warm-up feed read (builds the reader's home timeline)");
    let second = read_feed(api, token, args.limit).await?;
    second.note("second feed read");
    let direct = read_feed(posts_service, token, args.limit).await?;
    direct.note("third read, from the posts service (no gateway cache)");
    for (read, what) in [(&second, "second"), (&direct, "third (direct)")] {
        anyhow::ensure!(
            read.ids == first.ids,
            "the {what} feed read returned other posts than the first: {:?} then {:?}",
            first.ids,
            read.ids
        );
    }
    if second.cache.as_deref() == Some("HIT") {
        progress::note(
            "note: the gateway's feed cache answered (x-cache HIT); wrk on one reader measures \
             that cache unless the stack runs with FEED_CACHE_TTL_SECS=0",
        );
    }
    let expected: Vec<String> = seeded
        .newest_followed
        .iter()
        .map(|id| id.to_hex())
        .collect();
    let newest_ok = first.ids == expected;
    if !newest_ok {
        let followed: HashSet<String> = followed.iter().map(Uuid::to_string).collect();
        let by_followed = first
            .authors
            .iter()
            .filter(|a| followed.contains(*a))
            .count();
        progress::note(format!(
            "warning: the feed page is not the {} newest posts seeded for the followed authors \
             ({by_followed} of its {} posts are by followed authors; page {:?}, expected {:?})",
            expected.len(),
            first.ids.len(),
            first.ids,
            expected,
        ));
    }
    Ok(WarmUp {
        first,
        second,
        direct,
        newest_ok,
    })
}

/// Writes the token to `path` (readable by its owner only), creating its directory.
fn write_token(path: &Path, token: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{token}")?;
    Ok(())
}

/// The `wrk` command that measures the reader's first feed page.
fn wrk_command(token_file: &Path, api: &str, limit: usize) -> String {
    format!(
        "TOKEN=$(cat {}) wrk -t2 -c32 -d20s --latency -s loadtest/wrk/bearer.lua '{}/posts/feed?limit={limit}'",
        token_file.display(),
        api.trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn object_ids_lie_within_the_past_year() {
        let mut rng = StdRng::seed_from_u64(3);
        let now = 1_800_000_000;
        for _ in 0..10_000 {
            let id = random_past_object_id(&mut rng, now);
            let at = u32::from_be_bytes(id.bytes()[..4].try_into().unwrap());
            assert!(at <= now && at > now - SPREAD_SECS, "{at}");
        }
    }

    #[test]
    fn batches_cover_the_total() {
        let all: Vec<_> = batches(2_500, 1_000).collect();
        assert_eq!(all, vec![(0, 1_000), (1_000, 1_000), (2_000, 500)]);
        assert_eq!(batches(0, 1_000).count(), 0);
        assert_eq!(batches(1_000, 1_000).collect::<Vec<_>>(), vec![(0, 1_000)]);
    }

    #[test]
    fn documents_have_the_seed_shape_and_track_the_newest_followed() {
        let mut rng = StdRng::seed_from_u64(5);
        let followed = vec![Uuid::new_v4(), Uuid::new_v4()];
        let authors = Authors::new(&followed, 8);
        assert_eq!(authors.ids.len(), 10);
        let now = 1_800_000_000;
        let (documents, seeded) = build_batch(&mut rng, &authors, "lt1", 100, 2_000, now, 20);
        assert_eq!(documents.len(), 2_000);
        assert_eq!(seeded.posts, 2_000);
        // Two authors in ten are followed: about 400 posts.
        assert!(
            (300..500).contains(&seeded.by_followed),
            "{}",
            seeded.by_followed
        );
        let keys: Vec<&str> = documents[0].keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "_id",
                "userId",
                "caption",
                "mediaUrl",
                "createdAt",
                "updatedAt"
            ]
        );
        assert_eq!(
            documents[0].get_str("caption").unwrap(),
            "seed-feed lt1 post 100"
        );
        let followed_ids: HashSet<String> = followed.iter().map(Uuid::to_string).collect();
        let mut expected: Vec<ObjectId> = documents
            .iter()
            .filter(|d| followed_ids.contains(d.get_str("userId").unwrap()))
            .map(|d| d.get_object_id("_id").unwrap())
            .collect();
        expected.sort_unstable_by(|a, b| b.cmp(a));
        expected.truncate(20);
        assert_eq!(seeded.newest_followed, expected);
        for document in &documents {
            let id = document.get_object_id("_id").unwrap();
            let created = document.get_datetime("createdAt").unwrap();
            assert_eq!(
                created.timestamp_millis(),
                id.timestamp().timestamp_millis()
            );
            assert_eq!(document.get_datetime("updatedAt").unwrap(), created);
        }
    }

    #[test]
    fn keep_newest_sorts_dedups_and_truncates() {
        let id = |n: u8| ObjectId::from_bytes([n; 12]);
        let mut ids = vec![id(1), id(5), id(3), id(5), id(9)];
        keep_newest(&mut ids, 3);
        assert_eq!(ids, vec![id(9), id(5), id(3)]);
    }

    #[test]
    fn wrk_command_quotes_the_url() {
        let command = wrk_command(Path::new("r/t.txt"), "http://127.0.0.1:3000/", 20);
        assert_eq!(
            command,
            "TOKEN=$(cat r/t.txt) wrk -t2 -c32 -d20s --latency -s loadtest/wrk/bearer.lua 'http://127.0.0.1:3000/posts/feed?limit=20'"
        );
    }
}
