//! The session store (Redis) out of reach: registration, login, refresh and logout answer 503 with
//! `Retry-After`, never a 500, and a refused registration created no account (repeating it
//! afterwards succeeds instead of finding the email taken).

use std::time::Duration;

use instaclone_auth::AuthOptions;
use instaclone_shared::testing::{TcpProxy, TestEnv, assert_unavailable};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{PASSWORD, spawn_app_adjusted};

#[tokio::test]
async fn an_unreachable_session_store_is_a_503_with_retry_after_and_creates_nothing() {
    let mut env = TestEnv::new();
    env.use_single_redis();
    let (proxy, through_proxy) = TcpProxy::for_redis(&env.settings).await;
    let app = spawn_app_adjusted(AuthOptions::default(), |settings| {
        settings.redis.url = through_proxy;
        settings.redis.cluster = false;
    })
    .await;
    let signed_in = app.registered("early@example.com").await;
    let refresh_token = signed_in["refreshToken"].as_str().unwrap().to_owned();
    let access_token = signed_in["accessToken"].as_str().unwrap().to_owned();

    proxy.cut();
    let credentials = |email: &str| json!({ "email": email, "password": PASSWORD });
    let requests = [
        (
            "POST /auth/register",
            app.post("/auth/register")
                .json(&credentials("late@example.com")),
        ),
        (
            "POST /auth/login",
            app.post("/auth/login")
                .json(&credentials("early@example.com")),
        ),
        (
            "POST /auth/refresh",
            app.post("/auth/refresh").bearer(&refresh_token),
        ),
        (
            "POST /auth/logout",
            app.post("/auth/logout").bearer(&access_token),
        ),
    ];
    for (what, request) in requests {
        assert_unavailable(&request.await, what);
    }

    proxy.restore().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = app.register("late@example.com", PASSWORD).await;
        if reply.status == StatusCode::CREATED {
            break;
        }
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.body
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "never accepted again"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    app.logged_in("early@example.com").await;
    assert_eq!(app.refresh(&refresh_token).await.status, StatusCode::OK);
}
