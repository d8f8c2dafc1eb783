//! Per-test isolation on the real backing servers.
//!
//! [`TestEnv::new`] gives a test its own PostgreSQL database, MongoDB databases, Redis key prefix
//! and RabbitMQ exchange and queue names, plus a fresh signing key pair and service credential,
//! all inside a [`Settings`] with every port set to 0. Services built from those settings create
//! their databases on first use. When the `TestEnv` is dropped, everything it named is removed.
//!
//! Server addresses come from the same environment variables as production, so a CI machine
//! with services elsewhere only sets those. A server that cannot be reached makes the part that
//! needs it fail to build with an error naming that server (see [`crate::db`]), within
//! [`TEST_STARTUP_WAIT`].
//!
//! Tests talk to the parts they start through a [`TestClient`], and read their SSE streams as an
//! [`SseStream`].

mod client;
mod sse;

use std::time::Duration;

use sqlx::{Connection, Executor, postgres::PgConnectOptions};
use uuid::Uuid;

use crate::{
    amqp::EVENT_LOG_QUEUE,
    auth::{Claims, TokenIssuer, TokenKind, generate_internal_token, generate_key_pair},
    config::{Secret, Settings},
};

pub use client::{TestClient, TestRequest, TestResponse};
pub use sse::{SseEvent, SseStream};

/// How long a test waits for a backing server before failing with its name. Generous: when the
/// whole suite runs, dozens of parts start at once against the same servers, and a RabbitMQ
/// churning through the suite's short-lived queues and streams was seen to stop answering for
/// about 50 s at a time on these 2-core machines.
pub const TEST_STARTUP_WAIT: Duration = Duration::from_secs(120);
/// The single Redis that tests which cut Redis through a [`TcpProxy`] use, when the suite runs
/// on a Redis Cluster (`REDIS_SINGLE_URL`, default the local server).
const SINGLE_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Unused test queues disappear after this long.
const TEST_QUEUE_EXPIRES: Duration = Duration::from_secs(300);

pub struct TestEnv {
    pub settings: Settings,
    pub issuer: TokenIssuer,
    /// Short unique id of this test's resources.
    pub id: String,
}

impl TestEnv {
    /// Fresh, uniquely named resources on the servers the environment points at.
    pub fn new() -> Self {
        crate::telemetry::init_for_tests();
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let mut settings = Settings::from_env().expect("test environment variables are invalid");

        // No part of a test talks to a developer's running stack on the usual ports: a test
        // that needs another service starts it and sets its URL; the rest reach nothing
        // (port 1 refuses connections).
        let nowhere = "http://127.0.0.1:1".to_owned();
        let services = &mut settings.services;
        (services.auth, services.users, services.posts) =
            (nowhere.clone(), nowhere.clone(), nowhere.clone());
        (services.notifications, services.hub) = (nowhere.clone(), nowhere);

        let http = &mut settings.http;
        http.host = std::net::IpAddr::from([127, 0, 0, 1]);
        (http.gateway_port, http.auth_port, http.users_port) = (0, 0, 0);
        (http.posts_port, http.notifications_port, http.hub_port) = (0, 0, 0);

        let users_url = replace_database(
            settings.postgres.users_url.expose(),
            &format!("test_{id}_users"),
        );
        settings.postgres.users_url = Secret::new(users_url);
        settings.postgres.max_connections = 5;
        settings.mongo.posts_database = format!("test_{id}_posts");
        settings.mongo.notifications_database = format!("test_{id}_notifications");
        settings.redis.key_prefix = format!("test:{id}:");
        settings.amqp.exchange = format!("test.{id}.events");
        settings.amqp.queue_prefix = format!("test.{id}.");
        settings.amqp.queue_expires = Some(TEST_QUEUE_EXPIRES);

        let keys = generate_key_pair().expect("generate test key pair");
        settings.jwt.private_key_pem = Some(Secret::new(keys.private_key_pem));
        settings.jwt.public_key_pem = Some(keys.public_key_pem);
        settings.internal.token = Some(generate_internal_token());
        settings.startup_wait = TEST_STARTUP_WAIT;

        let issuer = TokenIssuer::from_settings(&settings.jwt).expect("test signing key");
        Self {
            settings,
            issuer,
            id,
        }
    }

    /// Points this environment at a single Redis server when the suite runs on a cluster: a
    /// [`TcpProxy`] can stand in front of one server, not of a cluster whose nodes tell clients
    /// each other's addresses.
    pub fn use_single_redis(&mut self) {
        if self.settings.redis.cluster {
            let url = std::env::var("REDIS_SINGLE_URL").unwrap_or_else(|_| SINGLE_REDIS_URL.into());
            self.settings.redis.url = Secret::new(url);
            self.settings.redis.cluster = false;
        }
    }

    /// The service credential of this environment (what `/internal/*` and `/metrics` ask for).
    pub fn internal_token(&self) -> String {
        self.settings
            .internal
            .token
            .as_ref()
            .expect("TestEnv always sets INTERNAL_TOKEN")
            .expose()
            .clone()
    }

    /// A valid access token for `user`, as the auth service would mint it.
    pub fn access_token(&self, user: Uuid) -> String {
        self.issuer
            .issue(user, Uuid::now_v7(), TokenKind::Access)
            .expect("sign test token")
            .0
    }

    /// An access token for `user` that expires `seconds` from now.
    pub fn access_token_expiring_in(&self, user: Uuid, seconds: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user,
            sid: Uuid::now_v7(),
            jti: Uuid::now_v7(),
            typ: TokenKind::Access,
            iat: now,
            exp: now + seconds,
        };
        self.issuer.sign(&claims).expect("sign test token")
    }

    /// This test's MongoDB database named `name` (one of the settings' database names).
    pub async fn mongo(&self, name: &str) -> mongodb::Database {
        crate::db::connect_mongo(&self.settings.mongo.url, name, TEST_STARTUP_WAIT)
            .await
            .expect("MongoDB-protocol server unreachable")
    }

    pub async fn redis(&self) -> crate::redis_conn::RedisConnection {
        crate::db::connect_redis(&self.settings.redis, TEST_STARTUP_WAIT)
            .await
            .expect("Redis unreachable")
    }

    /// A pool on this test's PostgreSQL database (created if needed).
    pub async fn postgres(&self) -> sqlx::PgPool {
        crate::db::connect_postgres(&self.settings.postgres.users_url, 5, TEST_STARTUP_WAIT)
            .await
            .expect("PostgreSQL unreachable")
    }

    /// A RabbitMQ channel (the events exchange and log declared) for publishing or inspecting.
    /// An exclusive, auto-deleted queue on `channel` bound to this environment's exchange with
    /// `routing_keys`: what a test watches to see which events were published. Returns its name.
    pub async fn observer_queue(&self, channel: &lapin::Channel, routing_keys: &[&str]) -> String {
        let queue = channel
            .queue_declare(
                "",
                lapin::options::QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("declare an observer queue");
        let name = queue.name().to_string();
        for key in routing_keys {
            channel
                .queue_bind(
                    &name,
                    &self.settings.amqp.exchange,
                    key,
                    lapin::options::QueueBindOptions::default(),
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("bind the observer queue");
        }
        name
    }

    /// Takes events from `queue` (an [`observer_queue`](Self::observer_queue)) until `count`
    /// have arrived or `timeout` passes; a message holding a batch counts each of its events.
    pub async fn receive_events(
        channel: &lapin::Channel,
        queue: &str,
        count: usize,
        timeout: std::time::Duration,
    ) -> Vec<crate::events::EventEnvelope> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = Vec::new();
        while events.len() < count && tokio::time::Instant::now() < deadline {
            let got = channel
                .basic_get(queue, lapin::options::BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get on the observer queue");
            match got {
                Some(message) => events.extend(
                    crate::events::EventEnvelope::decode_batch(&message.delivery.data)
                        .expect("an event or a batch of events"),
                ),
                None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        events
    }

    pub async fn amqp_channel(&self) -> (lapin::Connection, lapin::Channel) {
        let connection = crate::amqp::connect(&self.settings.amqp)
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ unreachable: {e}"));
        let channel = connection
            .create_channel()
            .await
            .expect("open RabbitMQ channel");
        crate::amqp::declare_topology(&channel, &self.settings.amqp)
            .await
            .expect("declare RabbitMQ topology");
        (connection, channel)
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let server = match base.rfind('/') {
        Some(slash) if slash > base.find("://").map_or(0, |i| i + 2) => &base[..slash],
        _ => base,
    };
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let settings = self.settings.clone();
        // Drop cannot await, and the test's runtime may be single-threaded: clean up on a
        // thread of our own with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let budget = Duration::from_secs(10);
                let _ = tokio::time::timeout(budget, cleanup(&settings)).await;
            });
        });
        let _ = cleanup.join();
    }
}

async fn cleanup(settings: &Settings) {
    let database_url = settings.postgres.users_url.expose();
    if let Ok(options) = database_url.parse::<PgConnectOptions>() {
        let database = options
            .get_database()
            .unwrap_or_default()
            .replace('"', "\"\"");
        if let Ok(mut admin) = sqlx::PgConnection::connect_with(&options.database("postgres")).await
        {
            let _ = admin
                .execute(format!(r#"DROP DATABASE IF EXISTS "{database}" WITH (FORCE)"#).as_str())
                .await;
        }
    }

    if let Ok(client) = mongodb::Client::with_uri_str(settings.mongo.url.expose()).await {
        for name in [
            &settings.mongo.posts_database,
            &settings.mongo.notifications_database,
        ] {
            let _ = client.database(name).drop().await;
        }
    }

    if let Ok(redis) = crate::db::connect_redis(&settings.redis, Duration::from_secs(2)).await
        && let Ok(masters) = redis.masters().await
    {
        for master in masters {
            delete_keys(master, &format!("{}*", settings.redis.key_prefix)).await;
        }
    }

    if let Ok(connection) = crate::amqp::connect(&settings.amqp).await {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(&settings.amqp.queue(EVENT_LOG_QUEUE), Default::default())
                .await;
        }
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .exchange_delete(&settings.amqp.exchange, Default::default())
                .await;
        }
        let _ = connection.close(200, "test cleanup").await;
    }
}

/// Deletes the keys matching `pattern` on one server, best effort (a cluster node holds only its
/// own slots' keys, so each is deleted on its own).
pub async fn delete_keys(node: redis::ConnectionInfo, pattern: &str) {
    let Ok(client) = redis::Client::open(node) else {
        return;
    };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async::<(u64, Vec<String>)>(&mut connection)
            .await
        else {
            return;
        };
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("UNLINK").arg(key).ignore();
        }
        if !keys.is_empty() {
            let _ = pipe.exec_async(&mut connection).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/instaclone_users", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            replace_database("postgres://u:p@h:5432/db?sslmode=disable", "t1"),
            "postgres://u:p@h:5432/t1?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://h:5432", "t1"),
            "postgres://h:5432/t1"
        );
    }
}

/// A TCP forwarder in front of a real server, so a test can cut the server off (an outage as the
/// service sees it: connections drop, new ones are refused) and bring it back, without stopping
/// the shared server other tests use.
pub struct TcpProxy {
    port: u16,
    upstream: String,
    state: std::sync::Arc<ProxyState>,
}

struct ProxyState {
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    connections: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    accepted: std::sync::atomic::AtomicUsize,
}

impl TcpProxy {
    /// Listens on a free local port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let proxy = Self {
            port,
            upstream: upstream.to_owned(),
            state: std::sync::Arc::new(ProxyState {
                task: std::sync::Mutex::new(None),
                connections: std::sync::Mutex::new(Vec::new()),
                accepted: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        proxy.serve(listener);
        proxy
    }

    /// A proxy in front of this environment's RabbitMQ; returns it and the AMQP URL through it.
    pub async fn for_rabbitmq(settings: &Settings) -> (Self, Secret<String>) {
        Self::in_front_of(settings.amqp.url.expose(), 5672).await
    }

    /// A proxy in front of this environment's Redis; returns it and the Redis URL through it.
    pub async fn for_redis(settings: &Settings) -> (Self, Secret<String>) {
        assert!(
            !settings.redis.cluster,
            "a TcpProxy stands in front of one Redis server: call TestEnv::use_single_redis first"
        );
        Self::in_front_of(settings.redis.url.expose(), 6379).await
    }

    /// A proxy in front of this environment's PostgreSQL; returns it and the users database's URL
    /// through it.
    pub async fn for_postgres(settings: &Settings) -> (Self, Secret<String>) {
        Self::in_front_of(settings.postgres.users_url.expose(), 5432).await
    }

    /// A proxy in front of this environment's MongoDB-protocol server; returns it and the URL
    /// through it (a direct connection, so the driver does not discover the server behind it).
    pub async fn for_mongo(settings: &Settings) -> (Self, Secret<String>) {
        let (proxy, url) = Self::in_front_of(settings.mongo.url.expose(), 27017).await;
        let separator = if url.expose().contains('?') { '&' } else { '?' };
        let direct = format!("{}{separator}directConnection=true", url.expose());
        (proxy, Secret::new(direct))
    }

    /// A proxy to the server of `url`, and `url` rewritten to go through it.
    async fn in_front_of(url: &str, default_port: u16) -> (Self, Secret<String>) {
        let upstream = host_port(url, default_port);
        let proxy = Self::start(&upstream).await;
        let through = url.replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
        (proxy, Secret::new(through))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far (to see whether something opens connections it should not).
    pub fn accepted(&self) -> usize {
        self.state
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream.clone();
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                state
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let upstream = upstream.clone();
                let connection = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                state
                    .connections
                    .lock()
                    .expect("proxy lock")
                    .push(connection.abort_handle());
            }
        });
        *self.state.task.lock().expect("proxy lock") = Some(task);
    }

    /// The outage: stop listening and drop every open connection.
    pub fn cut(&self) {
        if let Some(task) = self.state.task.lock().expect("proxy lock").take() {
            task.abort();
        }
        for connection in self.state.connections.lock().expect("proxy lock").drain(..) {
            connection.abort();
        }
    }

    /// The recovery: listen again on the same port.
    pub async fn restore(&self) {
        let mut attempts = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(error) if attempts < 50 => {
                    attempts += 1;
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("cannot listen on proxy port {} again: {error}", self.port),
            }
        };
        self.serve(listener);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// `host:port` of a URL like `scheme://user:pass@host:port/path`.
fn host_port(url: &str, default_port: u16) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let after_credentials = after_scheme
        .rsplit_once('@')
        .map_or(after_scheme, |(_, rest)| rest);
    let authority = after_credentials
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    }
}

#[cfg(test)]
mod proxy_tests {
    use super::host_port;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(
            host_port("amqp://guest:guest@127.0.0.1:5672/%2f", 5672),
            "127.0.0.1:5672"
        );
        assert_eq!(host_port("amqp://rabbit/%2f", 5672), "rabbit:5672");
    }
}

/// Asserts `response` is what a part answers while its own store is unreachable: 503 in the error
/// envelope with `Retry-After`, and a message that names no internals. `what` names the request.
pub fn assert_unavailable(response: &TestResponse, what: &str) {
    let body = &response.body;
    assert_eq!(
        response.status,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {body}"
    );
    assert_eq!(body["statusCode"], 503, "{what}: {body}");
    assert_eq!(body["error"], "Service Unavailable", "{what}: {body}");
    let message = response.message().to_lowercase();
    for internal in [
        "redis",
        "mongo",
        "postgres",
        "sqlx",
        "127.0.0.1",
        "connection",
    ] {
        assert!(
            !message.contains(internal),
            "{what}: message names {internal}: {body}"
        );
    }
    let seconds: u64 = response
        .headers
        .get(reqwest::header::RETRY_AFTER)
        .unwrap_or_else(|| panic!("{what}: 503 without Retry-After"))
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: Retry-After is not a number of seconds"));
    assert!(seconds > 0, "{what}: Retry-After 0");
}
