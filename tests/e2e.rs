//! The whole journey through the public interfaces only: the `instaclone` binary (every part) and
//! a second realtime-hub replica, as separate processes on the real backing servers.
//!
//! Two users register through the gateway; one follows the other and the followed user gets a
//! live `follow` notification over WebSocket; the followed user posts and the follower gets
//! `post_created` over WebSocket (on one replica) and over SSE on another device (the other
//! replica); both appear in `GET /notifications/my`; a client that reconnects with its last id
//! receives what it missed.

#![allow(clippy::unwrap_used)] // test helpers, like the tests, fail by panicking

mod common;

use std::time::Duration;

use common::platform::{Platform, Socket, connect_ws, follow, history, post, register};
use futures_util::{SinkExt, StreamExt};
use instaclone_shared::testing::{SseStream, TestClient, TestEnv};
use serde_json::Value;
use tokio_tungstenite::tungstenite;

const WAIT: Duration = Duration::from_secs(20);

/// The next notification frame on `socket` (control frames and other message types skipped).
async fn next_notification(socket: &mut Socket) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(tungstenite::Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] == "notification" {
                        return frame;
                    }
                }
                Some(Ok(tungstenite::Message::Ping(payload))) => {
                    socket
                        .send(tungstenite::Message::Pong(payload))
                        .await
                        .unwrap();
                }
                Some(Ok(_)) => {}
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("no notification over WebSocket in time")
}

/// Reads SSE events until one `event: notification` arrives; returns its data.
async fn next_sse_notification(events: &mut SseStream) -> Value {
    let event = events
        .next_named("notification", WAIT)
        .await
        .expect("no notification over SSE in time");
    serde_json::from_str(&event.data).unwrap()
}

#[tokio::test]
async fn follow_and_post_notifications_reach_websocket_sse_and_history() {
    let env = TestEnv::new();
    let platform = Platform::start(&env, &[], 1).await;
    let gateway = &platform.gateway;
    let ada = register(gateway, &format!("ada{}", env.id)).await;
    let bob = register(gateway, &format!("bob{}", env.id)).await;

    // Bob listens on replica 2; Ada follows him.
    let mut bob_ws = connect_ws(&platform.hubs[1], &bob, None).await.unwrap();
    follow(gateway, &ada, &bob.id).await;
    let frame = next_notification(&mut bob_ws).await;
    assert_eq!(frame["data"]["type"], "follow");
    assert_eq!(frame["data"]["data"]["followerId"], ada.id.as_str());

    // Ada listens on replica 1 (WebSocket) and, on another device, on replica 2 (SSE).
    let mut ada_ws = connect_ws(&platform.hubs[0], &ada, None).await.unwrap();
    let mut ada_sse = TestClient::new(&platform.hubs[1])
        .get("/realtime/sse")
        .bearer(&ada.token)
        .sse()
        .await
        .unwrap_or_else(|refused| panic!("SSE refused: {}", refused.status));
    assert_eq!(ada_sse.status, 200);

    let posted = post(gateway, &bob, "sunset").await;
    let post_id = posted["_id"].as_str().unwrap().to_owned();

    let over_ws = next_notification(&mut ada_ws).await;
    assert_eq!(over_ws["data"]["type"], "post_created");
    assert_eq!(over_ws["data"]["data"]["postId"], post_id.as_str());
    let over_sse = next_sse_notification(&mut ada_sse).await;
    assert_eq!(over_sse["type"], "post_created");
    assert_eq!(over_sse["_id"], over_ws["data"]["_id"]);

    // Both notifications are in the history.
    for (user, kind) in [(&bob, "follow"), (&ada, "post_created")] {
        let kinds: Vec<String> = history(gateway, user)
            .await
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kinds, vec![kind], "history of {}", user.id);
    }

    // Ada drops off, misses a post, and resumes from her last id on the other replica.
    let last_id = over_ws["id"].as_str().unwrap().to_owned();
    drop(ada_ws);
    let missed = post(gateway, &bob, "second").await;
    // The SSE device stays live and sees it, so it has been stored by then.
    let live = next_sse_notification(&mut ada_sse).await;
    assert_eq!(live["data"]["postId"], missed["_id"]);
    let mut resumed = connect_ws(&platform.hubs[1], &ada, Some(&last_id))
        .await
        .unwrap();
    let replayed = next_notification(&mut resumed).await;
    assert_eq!(replayed["data"]["data"]["postId"], missed["_id"]);
    assert_ne!(replayed["id"], last_id.as_str());
}
