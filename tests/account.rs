//! Deleting an account through the public API, as its owner would: the password is required, the
//! follows on both sides go (and the other users' counters with them), its posts leave the
//! platform and its followers' feeds, every session ends and its live socket closes.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::platform::{Platform, connect_ws, follow, post, register, wait_until};
use futures_util::StreamExt;
use instaclone_shared::testing::TestEnv;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

async fn get(client: &reqwest::Client, url: String, token: &str) -> (u16, Value) {
    let response = client.get(url).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_deleted_account_leaves_nothing_behind_and_its_sessions_end() {
    let env = TestEnv::new();
    let platform = Platform::start(&env, &[], 0).await;
    let client = reqwest::Client::new();
    let gateway = platform.gateway.clone();
    let ada = register(&client, &gateway, &format!("ada{}", env.id)).await;
    let bob = register(&client, &gateway, &format!("bob{}", env.id)).await;
    follow(&client, &gateway, &bob, &ada.id).await;
    follow(&client, &gateway, &ada, &bob.id).await;
    let posted = post(&client, &gateway, &ada, "before I go").await;
    let post_id = posted["_id"].as_str().unwrap().to_owned();
    let feed = format!("{gateway}/posts/feed");
    wait_until(
        "ada's post in bob's feed",
        Duration::from_secs(20),
        || async {
            get(&client, feed.clone(), &bob.token).await.1["data"]
                .as_array()
                .is_some_and(|posts| !posts.is_empty())
        },
    )
    .await;
    let mut socket = connect_ws(&platform.hubs[0], &ada, None).await.unwrap();

    let delete = |password: &str| {
        client
            .delete(format!("{gateway}/auth/account"))
            .bearer_auth(&ada.token)
            .json(&json!({ "password": password }))
            .send()
    };
    assert_eq!(delete("not the password").await.unwrap().status(), 403);
    assert_eq!(delete("correct horse battery").await.unwrap().status(), 200);

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
    let login = client
        .post(format!("{gateway}/auth/login"))
        .json(&json!({ "email": format!("ada{}@example.com", env.id), "password": "correct horse battery" }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 401);
    assert!(connect_ws(&platform.hubs[0], &ada, None).await.is_err());

    // Bob's counters and feed forget her; her post is gone.
    let (_, me) = get(&client, format!("{gateway}/users/me"), &bob.token).await;
    assert_eq!(me["data"]["followersCount"], 0, "{me}");
    assert_eq!(me["data"]["followingCount"], 0, "{me}");
    wait_until("her post gone", Duration::from_secs(20), || async {
        get(&client, format!("{gateway}/posts/{post_id}"), &bob.token)
            .await
            .0
            == 404
    })
    .await;
    wait_until(
        "bob's feed without her",
        Duration::from_secs(20),
        || async {
            get(&client, feed.clone(), &bob.token).await.1["data"]
                .as_array()
                .is_some_and(Vec::is_empty)
        },
    )
    .await;
    let (status, _) = get(&client, format!("{gateway}/users/{}", ada.id), &bob.token).await;
    assert_eq!(status, 404);
}
