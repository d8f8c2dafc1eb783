//! `rest-mix`: the social-network request mix against the public API, open loop.
//!
//! Set-up, through the public API only: register `--users` users, seed `--seed-posts` posts
//! (round-robin over the users, *before* any follow exists, so seeding creates no notification
//! backlog), then let every user follow `--follows` others chosen at random, and wait (at most
//! `--settle-secs`) for the notifications and hub queues to empty.
//!
//! The run: request k is due at `start + k / rate`. Each picks an operation by the mix (default
//! 60% `GET /posts/feed?limit=20`, 30% `GET /users/:id/posts?limit=20` of a random user, 10%
//! `POST /posts`) and a random acting user. Latency is measured from the request's *intended*
//! start, not from when it was actually sent, so a stalled server (or a saturated generator)
//! shows up as latency instead of as fewer requests (coordinated omission). At most
//! `--max-in-flight` requests are outstanding; a request that cannot get a slot within
//! `--max-start-delay-ms` of its due time is dropped and counted, never silently skipped.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::index};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    api::{self, Account, Api},
    backlog, open_loop,
    plot::{Chart, Series, XAxis},
    progress,
    report::{self, CpuWatch, Report},
    stats::{self, Samples},
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    stack: api::StackArgs,
    /// Users to register.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Users each user follows (chosen at random).
    #[arg(long, default_value_t = 10)]
    follows: usize,
    /// Posts to create before the run (round-robin over the users).
    #[arg(long, default_value_t = 500)]
    seed_posts: usize,
    /// Requests per second (open loop).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds of the measured run.
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// Weights of home-feed reads, user-timeline reads and post creations.
    #[arg(long, default_value = "60,30,10")]
    mix: String,
    /// Page size of the reads.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Seed of the random choices (mix, users, follow graph).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    HomeFeed,
    UserTimeline,
    CreatePost,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::HomeFeed, Op::UserTimeline, Op::CreatePost];

    pub fn name(self) -> &'static str {
        match self {
            Op::HomeFeed => "homeFeed",
            Op::UserTimeline => "userTimeline",
            Op::CreatePost => "createPost",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Weighted choice among the operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 3],
}

impl Mix {
    /// `"60,30,10"`: weights of home feed, user timeline and post creation.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let weights: Vec<u32> = text
            .split(',')
            .map(|w| w.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--mix `{text}`: expected three whole numbers"))?;
        let weights: [u32; 3] = weights
            .try_into()
            .map_err(|_| anyhow::anyhow!("--mix `{text}`: expected three weights"))?;
        anyhow::ensure!(
            weights.iter().any(|&w| w > 0),
            "--mix: at least one weight must be positive"
        );
        Ok(Self { weights })
    }

    pub fn total(&self) -> u32 {
        self.weights.iter().sum()
    }

    /// The operation for `roll` in `0..total()`.
    pub fn pick(&self, roll: u32) -> Op {
        let mut upper = 0;
        for op in Op::ALL {
            upper += self.weights[op.index()];
            if roll < upper {
                return op;
            }
        }
        Op::CreatePost
    }

    pub fn pick_random(&self, rng: &mut impl Rng) -> Op {
        self.pick(rng.gen_range(0..self.total()))
    }

    fn to_json(&self) -> Value {
        Op::ALL
            .iter()
            .map(|op| (op.name().to_owned(), json!(self.weights[op.index()])))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// For user `i` of `users`, `follows` distinct others, chosen at random.
pub fn follow_targets(rng: &mut impl Rng, i: usize, users: usize, follows: usize) -> Vec<usize> {
    let others = users.saturating_sub(1);
    index::sample(rng, others, follows.min(others))
        .into_iter()
        .map(|j| if j >= i { j + 1 } else { j })
        .collect()
}

#[derive(Default)]
struct OpStats {
    scheduled: u64,
    dropped: u64,
    completed: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    latency: Samples,
    service_time: Samples,
    cache: BTreeMap<&'static str, Samples>,
    ok_at: Vec<f64>,
}

pub async fn run(args: Args, watched: &[u32]) -> anyhow::Result<Report> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(args.users >= 2, "--users must be at least 2");
    let mix = Mix::parse(&args.mix)?;
    let api = Api::new(
        &args.stack.api,
        Duration::from_secs(args.stack.timeout_secs),
        args.stack.max_in_flight,
    )?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut setup = Setup::prepare(&args, &api, &mut rng).await?;

    // The run: every request's operation and users are drawn up front, so a dropped one is
    // still counted under its operation.
    let users = Arc::new(std::mem::take(&mut setup.users));
    let total = (args.rate * args.duration_secs as f64).round() as u64;
    let plan: Vec<(Op, usize, usize)> = (0..total)
        .map(|_| {
            (
                mix.pick_random(&mut rng),
                rng.gen_range(0..users.len()),
                rng.gen_range(0..users.len()),
            )
        })
        .collect();
    let schedule = args.stack.schedule(args.rate, total);
    let bar = progress::bar(total, "running");
    let cpu = CpuWatch::start(watched);
    let outcome = open_loop::run(schedule, &bar, |k| {
        let (op, actor, subject) = plan[k as usize];
        let (api, users, limit) = (api.clone(), users.clone(), args.limit);
        async move { request(&api, op, &users[actor], &users[subject], limit, k).await }
    })
    .await;
    let cpu = cpu.finish();
    let backlog_at_end = backlog::final_depths(setup.backlog.take()).await;

    let tally = Tally::of(&plan, &outcome);
    Ok(build_report(
        &args,
        &mix,
        &setup,
        Measured {
            total,
            outcome,
            tally,
            cpu,
            backlog_at_end,
        },
    ))
}

/// The users and their graph, made through the public API before the run.
struct Setup {
    run: String,
    users: Vec<Account>,
    register_seconds: f64,
    seed_seconds: f64,
    follow_seconds: f64,
    follows: usize,
    settle: Value,
    /// The broker connection for the end-of-run queue depths.
    backlog: Option<backlog::Backlog>,
}

impl Setup {
    /// Registers the users, seeds the posts, makes the follows (drawn from `rng`) and waits
    /// for the queues to settle.
    async fn prepare(args: &Args, api: &Api, rng: &mut StdRng) -> anyhow::Result<Self> {
        let run = api::run_id();
        progress::note(format!(
            "rest-mix: {} users ({run}-*), {} seed posts, {} follows each, against {}",
            args.users, args.seed_posts, args.follows, args.stack.api
        ));
        let clock = Instant::now();
        let users = api
            .register_many(
                &run,
                args.users,
                args.stack.register_concurrency,
                "registering",
            )
            .await?;
        let register_seconds = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        api.seed_posts(&users, args.seed_posts, args.stack.setup_concurrency)
            .await?;
        let seed_seconds = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let pairs: Vec<(usize, usize)> = (0..users.len())
            .flat_map(|i| {
                follow_targets(rng, i, users.len(), args.follows)
                    .into_iter()
                    .map(move |j| (i, j))
            })
            .collect();
        api.follow_many(&users, &pairs, args.stack.setup_concurrency)
            .await?;
        let follow_seconds = clock.elapsed().as_secs_f64();
        let (settle, backlog) = backlog::settle(Duration::from_secs(args.stack.settle_secs)).await;
        Ok(Self {
            run,
            users,
            register_seconds,
            seed_seconds,
            follow_seconds,
            follows: pairs.len(),
            settle,
            backlog,
        })
    }
}

/// What one request of the mix answered: its status (or failure kind) and, for feed reads,
/// the gateway's `x-cache`.
type Answer = (Result<u16, &'static str>, Option<&'static str>);

/// The run's requests counted per operation and in all.
struct Tally {
    ops: BTreeMap<Op, OpStats>,
    all_latency: Samples,
    all_service: Samples,
    start_lag: Samples,
    /// Requests started more than 10 ms after they were due.
    late: usize,
    /// Offsets (seconds) at which failed requests finished.
    errors_at: Vec<f64>,
}

impl Tally {
    fn of(plan: &[(Op, usize, usize)], outcome: &open_loop::Outcome<Answer>) -> Self {
        let mut ops = BTreeMap::<Op, OpStats>::new();
        for &(op, _, _) in plan {
            ops.entry(op).or_default().scheduled += 1;
        }
        for &k in &outcome.dropped {
            ops.entry(plan[k as usize].0).or_default().dropped += 1;
        }
        let mut tally = Self {
            ops,
            all_latency: Samples::new(),
            all_service: Samples::new(),
            start_lag: outcome.start_lag(),
            late: outcome
                .done
                .iter()
                .filter(|d| d.start_lag() > Duration::from_millis(10))
                .count(),
            errors_at: Vec::new(),
        };
        for done in &outcome.done {
            tally.record(plan[done.k as usize].0, done);
        }
        tally
    }

    /// One request of `op` that ran.
    fn record(&mut self, op: Op, done: &open_loop::Done<Answer>) {
        let entry = self.ops.entry(op).or_default();
        entry.completed += 1;
        let (status, cache) = done.value;
        match status {
            Ok(status) if (200..300).contains(&status) => {
                entry.ok += 1;
                entry.latency.record(done.latency());
                entry.service_time.record(done.service_time());
                self.all_latency.record(done.latency());
                self.all_service.record(done.service_time());
                entry.ok_at.push(done.finished.as_secs_f64());
                if let Some(cache) = cache {
                    entry.cache.entry(cache).or_default().record(done.latency());
                }
            }
            other => {
                let key = match other {
                    Ok(status) => status.to_string(),
                    Err(kind) => kind.to_owned(),
                };
                *entry.errors.entry(key).or_default() += 1;
                self.errors_at.push(done.finished.as_secs_f64());
            }
        }
    }
}

/// Everything the run measured, for its report.
struct Measured {
    /// Requests due.
    total: u64,
    outcome: open_loop::Outcome<Answer>,
    tally: Tally,
    cpu: Value,
    backlog_at_end: Value,
}

/// Per-operation figures and the charts' series, from a [`Tally`].
struct Breakdown {
    per_second: serde_json::Map<String, Value>,
    operations: serde_json::Map<String, Value>,
    latency_series: Vec<Series>,
    throughput_series: Vec<Series>,
    /// One latency summary per operation, for the description.
    headline: Vec<String>,
}

impl Breakdown {
    fn of(args: &Args, measured: &mut Measured) -> Self {
        let (total, outcome, tally) = (measured.total, &measured.outcome, &mut measured.tally);
        let seconds = outcome.seconds.ceil().max(1.0) as usize;
        let offered = stats::per_second(
            (0..total).map(|k| open_loop::due(k, args.rate).as_secs_f64()),
            seconds,
        );
        let mut per_second = serde_json::Map::new();
        per_second.insert("offered".into(), json!(offered));
        let mut ok_all = Vec::new();
        let mut operations = serde_json::Map::new();
        let mut latency_series = Vec::new();
        let mut op_series = Vec::new();
        let mut headline = Vec::new();
        for (op, entry) in &mut tally.ops {
            let counts = stats::per_second(entry.ok_at.iter().copied(), seconds);
            ok_all.extend(entry.ok_at.iter().copied());
            per_second.insert(op.name().into(), json!(counts));
            op_series.push(Series::new(op.name(), stats::series_points(&counts)));
            latency_series.push(Series::new(op.name(), entry.latency.percentile_curve()));
            let latency = entry.latency.summary();
            headline.push(format!("{} {}", op.name(), report::short_summary(&latency)));
            operations.insert(
                op.name().into(),
                entry.summary_json(latency, args.duration_secs),
            );
        }
        let ok_counts = stats::per_second(ok_all, seconds);
        let error_counts = stats::per_second(tally.errors_at.iter().copied(), seconds);
        per_second.insert("ok".into(), json!(ok_counts));
        per_second.insert("errors".into(), json!(error_counts));
        let dropped_counts = stats::per_second(
            outcome
                .dropped
                .iter()
                .map(|&k| open_loop::due(k, args.rate).as_secs_f64()),
            seconds,
        );
        per_second.insert("droppedByDueTime".into(), json!(dropped_counts));
        // The same order (and so colours) as the latency chart: operations, all, then the rest.
        let mut throughput_series = op_series;
        throughput_series.push(Series::new("ok, all", stats::series_points(&ok_counts)));
        throughput_series.push(Series::new("offered", stats::series_points(&offered)).dashed());
        throughput_series.push(Series::new("errors", stats::series_points(&error_counts)));
        throughput_series.push(Series::new(
            "dropped (by due time)",
            stats::series_points(&dropped_counts),
        ));
        latency_series.push(Series::new(
            "all (from due time)",
            tally.all_latency.percentile_curve(),
        ));
        latency_series.push(
            Series::new(
                "all, service time (uncorrected)",
                tally.all_service.percentile_curve(),
            )
            .dashed(),
        );
        Self {
            per_second,
            operations,
            latency_series,
            throughput_series,
            headline,
        }
    }

    /// Latency by percentile, and completions per second.
    fn charts(self) -> Vec<Chart> {
        vec![
            Chart {
                title: "Latency by percentile (successful requests, from the due time)".into(),
                x_label: "percentile".into(),
                y_label: "milliseconds".into(),
                x_axis: XAxis::Percentile,
                series: self.latency_series,
            },
            Chart {
                title: "Throughput over time (completions per second)".into(),
                x_label: "seconds since the run started".into(),
                y_label: "requests per second".into(),
                x_axis: XAxis::Linear,
                series: self.throughput_series,
            },
        ]
    }
}

impl OpStats {
    /// The operation's entry in the report (`latency` is its latency summary).
    fn summary_json(&mut self, latency: Value, duration_secs: u64) -> Value {
        let cache: serde_json::Map<String, Value> = self
            .cache
            .iter_mut()
            .map(|(status, samples)| ((*status).to_owned(), samples.summary()))
            .collect();
        json!({
            "scheduled": self.scheduled,
            "dropped": self.dropped,
            "completed": self.completed,
            "ok": self.ok,
            "errors": self.errors,
            "okPerSecond": self.ok as f64 / duration_secs.max(1) as f64,
            "latencyMillis": latency,
            "serviceTimeMillis": self.service_time.summary(),
            "latencyByCacheStatus": cache,
        })
    }
}

fn build_report(args: &Args, mix: &Mix, setup: &Setup, mut measured: Measured) -> Report {
    let breakdown = Breakdown::of(args, &mut measured);
    let Measured {
        total,
        outcome,
        mut tally,
        cpu,
        backlog_at_end,
    } = measured;
    let dropped = outcome.dropped.len();
    let unfinished = outcome.unfinished;
    let started_total = outcome.done.len() as u64 + unfinished;
    let ok_total: u64 = tally.ops.values().map(|s| s.ok).sum();
    let error_total = tally.errors_at.len() as u64;
    let json = json!({
        "scenario": "rest-mix",
        "api": args.stack.api,
        "config": {
            "users": args.users,
            "followsPerUser": args.follows,
            "seedPosts": args.seed_posts,
            "ratePerSecond": args.rate,
            "durationSeconds": args.duration_secs,
            "mix": mix.to_json(),
            "pageLimit": args.limit,
            "maxInFlight": args.stack.max_in_flight,
            "maxStartDelayMillis": args.stack.max_start_delay_ms,
            "timeoutSeconds": args.stack.timeout_secs,
            "seed": args.seed,
            "runId": setup.run,
        },
        "setup": {
            "registerSeconds": setup.register_seconds,
            "seedSeconds": setup.seed_seconds,
            "followSeconds": setup.follow_seconds,
            "follows": setup.follows,
            "settle": setup.settle,
        },
        "run": {
            "due": total,
            "started": started_total,
            "dropped": dropped,
            "unfinished": unfinished,
            "ok": ok_total,
            "errors": error_total,
            "dispatchSeconds": outcome.dispatch_seconds,
            "seconds": outcome.seconds,
            "okPerSecond": ok_total as f64 / args.duration_secs.max(1) as f64,
            "startLagMillis": tally.start_lag.summary(),
            "startedMoreThan10msLate": tally.late,
        },
        "latencyMillis": tally.all_latency.summary(),
        "serviceTimeMillis": tally.all_service.summary(),
        "operations": breakdown.operations,
        "perSecond": breakdown.per_second,
        "backlogAtEnd": backlog_at_end,
        "machine": cpu,
    });
    let description = vec![
        format!(
            "{} req/s for {} s (mix {}), {} users x {} follows, {} seed posts, max {} in flight; {}",
            args.rate,
            args.duration_secs,
            args.mix,
            args.users,
            args.follows,
            args.seed_posts,
            args.stack.max_in_flight,
            args.stack.api
        ),
        format!(
            "due {total}, ok {ok_total}, errors {error_total}, dropped {dropped} (not started within {} ms), unfinished {unfinished}",
            args.stack.max_start_delay_ms
        ),
        breakdown.headline.join("; "),
        report::cpu_line(&json["machine"]),
    ];
    Report {
        name: "rest-mix".into(),
        title: "rest-mix: home feed / user timeline / new post, open loop".into(),
        description,
        charts: breakdown.charts(),
        json,
    }
}

/// Sends one request of the mix; returns its status (or failure kind) and the gateway's
/// `x-cache` answer for feed reads.
async fn request(
    api: &Api,
    op: Op,
    actor: &Account,
    subject: &Account,
    limit: u32,
    k: u64,
) -> Answer {
    let token = Some(actor.access_token.as_str());
    let answer = match op {
        Op::HomeFeed => {
            api.send(
                Method::GET,
                &format!("/posts/feed?limit={limit}"),
                token,
                None,
            )
            .await
        }
        Op::UserTimeline => {
            let path = format!("/users/{}/posts?limit={limit}", subject.id);
            api.send(Method::GET, &path, token, None).await
        }
        Op::CreatePost => {
            let body = api::post_body(&format!("rest-mix post {k}"));
            api.send(Method::POST, "/posts", token, Some(&body)).await
        }
    };
    match answer {
        Ok(answer) => {
            let cache = answer
                .headers
                .get("x-cache")
                .map(|value| match value.as_bytes() {
                    b"HIT" => "HIT",
                    b"MISS" => "MISS",
                    _ => "other",
                })
                .or((op == Op::HomeFeed).then_some("none"));
            (Ok(answer.status.as_u16()), cache)
        }
        Err(error) if error.is_timeout() => (Err("timeout"), None),
        Err(error) if error.is_connect() => (Err("connect"), None),
        Err(_) => (Err("transport"), None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mix_parses_and_picks_by_weight() {
        let mix = Mix::parse("60, 30,10").unwrap();
        assert_eq!(mix.total(), 100);
        assert_eq!(mix.pick(0), Op::HomeFeed);
        assert_eq!(mix.pick(59), Op::HomeFeed);
        assert_eq!(mix.pick(60), Op::UserTimeline);
        assert_eq!(mix.pick(89), Op::UserTimeline);
        assert_eq!(mix.pick(90), Op::CreatePost);
        assert_eq!(mix.pick(99), Op::CreatePost);
        let only_posts = Mix::parse("0,0,1").unwrap();
        assert_eq!(only_posts.pick(0), Op::CreatePost);
        assert!(Mix::parse("60,40").is_err());
        assert!(Mix::parse("a,b,c").is_err());
        assert!(Mix::parse("0,0,0").is_err());
    }

    #[test]
    fn random_mix_matches_the_weights() {
        let mix = Mix::parse("60,30,10").unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0_u32; 3];
        for _ in 0..100_000 {
            counts[mix.pick_random(&mut rng).index()] += 1;
        }
        for (count, expected) in counts.iter().zip([60_000.0, 30_000.0, 10_000.0]) {
            let share = f64::from(*count) / expected;
            assert!((0.97..1.03).contains(&share), "{counts:?}");
        }
    }

    #[test]
    fn follow_targets_are_distinct_and_never_self() {
        let mut rng = StdRng::seed_from_u64(1);
        for i in 0..20 {
            let mut targets = follow_targets(&mut rng, i, 20, 5);
            assert_eq!(targets.len(), 5);
            assert!(targets.iter().all(|&t| t != i && t < 20));
            targets.sort_unstable();
            targets.dedup();
            assert_eq!(targets.len(), 5);
        }
        assert_eq!(follow_targets(&mut rng, 0, 3, 10).len(), 2);
        let mut all = follow_targets(&mut rng, 1, 3, 10);
        all.sort_unstable();
        assert_eq!(all, vec![0, 2]);
    }
}
