//! Starts the users service and the auth service in-process with an isolated `TestEnv`, and
//! talks to auth over HTTP.

use instaclone_auth::{
    AuthOptions,
    rate_limit::{Limit, LoginLimits},
};
use instaclone_shared::{
    auth::{Claims, TokenKind, TokenVerifier},
    config::Settings,
    testing::{TestClient, TestEnv, TestResponse},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{ops::Deref, time::Duration};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub env: TestEnv,
    /// The auth service.
    pub client: TestClient,
    pub verifier: TokenVerifier,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Deref for TestApp {
    type Target = TestClient;

    fn deref(&self) -> &TestClient {
        &self.client
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AuthOptions::default()).await
}

/// Login limits of `account` and `address` failures per `window`.
pub fn limits(account: u32, address: u32, window: Duration) -> LoginLimits {
    LoginLimits {
        per_account: Limit {
            max_failures: account,
            window,
        },
        per_address: Limit {
            max_failures: address,
            window,
        },
    }
}

pub async fn spawn_app_with(options: AuthOptions) -> TestApp {
    spawn_app_adjusted(options, |_| {}).await
}

/// The auth service with `options`, on settings changed by `adjust` (the users service beside it
/// keeps the unchanged ones).
pub async fn spawn_app_adjusted(
    options: AuthOptions,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut env = TestEnv::new();
    let shutdown = CancellationToken::new();
    let users = instaclone_users::build(&env.settings, shutdown.clone())
        .await
        .expect("users service failed to build");
    env.settings.services.users = format!("http://127.0.0.1:{}", users.port());
    tokio::spawn(users.run_until_stopped());
    let mut settings = env.settings.clone();
    adjust(&mut settings);
    let auth = instaclone_auth::build_with_options(&settings, options, shutdown.clone())
        .await
        .expect("auth service failed to build");
    let client = TestClient::new(format!("http://127.0.0.1:{}", auth.port()));
    tokio::spawn(auth.run_until_stopped());
    let verifier = TokenVerifier::from_settings(&env.settings.jwt).unwrap();
    TestApp {
        env,
        client,
        verifier,
        shutdown,
    }
}

impl TestApp {
    pub async fn register(&self, email: &str, password: &str) -> TestResponse {
        self.post("/auth/register")
            .json(&json!({ "email": email, "password": password }))
            .await
    }

    /// Registers `email` with [`PASSWORD`], asserting success; returns `data`.
    pub async fn registered(&self, email: &str) -> Value {
        let reply = self.register(email, PASSWORD).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.data().clone()
    }

    pub async fn login(&self, email: &str, password: &str) -> TestResponse {
        self.post("/auth/login")
            .json(&json!({ "email": email, "password": password }))
            .await
    }

    /// Logs in with [`PASSWORD`], asserting success; returns `data`.
    pub async fn logged_in(&self, email: &str) -> Value {
        let reply = self.login(email, PASSWORD).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.data().clone()
    }

    pub async fn refresh(&self, refresh_token: &str) -> TestResponse {
        self.post("/auth/refresh").bearer(refresh_token).await
    }

    pub async fn logout(&self, access_token: &str) -> TestResponse {
        self.post("/auth/logout").bearer(access_token).await
    }

    pub fn claims(&self, token: &Value, kind: TokenKind) -> Claims {
        self.verifier
            .verify(token.as_str().expect("token is a string"), kind)
            .expect("token verifies")
    }

    /// Whether session `sid` is stored in Redis.
    pub async fn session_exists(&self, sid: Uuid) -> bool {
        let mut redis = self.env.redis().await;
        let key = self.env.settings.redis.key(&format!("auth:session:{sid}"));
        redis::cmd("EXISTS")
            .arg(&key)
            .query_async::<bool>(&mut redis)
            .await
            .unwrap()
    }
}
