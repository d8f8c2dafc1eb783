//! The access token is checked before anything is forwarded; CORS is as configured; request
//! metrics are labelled by route template.

use axum::http::StatusCode;
use instaclone_gateway::{
    GatewaySettings,
    config::CorsOrigins,
    routes::{Access, PUBLIC_ROUTES, Target, Upstream},
};
use uuid::Uuid;

use crate::helpers::{assert_error_envelope, spawn_app, spawn_app_with, test_settings};

#[tokio::test]
async fn routes_needing_a_token_answer_401_without_one_and_forward_nothing() {
    let app = spawn_app().await;
    let id = Uuid::now_v7().to_string();
    let other_keys = instaclone_shared::testing::TestEnv::new();
    let forged = other_keys.access_token(Uuid::now_v7());
    let expired = app.env.access_token_expiring_in(Uuid::now_v7(), -5);
    for route in PUBLIC_ROUTES
        .iter()
        .filter(|r| r.access == Access::AccessToken)
    {
        let path = route.path.replace("{id}", &id);
        for token in [
            None,
            Some("not-a-jwt"),
            Some(forged.as_str()),
            Some(expired.as_str()),
        ] {
            let mut request = app.request(route.method.clone(), &path);
            if let Some(token) = token {
                request = request.bearer(token);
            }
            let (status, body) = request.await.parts();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{} {path}", route.method);
            assert_error_envelope(&body, 401);
        }
    }
    for upstream in Upstream::ALL {
        assert_eq!(app.service(upstream).hits(), 0, "{upstream:?} was reached");
    }
}

#[tokio::test]
async fn a_refresh_token_is_not_an_access_token_but_reaches_refresh() {
    let app = spawn_app().await;
    let (refresh, _) = app
        .env
        .issuer
        .issue(
            Uuid::now_v7(),
            Uuid::now_v7(),
            instaclone_shared::auth::TokenKind::Refresh,
        )
        .unwrap();
    let response = app.get("/users/me").bearer(&refresh).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);

    let (status, body) = app.post("/auth/refresh").bearer(&refresh).await.parts();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["data"]["headers"]["authorization"],
        format!("Bearer {refresh}"),
        "the service checks the refresh token itself"
    );
}

#[tokio::test]
async fn register_login_and_gateway_routes_need_no_token() {
    let app = spawn_app().await;
    for route in PUBLIC_ROUTES
        .iter()
        .filter(|r| r.access != Access::AccessToken)
    {
        let mut request = app.request(route.method.clone(), route.path);
        if route.path == "/metrics" {
            request = request.bearer(internal_token(&app));
        }
        let response = request.await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{} {}",
            route.method,
            route.path
        );
        if route.target == Target::Upstream(Upstream::Auth) {
            assert_eq!(response.headers["x-upstream"], "auth");
        }
    }
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let settings = GatewaySettings {
        cors: CorsOrigins::List(vec!["https://app.example".parse().unwrap()]),
        ..test_settings()
    };
    let app = spawn_app_with(settings, |_| {}).await;
    let preflight = |origin: &'static str| {
        app.request(reqwest::Method::OPTIONS, "/posts/feed")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://app.example").await;
    assert!(allowed.status.is_success(), "{}", allowed.status);
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let refused = preflight("https://evil.example").await;
    assert!(!refused.headers.contains_key("access-control-allow-origin"));
    assert_eq!(
        app.service(Upstream::Posts).hits(),
        0,
        "preflights stay here"
    );

    let response = app
        .post("/auth/login")
        .header("origin", "https://app.example")
        .await;
    assert_eq!(
        response.headers["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn without_cors_configured_no_cors_headers_are_sent() {
    let app = spawn_app().await;
    let response = app
        .post("/auth/login")
        .header("origin", "https://app.example")
        .await;
    assert!(!response.headers.contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn metrics_are_labelled_with_the_public_route_template_not_the_raw_path() {
    let app = spawn_app().await;
    let id = Uuid::now_v7();
    let response = app
        .get(&format!("/users/{id}/followers"))
        .bearer(app.token(Uuid::now_v7()))
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let metrics = app.get("/metrics").bearer(internal_token(&app)).await.text;
    let line = metrics
        .lines()
        .find(|line| {
            line.starts_with("http_requests_total")
                && line.contains(r#"service="gateway""#)
                && line.contains(r#"route="/users/{id}/followers""#)
        })
        .unwrap_or_else(|| panic!("no request counter for the route template:\n{metrics}"));
    assert!(line.contains(r#"status="200""#), "{line}");
    assert!(
        metrics.contains(r#"http_request_duration_seconds_bucket{service="gateway""#),
        "latency histogram missing"
    );
    assert!(
        !metrics.contains(&id.to_string()),
        "a raw path leaked into a label"
    );
}

fn internal_token(app: &crate::helpers::TestApp) -> String {
    app.env.internal_token()
}

#[tokio::test]
async fn metrics_need_the_service_credential() {
    let app = spawn_app().await;
    let scrape = |credential: Option<(&'static str, String)>| {
        let mut request = app.get("/metrics");
        if let Some((header, value)) = credential {
            request = request.header(header, value);
        }
        request.send()
    };
    let anonymous = scrape(None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let wrong = scrape(Some(("authorization", "Bearer guess".to_owned()))).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    // A user's access token is not the service credential.
    let user = format!("Bearer {}", app.token(Uuid::now_v7()));
    assert_eq!(
        scrape(Some(("authorization", user))).await.status,
        StatusCode::UNAUTHORIZED
    );
    let bearer = format!("Bearer {}", internal_token(&app));
    let scraped = scrape(Some(("authorization", bearer))).await;
    assert_eq!(scraped.status, StatusCode::OK);
    assert!(scraped.text.contains("http_requests_total"));
    let header = scrape(Some(("x-internal-token", internal_token(&app)))).await;
    assert_eq!(header.status, StatusCode::OK);
}
