use std::time::Duration;

use instaclone_auth::AuthOptions;
use instaclone_shared::testing::TestResponse;
use reqwest::{StatusCode, header::RETRY_AFTER};

use crate::helpers::{PASSWORD, limits, spawn_app_with};

fn retry_after(reply: &TestResponse) -> u64 {
    reply
        .header(RETRY_AFTER)
        .expect("429 without Retry-After")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn repeated_failures_lock_the_account_with_retry_after() {
    let app = spawn_app_with(AuthOptions {
        login_limits: limits(3, 100, Duration::from_secs(60)),
        ..AuthOptions::default()
    })
    .await;
    app.registered("ada@example.com").await;
    app.registered("grace@example.com").await;

    for _ in 0..3 {
        let reply = app.login("ada@example.com", "wrong password").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    }
    let limited = app.login("ada@example.com", "wrong password").await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.body
    );
    assert_eq!(limited.body["statusCode"], 429);
    let wait = retry_after(&limited);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");

    // Locked means locked: the right password does not get through (or the limit would tell a
    // guesser which guess was right). The email's case does not matter.
    let right = app.login("ADA@example.com", PASSWORD).await;
    assert_eq!(
        right.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        right.body
    );

    // Other accounts from the same address are unaffected.
    let other = app.login("grace@example.com", PASSWORD).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
}

#[tokio::test]
async fn the_address_limit_covers_guesses_across_accounts() {
    let app = spawn_app_with(AuthOptions {
        login_limits: limits(100, 3, Duration::from_secs(60)),
        ..AuthOptions::default()
    })
    .await;
    app.registered("ada@example.com").await;
    for i in 0..3 {
        let reply = app.login(&format!("user{i}@example.com"), PASSWORD).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    }
    let limited = app.login("ada@example.com", PASSWORD).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.body
    );
    assert!(retry_after(&limited) >= 1);
}

#[tokio::test]
async fn successful_logins_do_not_count() {
    let app = spawn_app_with(AuthOptions {
        login_limits: limits(2, 2, Duration::from_secs(60)),
        ..AuthOptions::default()
    })
    .await;
    app.registered("ada@example.com").await;
    for _ in 0..4 {
        app.logged_in("ada@example.com").await;
    }
    assert_eq!(
        app.login("ada@example.com", "wrong").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("ada@example.com", "wrong").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("ada@example.com", "wrong").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn concurrent_guesses_cannot_overrun_the_limit() {
    let app = spawn_app_with(AuthOptions {
        login_limits: limits(3, 100, Duration::from_secs(60)),
        ..AuthOptions::default()
    })
    .await;
    app.registered("ada@example.com").await;
    let replies = futures_util::future::join_all(
        (0..12).map(|i| app.login("ada@example.com", if i == 11 { PASSWORD } else { "wrong" })),
    )
    .await;
    let tried = replies
        .iter()
        .filter(|r| r.status != StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(tried <= 3, "{tried} attempts were checked, the limit is 3");
}

#[tokio::test]
async fn the_limit_slides_open_again_after_the_window() {
    let app = spawn_app_with(AuthOptions {
        login_limits: limits(1, 100, Duration::from_secs(1)),
        ..AuthOptions::default()
    })
    .await;
    app.registered("ada@example.com").await;
    assert_eq!(
        app.login("ada@example.com", "wrong").await.status,
        StatusCode::UNAUTHORIZED
    );
    let limited = app.login("ada@example.com", PASSWORD).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&limited), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        app.login("ada@example.com", PASSWORD).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    // Untrusted: a fresh X-Forwarded-For per guess does not escape the address limit.
    let app = spawn_app_with(AuthOptions {
        login_limits: limits(100, 2, Duration::from_secs(60)),
        trusted_proxies: Vec::new(),
        ..AuthOptions::default()
    })
    .await;
    let guess = |forwarded: &'static str, email: &'static str| {
        app.post("/auth/login")
            .header("x-forwarded-for", forwarded)
            .json(&serde_json::json!({ "email": email, "password": "wrong" }))
    };
    assert_eq!(
        guess("203.0.113.1", "a@example.com").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        guess("203.0.113.2", "b@example.com").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        guess("203.0.113.3", "c@example.com").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    drop(app);

    // Behind a trusted proxy (the test client is 127.0.0.1, loopback is trusted by default), each
    // forwarded client has its own budget.
    let app = spawn_app_with(AuthOptions {
        login_limits: limits(100, 2, Duration::from_secs(60)),
        ..AuthOptions::default()
    })
    .await;
    let guess = |forwarded: &'static str, email: &'static str| {
        app.post("/auth/login")
            .header("x-forwarded-for", forwarded)
            .json(&serde_json::json!({ "email": email, "password": "wrong" }))
    };
    assert_eq!(
        guess("203.0.113.1", "a@example.com").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        guess("203.0.113.1", "b@example.com").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        guess("203.0.113.1", "c@example.com").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        guess("203.0.113.2", "d@example.com").await.status,
        StatusCode::UNAUTHORIZED
    );
}
