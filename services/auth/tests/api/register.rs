use instaclone_shared::{auth::TokenKind, testing::TestClient};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{PASSWORD, spawn_app};

#[tokio::test]
async fn register_returns_the_user_and_a_working_token_pair() {
    let app = spawn_app().await;
    let reply = app
        .post("/auth/register")
        .json(&json!({ "email": "ada@example.com", "password": PASSWORD, "username": "ada.l" }))
        .await;

    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["statusCode"], 201);
    let data = reply.data();
    let user = &data["user"];
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["username"], "ada.l");
    assert!(user.get("passwordHash").is_none(), "hash leaked: {user}");
    let user_id: uuid::Uuid = user["id"].as_str().unwrap().parse().unwrap();

    let access = app.claims(&data["accessToken"], TokenKind::Access);
    let refresh = app.claims(&data["refreshToken"], TokenKind::Refresh);
    assert_eq!(access.sub, user_id);
    assert_eq!(refresh.sub, user_id);
    assert_eq!(access.sid, refresh.sid, "one session for both tokens");
    assert_eq!(access.exp - access.iat, 15 * 60);
    assert!(app.session_exists(refresh.sid).await);

    // The session's TTL is the refresh lifetime.
    let mut redis = app.env.redis().await;
    let key = app
        .env
        .settings
        .redis
        .key(&format!("auth:session:{}", refresh.sid));
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let refresh_ttl = i64::try_from(app.env.settings.jwt.refresh_ttl.as_secs()).unwrap();
    assert!(ttl > refresh_ttl - 60 && ttl <= refresh_ttl, "ttl {ttl}");

    // The stored hash is argon2id with the documented parameters, and it logs in.
    let login = app.login("ada@example.com", PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
}

#[tokio::test]
async fn without_a_username_one_is_generated() {
    let app = spawn_app().await;
    let data = app.registered("grace.hopper@example.com").await;
    let username = data["user"]["username"].as_str().unwrap();
    assert!(username.len() >= 3, "{username}");
}

#[tokio::test]
async fn a_taken_email_is_a_409_whatever_its_case() {
    let app = spawn_app().await;
    app.registered("ada@example.com").await;

    for email in ["ada@example.com", "ADA@Example.com"] {
        let reply = app.register(email, "another password").await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "{email}: {}",
            reply.body
        );
        assert_eq!(reply.body["statusCode"], 409);
        assert!(
            reply.message().to_lowercase().contains("email"),
            "{}",
            reply.body
        );
    }
}

#[tokio::test]
async fn a_taken_username_is_a_409() {
    let app = spawn_app().await;
    let body = |email: &str| json!({ "email": email, "password": PASSWORD, "username": "ada" });
    let first = app
        .post("/auth/register")
        .json(&body("a@example.com"))
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);

    let reply = app
        .post("/auth/register")
        .json(&body("b@example.com"))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert!(
        reply.message().to_lowercase().contains("username"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn invalid_registrations_are_400s_that_write_nothing() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({ "email": "not-an-email", "password": PASSWORD }),
            "email",
        ),
        (
            json!({ "email": "x@example.com", "password": "1234567" }),
            "password",
        ),
        (
            json!({ "email": "x@example.com", "password": "" }),
            "password",
        ),
        (
            json!({ "email": "x@example.com", "password": PASSWORD, "username": "a b" }),
            "username",
        ),
        (
            json!({ "email": "x@example.com", "password": PASSWORD, "username": "ab" }),
            "username",
        ),
        (
            json!({ "email": "x@example.com", "password": PASSWORD, "isAdmin": true }),
            "isAdmin",
        ),
        (json!({ "password": PASSWORD }), "email"),
        (json!({ "email": "x@example.com" }), "password"),
        (json!({ "email": 42, "password": PASSWORD }), "email"),
        (json!([]), ""),
    ];
    for (body, mentions) in cases {
        let reply = app.post("/auth/register").json(&body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.body
        );
        assert_eq!(reply.body["statusCode"], 400);
        assert_eq!(reply.body["error"], "Bad Request");
        assert!(
            reply.message().contains(mentions),
            "{body}: message should mention {mentions:?}: {}",
            reply.body
        );
    }

    // Both problems at once are both reported.
    let reply = app.register("nope", "short").await;
    assert!(reply.message().contains("email") && reply.message().contains("password"));

    // Not JSON at all.
    let reply = app
        .post("/auth/register")
        .header("content-type", "application/json")
        .body("{nope")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);

    // Nothing was written: x@example.com is still free.
    app.registered("x@example.com").await;
}

#[tokio::test]
async fn a_down_users_service_is_a_503_not_a_500() {
    let mut env = instaclone_shared::testing::TestEnv::new();
    // Nothing listens on port 1.
    env.settings.services.users = "http://127.0.0.1:1".to_owned();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let auth = instaclone_auth::build_with_options(
        &env.settings,
        instaclone_auth::AuthOptions::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let client = TestClient::new(format!("http://127.0.0.1:{}", auth.port()));
    tokio::spawn(auth.run_until_stopped());
    for path in ["/auth/register", "/auth/login"] {
        let response = client
            .post(path)
            .json(&json!({ "email": "ada@example.com", "password": PASSWORD }))
            .await;
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(response.body["statusCode"], 503);
    }
    shutdown.cancel();
}
