//! The public REST API (through the gateway), as the scenarios use it: register, follow, post,
//! read. Success bodies are `{"statusCode", "data"}` envelopes.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use futures_util::{StreamExt, stream};
use reqwest::{Client, StatusCode, header::HeaderMap};
use serde_json::{Value, json};

use crate::progress;

pub const PASSWORD: &str = "loadtest password, not secret";

#[derive(Clone)]
pub struct Api {
    http: Client,
    base: Arc<str>,
}

/// A registered user.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub access_token: String,
}

/// A response, read to the end.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Api {
    pub fn new(base: &str, timeout: Duration, max_idle: usize) -> anyhow::Result<Self> {
        let http = Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(max_idle)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').into(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request and reads the whole body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::Result<Answer> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    async fn expect(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        accepted: &[StatusCode],
    ) -> anyhow::Result<(StatusCode, Value)> {
        let answer = self
            .send(reqwest::Method::POST, path, token, Some(body))
            .await
            .with_context(|| format!("POST {path}"))?;
        anyhow::ensure!(
            accepted.contains(&answer.status),
            "POST {path}: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        Ok((answer.status, value))
    }

    pub async fn register(&self, email: &str) -> anyhow::Result<Account> {
        let body = json!({ "email": email, "password": PASSWORD });
        let (_, value) = self
            .expect("/auth/register", None, &body, &[StatusCode::CREATED])
            .await?;
        let data = &value["data"];
        Ok(Account {
            id: data["user"]["id"]
                .as_str()
                .context("register: no data.user.id")?
                .to_owned(),
            access_token: data["accessToken"]
                .as_str()
                .context("register: no data.accessToken")?
                .to_owned(),
        })
    }

    /// `follower` follows `followed` (409 "already following" counts as done).
    pub async fn follow(&self, follower: &Account, followed: &str) -> anyhow::Result<()> {
        let body = json!({ "userIdToFollow": followed });
        self.expect(
            "/users/follow",
            Some(&follower.access_token),
            &body,
            &[StatusCode::CREATED, StatusCode::OK, StatusCode::CONFLICT],
        )
        .await?;
        Ok(())
    }

    /// Creates a post; returns the created post object.
    pub async fn create_post(&self, author: &Account, caption: &str) -> anyhow::Result<Value> {
        let (_, mut value) = self
            .expect(
                "/posts",
                Some(&author.access_token),
                &post_body(caption),
                &[StatusCode::CREATED],
            )
            .await?;
        Ok(value["data"].take())
    }

    /// Registers `count` users named `<run>-<i>@loadtest.example` with `concurrency` requests in
    /// flight (argon2 is slow on purpose: a few per core at a time is all auth does anyway).
    pub async fn register_many(
        &self,
        run: &str,
        count: usize,
        concurrency: usize,
        phase: &str,
    ) -> anyhow::Result<Vec<Account>> {
        let bar = progress::bar(count as u64, phase);
        let accounts: Vec<anyhow::Result<Account>> = stream::iter(0..count)
            .map(|i| {
                let (api, bar) = (self.clone(), bar.clone());
                let email = format!("{run}-{i}@loadtest.example");
                async move {
                    let account = api.register(&email).await;
                    bar.inc(1);
                    account
                }
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        let accounts = accounts.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        progress::finish(&bar, format!("{count} users registered"));
        Ok(accounts)
    }

    /// Makes every `(follower, followed)` pair of indices into `accounts` a follow.
    pub async fn follow_many(
        &self,
        accounts: &[Account],
        pairs: &[(usize, usize)],
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let bar = progress::bar(pairs.len() as u64, "following");
        let results: Vec<anyhow::Result<()>> = stream::iter(pairs.iter().copied())
            .map(|(follower, followed)| {
                let (api, bar) = (self.clone(), bar.clone());
                let follower = accounts[follower].clone();
                let followed = accounts[followed].id.clone();
                async move {
                    let done = api.follow(&follower, &followed).await;
                    bar.inc(1);
                    done
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        progress::finish(&bar, format!("{} follows", pairs.len()));
        Ok(())
    }

    /// Creates `count` posts, round-robin over `authors`.
    pub async fn seed_posts(
        &self,
        authors: &[Account],
        count: usize,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        if authors.is_empty() || count == 0 {
            return Ok(());
        }
        let bar = progress::bar(count as u64, "seeding posts");
        let results: Vec<anyhow::Result<Value>> = stream::iter(0..count)
            .map(|i| {
                let (api, bar) = (self.clone(), bar.clone());
                let author = authors[i % authors.len()].clone();
                async move {
                    let post = api.create_post(&author, &format!("seed post {i}")).await;
                    bar.inc(1);
                    post
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        progress::finish(&bar, format!("{count} posts"));
        Ok(())
    }
}

/// The body of a new post.
pub fn post_body(caption: &str) -> Value {
    json!({ "caption": caption, "mediaUrl": "https://media.loadtest.example/p.jpg" })
}

/// A short random id for this run, so repeated runs register distinct emails.
pub fn run_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("lt{}", &id[..10])
}

/// Options of the scenarios that drive the public API (`rest-mix`, `fanout --target stack`).
#[derive(clap::Args)]
pub struct StackArgs {
    /// Base URL of the public API (the gateway).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub api: String,
    /// Requests outstanding at most.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// A request that cannot start within this many milliseconds of its due time is dropped.
    #[arg(long, default_value_t = 1000)]
    pub max_start_delay_ms: u64,
    /// Timeout of one request.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    /// Registrations in flight during set-up (argon2: a few per core).
    #[arg(long, default_value_t = 4)]
    pub register_concurrency: usize,
    /// Other set-up requests (follows, seed posts) in flight.
    #[arg(long, default_value_t = 16)]
    pub setup_concurrency: usize,
    /// Longest wait after set-up for the notifications and hub queues to empty (the follow
    /// notifications of the set-up, and whatever earlier runs left behind).
    #[arg(long, default_value_t = 300)]
    pub settle_secs: u64,
}

impl StackArgs {
    /// The open-loop schedule of `total` requests at `rate` per second under these limits (the
    /// tail waits for the last ones a little longer than a request may take).
    pub fn schedule(&self, rate: f64, total: u64) -> crate::open_loop::Schedule {
        crate::open_loop::Schedule {
            rate,
            total,
            max_in_flight: self.max_in_flight,
            max_start_delay: Duration::from_millis(self.max_start_delay_ms),
            tail: Duration::from_secs(self.timeout_secs + 5),
        }
    }
}
