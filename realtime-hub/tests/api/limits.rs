//! Abuse from outside: one token opening socket after socket, one address opening many for
//! different users, a client guessing tickets, a plain GET trying to burn a ticket; and a user
//! ending every session, whose sockets close and whose old tokens stop working.

use std::time::Duration;

use instaclone_shared::testing::TestEnv;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use uuid::Uuid;

use crate::helpers::{Replica, SseClient, bearer, expect_connected, spawn_replica, ws_connect};

/// A replica with the given caps.
async fn replica_with(
    env: &mut TestEnv,
    per_user: usize,
    per_address: usize,
    failures: u32,
) -> Replica {
    env.settings.hub.max_connections_per_user = per_user;
    env.settings.hub.max_connections_per_address = per_address;
    env.settings.hub.max_failed_handshakes_per_minute = failures;
    spawn_replica(env).await
}

/// A WebSocket upgrade that must be refused: its status, `Retry-After` and error body.
async fn refused(
    replica: &Replica,
    token: Option<&str>,
    query: &str,
) -> (u16, Option<String>, serde_json::Value) {
    let mut request = replica.ws(query).into_client_request().unwrap();
    if let Some(token) = token {
        request.headers_mut().insert("authorization", bearer(token));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(tungstenite::Error::Http(response)) => {
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = response
                .body()
                .as_ref()
                .map(|bytes| serde_json::from_slice(bytes).unwrap())
                .unwrap_or_default();
            (response.status().as_u16(), retry_after, body)
        }
        Err(other) => panic!("WebSocket connect failed: {other}"),
    }
}

#[tokio::test]
async fn one_user_cannot_hold_more_than_its_cap_and_a_closed_slot_comes_back() {
    let mut env = TestEnv::new();
    let replica = replica_with(&mut env, 3, 0, 0).await;
    let token = env.access_token(Uuid::now_v7());
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut socket = ws_connect(&replica, &token, "").await;
        expect_connected(&mut socket).await;
        held.push(socket);
    }
    let (status, retry_after, body) = refused(&replica, Some(&token), "").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["statusCode"], 429);
    assert!(
        body["message"].as_str().unwrap().contains("this user"),
        "{body}"
    );
    assert!(retry_after.is_some(), "429 without Retry-After");
    // SSE counts against the same cap.
    assert_eq!(
        SseClient::connect(&replica, Some(&token), None, "")
            .await
            .err(),
        Some(429)
    );
    // Another user is not affected.
    ws_connect(&replica, &env.access_token(Uuid::now_v7()), "").await;

    // Closing one gives its slot back once the server sees it go.
    let mut closing = held.pop().unwrap();
    closing.close(None).await.unwrap();
    drop(closing);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut request = replica.ws("").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", bearer(&token));
        match tokio_tungstenite::connect_async(request).await {
            Ok(_) => break,
            Err(tungstenite::Error::Http(response)) if response.status() == 429 => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("{other}"),
        }
    }
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_cap() {
    let mut env = TestEnv::new();
    let replica = replica_with(&mut env, 0, 4, 0).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(ws_connect(&replica, &env.access_token(Uuid::now_v7()), "").await);
    }
    let (status, _, body) = refused(&replica, Some(&env.access_token(Uuid::now_v7())), "").await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("address"),
        "{body}"
    );
}

#[tokio::test]
async fn guessing_tickets_is_throttled_before_any_lookup() {
    let mut env = TestEnv::new();
    let replica = replica_with(&mut env, 0, 0, 5).await;
    for guess in 0..5 {
        let (status, _, _) = refused(&replica, None, &format!("?ticket=guess{guess}")).await;
        assert_eq!(status, 401, "guess {guess}");
    }
    // Now even a valid credential from this address waits out the window.
    let (status, retry_after, body) =
        refused(&replica, Some(&env.access_token(Uuid::now_v7())), "").await;
    assert_eq!(status, 429, "{body}");
    let seconds: u64 = retry_after.unwrap().parse().unwrap();
    assert!((1..=60).contains(&seconds), "{seconds}");
    assert!(
        body["message"].as_str().unwrap().contains("failed"),
        "{body}"
    );
}

#[tokio::test]
async fn a_plain_get_does_not_use_up_a_ticket() {
    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let issued = replica
        .post("/realtime/ticket")
        .bearer(env.access_token(Uuid::now_v7()))
        .await;
    let ticket = issued.data()["ticket"].as_str().unwrap();
    let plain = replica.get(&format!("/realtime/ws?ticket={ticket}")).await;
    assert!(plain.status.is_client_error(), "{}", plain.status);
    assert_ne!(plain.status, 401);
    // The ticket still opens its one connection.
    let request = replica
        .ws(&format!("?ticket={ticket}"))
        .into_client_request()
        .unwrap();
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the ticket was used up by the plain GET");
    expect_connected(&mut socket).await;
}

#[tokio::test]
async fn revoking_a_users_sessions_closes_their_sockets_and_refuses_their_old_tokens() {
    use instaclone_shared::revocation::Revocations;

    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let user = Uuid::now_v7();
    let token = env.access_token(user);
    let mut socket = ws_connect(&replica, &token, "").await;
    expect_connected(&mut socket).await;
    let bystander = env.access_token(Uuid::now_v7());
    let mut other = ws_connect(&replica, &bystander, "").await;
    expect_connected(&mut other).await;

    // What auth does on "log out everywhere": tokens issued before this moment stop counting.
    let revocations = Revocations::new(env.redis().await, env.settings.redis.clone());
    let at = chrono::Utc::now().timestamp() + 5;
    revocations
        .revoke_all(user, at, Duration::from_secs(60))
        .await
        .unwrap();

    assert_eq!(
        crate::helpers::close_code(&mut socket, Duration::from_secs(5)).await,
        Some(4004)
    );
    let (status, _, body) = refused(&replica, Some(&token), "").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    // Nobody else is touched.
    crate::helpers::assert_silent(&mut other, Duration::from_millis(300)).await;
}
