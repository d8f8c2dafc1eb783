use instaclone_shared::auth::TokenKind;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{PASSWORD, spawn_app};

#[tokio::test]
async fn login_returns_a_new_session_and_the_user() {
    let app = spawn_app().await;
    let registered = app.registered("ada@example.com").await;

    let reply = app.login("ada@example.com", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["statusCode"], 200);
    let data = reply.data();
    assert_eq!(data["user"], registered["user"]);
    let access = app.claims(&data["accessToken"], TokenKind::Access);
    let refresh = app.claims(&data["refreshToken"], TokenKind::Refresh);
    let first = app.claims(&registered["refreshToken"], TokenKind::Refresh);
    assert_eq!(access.sid, refresh.sid);
    assert_ne!(refresh.sid, first.sid, "each login is its own session");
    assert!(app.session_exists(first.sid).await);
    assert!(app.session_exists(refresh.sid).await);
}

#[tokio::test]
async fn the_email_is_matched_case_insensitively() {
    let app = spawn_app().await;
    app.registered("ada@example.com").await;
    let reply = app.login("ADA@Example.COM", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_401() {
    let app = spawn_app().await;
    app.registered("ada@example.com").await;

    let wrong_password = app.login("ada@example.com", "not the password").await;
    let unknown_email = app.login("nobody@example.com", PASSWORD).await;
    assert_eq!(wrong_password.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown_email.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_password.body, unknown_email.body);
    assert_eq!(wrong_password.message(), "Invalid email or password");
    // A short password is just a wrong one, not a validation error that would hint at policy.
    let short = app.login("ada@example.com", "short").await;
    assert_eq!(short.body, wrong_password.body);
}

#[tokio::test]
async fn invalid_login_bodies_are_400s() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({ "email": "not-an-email", "password": PASSWORD }),
            "email",
        ),
        (
            json!({ "email": "ada@example.com", "password": "" }),
            "password",
        ),
        (json!({ "email": "ada@example.com" }), "password"),
        (json!({ "password": PASSWORD }), "email"),
        (
            json!({ "email": "ada@example.com", "password": PASSWORD, "remember": true }),
            "remember",
        ),
    ];
    for (body, mentions) in cases {
        let reply = app.post("/auth/login").json(&body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.body
        );
        assert!(reply.message().contains(mentions), "{body}: {}", reply.body);
    }
}

#[tokio::test]
async fn login_outcomes_are_counted_in_metrics_and_ready_reports_redis() {
    let app = spawn_app().await;
    app.login("nobody@example.com", PASSWORD).await;
    let metrics = app
        .get("/metrics")
        .bearer(app.env.internal_token())
        .await
        .text;
    assert!(
        metrics.contains(r#"auth_logins_total{outcome="invalid_credentials"}"#),
        "{metrics}"
    );
    let ready = app.get("/ready").await.body;
    assert_eq!(ready["checks"]["redis"], "up", "{ready}");
}
