//! A service that is down, slow or sent too much: a clear answer in the envelope, never a hang.

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::stream;
use instaclone_gateway::routes::Upstream;
use uuid::Uuid;

use crate::helpers::{assert_error_envelope, closed_port_url, spawn_app_with, test_settings};

#[tokio::test]
async fn a_service_that_is_down_is_a_502_naming_it() {
    let app = spawn_app_with(test_settings(), |settings| {
        settings.services.notifications = closed_port_url();
    })
    .await;
    let (status, body) = app
        .get("/notifications/my")
        .bearer(app.token(Uuid::now_v7()))
        .await
        .parts();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_error_envelope(&body, 502);
    assert!(
        body["message"].as_str().unwrap().contains("notifications"),
        "{body}"
    );

    // The other services are unaffected.
    let response = app.get("/posts/me").bearer(app.token(Uuid::now_v7())).await;
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn a_slow_service_is_a_504_after_the_timeout() {
    let app = spawn_app_with(test_settings(), |settings| {
        settings.internal.request_timeout = Duration::from_millis(500);
    })
    .await;
    let response = app
        .get("/posts/me")
        .bearer(app.token(Uuid::now_v7()))
        .header("x-test-delay-ms", "5000")
        .map(|request| request.timeout(Duration::from_secs(4)))
        .try_send()
        .await
        .expect("the gateway answers before the client gives up");
    let (status, body) = response.parts();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_error_envelope(&body, 504);
    assert!(
        body["message"].as_str().unwrap().contains("posts"),
        "{body}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_whether_announced_or_streamed() {
    let app = spawn_app_with(test_settings(), |settings| {
        settings.http.body_limit_bytes = 1024;
    })
    .await;
    let token = app.token(Uuid::now_v7());

    let (status, body) = app
        .post("/posts")
        .bearer(&token)
        .body("x".repeat(2048))
        .await
        .parts();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_envelope(&body, 413);

    // Chunked: no Content-Length, the limit trips while the body streams to the service.
    let chunks = (0..8).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 512]));
    let (status, body) = app
        .post("/posts")
        .bearer(&token)
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .await
        .parts();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_error_envelope(&body, 413);

    // Within the limit it goes through.
    let response = app
        .post("/posts")
        .bearer(&token)
        .body("x".repeat(512))
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(app.service(Upstream::Posts).hits() >= 1);
}
