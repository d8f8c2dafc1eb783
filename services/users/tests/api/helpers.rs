//! Starts the users service in-process on port 0 with an isolated `TestEnv`, and talks to it.

use std::{ops::Deref, time::Duration};

use instaclone_shared::{
    auth::InternalToken,
    config::Settings,
    testing::{TestClient, TestEnv},
    users_internal::{NewUser, UserRecord, UsersClient},
};
use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct TestApp {
    pub env: TestEnv,
    /// The service's public and internal HTTP API.
    pub client: TestClient,
    pub users: UsersClient,
    pub shutdown: CancellationToken,
}

impl Deref for TestApp {
    type Target = TestClient;

    fn deref(&self) -> &TestClient {
        &self.client
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestEnv::new(), |_| {}).await
}

/// Starts the service on `env`'s settings after `adjust` has changed them.
pub async fn spawn_app_with(mut env: TestEnv, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    adjust(&mut env.settings);
    let shutdown = CancellationToken::new();
    let app = instaclone_users::build(&env.settings, shutdown.clone())
        .await
        .expect("users service failed to build");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let token = InternalToken::new(env.settings.internal.token.clone().unwrap());
    let users = UsersClient::new(&address, token, Duration::from_secs(10));
    TestApp {
        env,
        client: TestClient::new(address),
        users,
        shutdown,
    }
}

impl TestApp {
    /// Creates a user through the internal API.
    pub async fn create_user(&self, email: &str, username: Option<&str>) -> UserRecord {
        self.users
            .create_user(&NewUser {
                email: email.to_owned(),
                username: username.map(str::to_owned),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
            })
            .await
            .unwrap()
    }

    /// A user with a unique email and the given username, and an access token for them.
    pub async fn user(&self, username: &str) -> (Uuid, String) {
        let user = self
            .create_user(&format!("{username}@example.com"), Some(username))
            .await;
        let token = self.env.access_token(user.id);
        (user.id, token)
    }

    pub async fn follow(&self, token: &str, target: Uuid) -> (StatusCode, Value) {
        self.post("/users/follow")
            .bearer(token)
            .json(&serde_json::json!({ "userIdToFollow": target }))
            .await
            .parts()
    }

    pub async fn unfollow(&self, token: &str, target: Uuid) -> (StatusCode, Value) {
        self.post("/users/unfollow")
            .bearer(token)
            .json(&serde_json::json!({ "userIdToUnfollow": target }))
            .await
            .parts()
    }

    /// The service credential, for raw requests to `/internal/*`.
    pub fn users_token(&self) -> String {
        self.env.internal_token()
    }

    /// A pool on this test's database, for seeding and inspecting.
    pub async fn db(&self) -> sqlx::PgPool {
        self.env.postgres().await
    }
}

/// The ids of a list response's `data`.
pub fn ids(body: &Value) -> Vec<Uuid> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("data is not a list: {body}"))
        .iter()
        .map(|user| user["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Asserts an error response's status and envelope.
pub fn assert_error(status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["statusCode"], expected.as_u16(), "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert!(body["error"].is_string(), "{body}");
}
