//! Account-wide session control: logging out everywhere and changing the password end every
//! session; the password change hands the caller a new one.

use std::time::Duration;

use instaclone_shared::testing::TestResponse;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, spawn_app};

/// Revocation counts in whole seconds (a token's own resolution): let the second of the
/// existing tokens pass before revoking them.
async fn next_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

async fn change_password(app: &TestApp, access: &str, current: &str, new: &str) -> TestResponse {
    app.post("/auth/password")
        .bearer(access)
        .json(&json!({ "currentPassword": current, "newPassword": new }))
        .await
}

/// None of these sign-ins' refresh tokens works any more.
async fn assert_sessions_ended(app: &TestApp, sign_ins: &[&serde_json::Value]) {
    for sign_in in sign_ins {
        let refreshed = app.refresh(sign_in["refreshToken"].as_str().unwrap()).await;
        assert_eq!(
            refreshed.status,
            StatusCode::UNAUTHORIZED,
            "{}",
            refreshed.body
        );
    }
}

#[tokio::test]
async fn logging_out_everywhere_ends_every_device_s_session() {
    let app = spawn_app().await;
    app.registered("ada@example.com").await;
    let phone = app.logged_in("ada@example.com").await;
    let laptop = app.logged_in("ada@example.com").await;
    next_second().await;

    let access = phone["accessToken"].as_str().unwrap();
    let reply = app.post("/auth/logout-all").bearer(access).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_sessions_ended(&app, &[&phone, &laptop]).await;
    // Logging in again opens a session that works.
    let again = app.logged_in("ada@example.com").await;
    let refreshed = app.refresh(again["refreshToken"].as_str().unwrap()).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    // Without a token there is nothing to log out of.
    let anonymous = app.post("/auth/logout-all").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_password_change_needs_the_current_password_and_ends_every_other_session() {
    let app = spawn_app().await;
    app.registered("bob@example.com").await;
    let other_device = app.logged_in("bob@example.com").await;
    let this_device = app.logged_in("bob@example.com").await;
    let access = this_device["accessToken"].as_str().unwrap();
    next_second().await;

    let wrong = change_password(&app, access, "not my password", "a brand new secret").await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{}", wrong.body);
    let short = change_password(&app, access, PASSWORD, "short").await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST, "{}", short.body);
    let unknown = app
        .post("/auth/password")
        .bearer(access)
        .json(&json!({
            "currentPassword": PASSWORD, "newPassword": "a brand new secret", "admin": true
        }))
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.body);
    // None of those changed anything: the old password still logs in.
    app.logged_in("bob@example.com").await;

    let changed = change_password(&app, access, PASSWORD, "a brand new secret").await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    let fresh = changed.data()["refreshToken"].as_str().unwrap().to_owned();
    assert_sessions_ended(&app, &[&other_device, &this_device]).await;
    assert_eq!(app.refresh(&fresh).await.status, StatusCode::OK);
    assert_eq!(
        app.login("bob@example.com", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("bob@example.com", "a brand new secret")
            .await
            .status,
        StatusCode::OK
    );
}
