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

use std::{process::Stdio, time::Duration};

use common::{Running, free_port, instaclone};

use futures_util::{SinkExt, StreamExt};
use instaclone_shared::testing::TestEnv;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const WAIT: Duration = Duration::from_secs(20);

struct Platform {
    gateway: String,
    hubs: [String; 2],
    _processes: Vec<Running>,
}

/// Starts every part plus a second hub replica, all on this test's isolated resources and one
/// key pair, and waits until each answers `/ready`.
async fn start_platform(env: &TestEnv) -> Platform {
    let s = &env.settings;
    let ports = [
        ("GATEWAY_PORT", free_port()),
        ("AUTH_PORT", free_port()),
        ("USERS_PORT", free_port()),
        ("POSTS_PORT", free_port()),
        ("NOTIFICATIONS_PORT", free_port()),
        ("HUB_PORT", free_port()),
    ];
    let second_hub_port = free_port();
    let base = |extra: &[(&str, String)]| {
        let mut command = instaclone(env);
        command
            .envs(ports.iter().map(|(k, v)| (*k, v.to_string())))
            .env("STARTUP_WAIT_SECS", "10")
            .env(
                "JWT_PRIVATE_KEY",
                s.jwt.private_key_pem.as_ref().unwrap().expose(),
            )
            .env("JWT_PUBLIC_KEY", s.jwt.public_key_pem.as_ref().unwrap())
            .env(
                "INTERNAL_TOKEN",
                s.internal.token.as_ref().unwrap().expose(),
            )
            .envs(extra.iter().map(|(k, v)| (*k, v.clone())))
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        command
    };
    let all = base(&[]).spawn().expect("start instaclone");
    let second_hub = base(&[("HUB_PORT", second_hub_port.to_string())])
        .args(["--only", "hub"])
        .spawn()
        .expect("start the second hub replica");
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let platform = Platform {
        gateway: url(ports[0].1),
        hubs: [url(ports[5].1), url(second_hub_port)],
        _processes: vec![Running(all), Running(second_hub)],
    };
    let client = reqwest::Client::new();
    let mut every_part: Vec<String> = ports.iter().map(|(_, port)| url(*port)).collect();
    every_part.push(url(second_hub_port));
    for part in every_part {
        wait_until(&format!("{part}/ready ready"), || async {
            matches!(client.get(format!("{part}/ready")).send().await, Ok(r) if r.status().is_success())
        })
        .await;
    }
    platform
}

async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

struct User {
    id: String,
    token: String,
}

async fn register(client: &reqwest::Client, gateway: &str, name: &str) -> User {
    let response = client
        .post(format!("{gateway}/auth/register"))
        .json(
            &json!({ "email": format!("{name}@example.com"), "password": "correct horse battery" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "register {name}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["statusCode"], 201);
    User {
        id: body["data"]["user"]["id"].as_str().unwrap().to_owned(),
        token: body["data"]["accessToken"].as_str().unwrap().to_owned(),
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_ws(hub: &str, user: &User, last_event_id: Option<&str>) -> Socket {
    let mut url = format!("{}/realtime/ws", hub.replacen("http", "ws", 1));
    if let Some(id) = last_event_id {
        url.push_str(&format!("?lastEventId={id}"));
    }
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", user.token).parse().unwrap(),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket upgrade refused");
    socket
}

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
async fn next_sse_notification(response: &mut reqwest::Response, buffer: &mut String) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut event = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event = value.trim();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if event == "notification" {
                    return serde_json::from_str(&data).unwrap();
                }
            }
            let chunk = response.chunk().await.unwrap().expect("SSE stream ended");
            buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("no notification over SSE in time")
}

#[tokio::test]
async fn follow_and_post_notifications_reach_websocket_sse_and_history() {
    let env = TestEnv::new();
    let platform = start_platform(&env).await;
    let client = reqwest::Client::new();
    let gateway = &platform.gateway;
    let ada = register(&client, gateway, &format!("ada{}", env.id)).await;
    let bob = register(&client, gateway, &format!("bob{}", env.id)).await;

    // Bob listens on replica 2; Ada follows him.
    let mut bob_ws = connect_ws(&platform.hubs[1], &bob, None).await;
    let followed = client
        .post(format!("{gateway}/users/follow"))
        .bearer_auth(&ada.token)
        .json(&json!({ "userIdToFollow": bob.id }))
        .send()
        .await
        .unwrap();
    assert_eq!(followed.status(), 201);
    let frame = next_notification(&mut bob_ws).await;
    assert_eq!(frame["data"]["type"], "follow");
    assert_eq!(frame["data"]["data"]["followerId"], ada.id.as_str());

    // Ada listens on replica 1 (WebSocket) and, on another device, on replica 2 (SSE).
    let mut ada_ws = connect_ws(&platform.hubs[0], &ada, None).await;
    let mut ada_sse = client
        .get(format!("{}/realtime/sse", platform.hubs[1]))
        .bearer_auth(&ada.token)
        .send()
        .await
        .unwrap();
    assert_eq!(ada_sse.status(), 200);
    let mut sse_buffer = String::new();

    let posted = client
        .post(format!("{gateway}/posts"))
        .bearer_auth(&bob.token)
        .json(&json!({ "caption": "sunset", "mediaUrl": "https://cdn.example.com/sunset.jpg" }))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    let post: Value = posted.json().await.unwrap();
    let post_id = post["data"]["_id"].as_str().unwrap().to_owned();

    let over_ws = next_notification(&mut ada_ws).await;
    assert_eq!(over_ws["data"]["type"], "post_created");
    assert_eq!(over_ws["data"]["data"]["postId"], post_id.as_str());
    let over_sse = next_sse_notification(&mut ada_sse, &mut sse_buffer).await;
    assert_eq!(over_sse["type"], "post_created");
    assert_eq!(over_sse["_id"], over_ws["data"]["_id"]);

    // Both notifications are in the history.
    for (user, kind) in [(&bob, "follow"), (&ada, "post_created")] {
        let history: Value = client
            .get(format!("{gateway}/notifications/my"))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kinds: Vec<&str> = history["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, vec![kind], "history of {}", user.id);
    }

    // Ada drops off, misses a post, and resumes from her last id on the other replica.
    let last_id = over_ws["id"].as_str().unwrap().to_owned();
    drop(ada_ws);
    let missed = client
        .post(format!("{gateway}/posts"))
        .bearer_auth(&bob.token)
        .json(&json!({ "mediaUrl": "https://cdn.example.com/second.jpg" }))
        .send()
        .await
        .unwrap();
    assert_eq!(missed.status(), 201);
    let missed: Value = missed.json().await.unwrap();
    // The SSE device stays live and sees it, so it has been stored by then.
    let live = next_sse_notification(&mut ada_sse, &mut sse_buffer).await;
    assert_eq!(live["data"]["postId"], missed["data"]["_id"]);
    let mut resumed = connect_ws(&platform.hubs[1], &ada, Some(&last_id)).await;
    let replayed = next_notification(&mut resumed).await;
    assert_eq!(replayed["data"]["data"]["postId"], missed["data"]["_id"]);
    assert_ne!(replayed["id"], last_id.as_str());
}
