//! Deleting an account through the public API, as its owner would: the password is required, the
//! follows on both sides go (and the other users' counters with them), its posts leave the
//! platform and its followers' feeds, every session ends and its live socket closes.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::platform::{Platform, connect_ws, follow, post, register, wait_until};
use futures_util::StreamExt;
use instaclone_shared::testing::TestEnv;
use serde_json::json;
use tokio_tungstenite::tungstenite;

#[tokio::test]
async fn a_deleted_account_leaves_nothing_behind_and_its_sessions_end() {
    let env = TestEnv::new();
    let platform = Platform::start(&env, &[], 0).await;
    let gateway = &platform.gateway;
    let ada = register(gateway, &format!("ada{}", env.id)).await;
    let bob = register(gateway, &format!("bob{}", env.id)).await;
    follow(gateway, &bob, &ada.id).await;
    follow(gateway, &ada, &bob.id).await;
    let posted = post(gateway, &ada, "before I go").await;
    let post_id = posted["_id"].as_str().unwrap().to_owned();
    let get = |path: &str| gateway.get(path).bearer(&bob.token);
    wait_until(
        "ada's post in bob's feed",
        Duration::from_secs(20),
        || async {
            get("/posts/feed")
                .await
                .data()
                .as_array()
                .is_some_and(|posts| !posts.is_empty())
        },
    )
    .await;
    let mut socket = connect_ws(&platform.hubs[0], &ada, None).await.unwrap();

    let delete = |password: &str| {
        gateway
            .delete("/auth/account")
            .bearer(&ada.token)
            .json(&json!({ "password": password }))
    };
    assert_eq!(delete("not the password").await.status, 403);
    assert_eq!(delete("correct horse battery").await.status, 200);

    // Her live socket closes: every session ended.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    return frame.map(|f| u16::from(f.code));
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("the socket stayed open");
    assert_eq!(closed, Some(4004));
    // She cannot log in, and her token opens no socket.
    let login = gateway
        .post("/auth/login")
        .json(&json!({ "email": format!("ada{}@example.com", env.id), "password": "correct horse battery" }))
        .await;
    assert_eq!(login.status, 401);
    assert!(connect_ws(&platform.hubs[0], &ada, None).await.is_err());

    // Bob's counters and feed forget her; her post is gone.
    let me = get("/users/me").await.body;
    assert_eq!(me["data"]["followersCount"], 0, "{me}");
    assert_eq!(me["data"]["followingCount"], 0, "{me}");
    wait_until("her post gone", Duration::from_secs(20), || async {
        get(&format!("/posts/{post_id}")).await.status == 404
    })
    .await;
    wait_until(
        "bob's feed without her",
        Duration::from_secs(20),
        || async {
            get("/posts/feed")
                .await
                .data()
                .as_array()
                .is_some_and(Vec::is_empty)
        },
    )
    .await;
    let status = get(&format!("/users/{}", ada.id)).await.status;
    assert_eq!(status, 404);
}
