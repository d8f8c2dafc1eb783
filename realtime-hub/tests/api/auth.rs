//! Credentials: bearer or one-time ticket, 401 before the upgrade, expiry ends the connection
//! unless refreshed in-band.

use std::time::Duration;

use instaclone_shared::testing::TestEnv;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Frame, Publisher, SseClient, close_code, expect_connected, next_frame, next_notification,
    notification, send_json, spawn_replica, try_ws_connect, ws_connect,
};

async fn ticket(replica: &crate::helpers::Replica, token: &str) -> (reqwest::StatusCode, Value) {
    replica.post("/realtime/ticket").bearer(token).await.parts()
}

#[tokio::test]
async fn bad_credentials_are_refused_with_401_before_the_upgrade() {
    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let user = Uuid::now_v7();

    assert_eq!(try_ws_connect(&replica, None, "").await.err(), Some(401));
    assert_eq!(
        try_ws_connect(&replica, Some("not-a-jwt"), "").await.err(),
        Some(401)
    );
    let expired = env.access_token_expiring_in(user, -10);
    assert_eq!(
        try_ws_connect(&replica, Some(&expired), "").await.err(),
        Some(401)
    );
    // A token signed by another deployment's key.
    let other = TestEnv::new();
    assert_eq!(
        try_ws_connect(&replica, Some(&other.access_token(user)), "")
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        try_ws_connect(&replica, None, "?ticket=made-up")
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        SseClient::connect(&replica, None, None, "").await.err(),
        Some(401)
    );
    assert_eq!(
        SseClient::connect(&replica, Some(&expired), None, "")
            .await
            .err(),
        Some(401)
    );

    let (status, body) = ticket(&replica, "garbage").await;
    assert_eq!(status, 401);
    assert_eq!(body["statusCode"], 401);
}

#[tokio::test]
async fn a_ticket_opens_one_connection_only() {
    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let publisher = Publisher::new(&env).await;
    let user = Uuid::now_v7();

    let (status, body) = ticket(&replica, &env.access_token(user)).await;
    assert_eq!(status, 201);
    assert_eq!(body["data"]["expiresIn"], 30);
    let first = body["data"]["ticket"].as_str().unwrap().to_owned();
    let query = format!("?ticket={first}");
    let mut socket = try_ws_connect(&replica, None, &query).await.unwrap();
    assert_eq!(
        try_ws_connect(&replica, None, &query).await.err(),
        Some(401)
    );

    let item = notification(user);
    publisher.publish(std::slice::from_ref(&item)).await;
    assert_eq!(next_notification(&mut socket).await["data"]["_id"], item.id);

    // SSE with a ticket, also single use.
    let (_, body) = ticket(&replica, &env.access_token(user)).await;
    let query = format!("?ticket={}", body["data"]["ticket"].as_str().unwrap());
    let mut events = SseClient::connect(&replica, None, None, &query)
        .await
        .unwrap();
    assert_eq!(
        SseClient::connect(&replica, None, None, &query).await.err(),
        Some(401)
    );
    let item = notification(user);
    publisher.publish(std::slice::from_ref(&item)).await;
    assert!(events.next_notification().await.data.contains(&item.id));
}

#[tokio::test]
async fn the_connection_closes_when_the_access_token_expires() {
    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let user = Uuid::now_v7();

    let mut socket = ws_connect(&replica, &env.access_token_expiring_in(user, 2), "").await;
    assert_eq!(
        close_code(&mut socket, Duration::from_secs(6)).await,
        Some(4001)
    );

    // An SSE stream ends with a reconnect event.
    let mut events = SseClient::connect(
        &replica,
        Some(&env.access_token_expiring_in(user, 2)),
        None,
        "",
    )
    .await
    .unwrap();
    events.expect_connected().await;
    let event = events.next_event(Duration::from_secs(6)).await.unwrap();
    assert_eq!(event.event, "reconnect");
    assert!(event.data.contains("token_expired"), "{}", event.data);
}

#[tokio::test]
async fn an_in_band_refresh_keeps_the_connection_and_a_bad_one_closes_it() {
    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let user = Uuid::now_v7();

    let mut socket = ws_connect(&replica, &env.access_token_expiring_in(user, 2), "").await;
    expect_connected(&mut socket).await;
    send_json(
        &mut socket,
        &json!({"type": "refresh", "token": env.access_token(user)}),
    )
    .await;
    match next_frame(&mut socket, Duration::from_secs(5)).await {
        Some(Frame::Json(frame)) => assert_eq!(frame["type"], "refreshed", "{frame}"),
        other => panic!("expected refreshed, got {other:?}"),
    }
    // Past the original expiry, still open.
    assert!(
        next_frame(&mut socket, Duration::from_secs(3))
            .await
            .is_none()
    );

    send_json(&mut socket, &json!({"type": "dance"})).await;
    match next_frame(&mut socket, Duration::from_secs(5)).await {
        Some(Frame::Json(frame)) => assert_eq!(frame["type"], "error", "{frame}"),
        other => panic!("expected an error message, got {other:?}"),
    }
    // Someone else's token is not a refresh of this connection.
    let stranger = env.access_token(Uuid::now_v7());
    send_json(&mut socket, &json!({"type": "refresh", "token": stranger})).await;
    assert_eq!(
        close_code(&mut socket, Duration::from_secs(5)).await,
        Some(4003)
    );
}

/// The web app (served by the gateway, another origin) opens SSE streams and asks for tickets.
#[tokio::test]
async fn browsers_on_another_origin_may_use_the_hub() {
    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let preflight = replica
        .request(reqwest::Method::OPTIONS, "/realtime/ticket")
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .await;
    assert!(preflight.status.is_success(), "{}", preflight.status);
    assert_eq!(preflight.headers["access-control-allow-origin"], "*");
    let (status, body) = ticket(&replica, &env.access_token(Uuid::now_v7())).await;
    assert_eq!(status, 201);
    let stream = replica
        .get(&format!(
            "/realtime/sse?ticket={}",
            body["data"]["ticket"].as_str().unwrap()
        ))
        .header("origin", "http://localhost:3000")
        .sse()
        .await
        .unwrap_or_else(|refused| panic!("SSE refused: {}", refused.status));
    assert_eq!(stream.status, 200);
    assert_eq!(stream.headers["access-control-allow-origin"], "*");
}
