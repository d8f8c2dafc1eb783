//! Rate limits live in Redis: per user on authenticated routes, per client address on anonymous
//! ones, shared by every gateway replica.

use std::time::Duration;

use axum::http::StatusCode;
use instaclone_gateway::{GatewaySettings, config::RateLimit, routes::Upstream};
use instaclone_shared::client_address::ClientAddressPolicy;
use uuid::Uuid;

use crate::helpers::{assert_error_envelope, spawn_app_with, test_settings};

fn limited(anonymous: u32, user: u32) -> GatewaySettings {
    let window = Duration::from_secs(60);
    GatewaySettings {
        anonymous_limit: RateLimit {
            requests: anonymous,
            window,
        },
        user_limit: RateLimit {
            requests: user,
            window,
        },
        ..test_settings()
    }
}

#[tokio::test]
async fn a_user_over_the_limit_gets_429_with_retry_after_and_others_do_not() {
    let app = spawn_app_with(limited(100, 3), |_| {}).await;
    let alice = app.token(Uuid::now_v7());
    let get_me = |token: String| app.get("/users/me").bearer(token).send();
    for _ in 0..3 {
        assert_eq!(get_me(alice.clone()).await.status, StatusCode::OK);
    }
    let response = get_me(alice.clone()).await;
    assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let body = response.body;
    assert_error_envelope(&body, 429);
    assert_eq!(
        app.service(Upstream::Users).hits(),
        3,
        "limited requests are not forwarded"
    );

    // Another user (same address) has their own budget.
    let bob = app.token(Uuid::now_v7());
    assert_eq!(get_me(bob).await.status, StatusCode::OK);
}

#[tokio::test]
async fn anonymous_routes_are_limited_per_client_address() {
    let app = spawn_app_with(limited(2, 100), |_| {}).await;
    let login = || app.post("/auth/login").send();
    for _ in 0..2 {
        assert_eq!(login().await.status, StatusCode::OK);
    }
    let response = login().await;
    assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers.contains_key("retry-after"));

    // Health and metrics are never limited: probes must keep working.
    for _ in 0..5 {
        let health = app.get("/health").await;
        assert_eq!(health.status, StatusCode::OK);
    }
    // Authenticated routes spend the user's budget, not the address's.
    let response = app.get("/users/me").bearer(app.token(Uuid::now_v7())).await;
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn replicas_share_one_budget_through_redis() {
    let app = spawn_app_with(limited(100, 4), |_| {}).await;
    let (replica, _stop) = app.replica(limited(100, 4)).await;
    let token = app.token(Uuid::now_v7());
    for gateway in [&app.client, &replica, &app.client, &replica] {
        let response = gateway.get("/users/me").bearer(&token).await;
        assert_eq!(response.status, StatusCode::OK);
    }
    for gateway in [&app.client, &replica] {
        let response = gateway.get("/users/me").bearer(&token).await;
        assert_eq!(
            response.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            gateway.base_url
        );
    }
}

#[tokio::test]
async fn the_budget_refills_over_the_window() {
    let settings = GatewaySettings {
        user_limit: RateLimit {
            requests: 2,
            window: Duration::from_secs(1),
        },
        ..test_settings()
    };
    let app = spawn_app_with(settings, |_| {}).await;
    let token = app.token(Uuid::now_v7());
    let get_me = || app.get("/users/me").bearer(&token).send();
    assert_eq!(get_me().await.status, StatusCode::OK);
    assert_eq!(get_me().await.status, StatusCode::OK);
    assert_eq!(get_me().await.status, StatusCode::TOO_MANY_REQUESTS);
    // One request is earned back every half second.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(get_me().await.status, StatusCode::OK);
}

/// Behind a trusted proxy (the test client connects from loopback), the proxy's entry decides
/// the bucket: the rightmost one, since everything to its left was written by the client.
fn behind_a_proxy(header: Option<&str>) -> GatewaySettings {
    let policy = ClientAddressPolicy::new(ClientAddressPolicy::parse_list("127.0.0.1").unwrap());
    GatewaySettings {
        client_addresses: match header {
            Some(name) => policy.with_header(name.parse().unwrap()),
            None => policy,
        },
        ..limited(1, 100)
    }
}

#[tokio::test]
async fn the_client_address_header_of_a_trusted_proxy_picks_the_bucket() {
    let app = spawn_app_with(behind_a_proxy(Some("x-real-ip")), |_| {}).await;
    let login = |ip: &'static str| app.post("/auth/login").header("x-real-ip", ip).send();
    assert_eq!(login("203.0.113.1").await.status, StatusCode::OK);
    assert_eq!(
        login("203.0.113.1").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(login("203.0.113.2").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_client_cannot_pick_its_bucket_by_writing_forwarded_for() {
    // Without trusted proxies the header is ignored altogether: one peer, one bucket.
    let direct = spawn_app_with(limited(1, 100), |_| {}).await;
    let login = |app: &crate::helpers::TestApp, forwarded: String| {
        app.post("/auth/login")
            .header("x-forwarded-for", forwarded)
            .send()
    };
    assert_eq!(
        login(&direct, "198.51.100.1".into()).await.status,
        StatusCode::OK
    );
    let second = login(&direct, "198.51.100.2".into()).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);

    // Behind a proxy, forged entries to the left of the proxy's own change nothing.
    let proxied = spawn_app_with(behind_a_proxy(None), |_| {}).await;
    let first = login(&proxied, "10.9.9.1, 203.0.113.7".into()).await;
    assert_eq!(first.status, StatusCode::OK);
    for forged in 2..5 {
        let response = login(&proxied, format!("10.9.9.{forged}, 203.0.113.7")).await;
        assert_eq!(
            response.status,
            StatusCode::TOO_MANY_REQUESTS,
            "forged entry {forged}"
        );
    }
}

#[tokio::test]
async fn ipv6_clients_share_one_bucket_per_64() {
    let app = spawn_app_with(behind_a_proxy(None), |_| {}).await;
    let login = |ip: &'static str| app.post("/auth/login").header("x-forwarded-for", ip).send();
    assert_eq!(login("2001:db8:1:2::1").await.status, StatusCode::OK);
    // Another address of the same /64 is the same client.
    assert_eq!(
        login("2001:db8:1:2:ffff:1:2:3").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(login("2001:db8:1:3::1").await.status, StatusCode::OK);
}
