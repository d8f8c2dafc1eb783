//! The NestJS original's request sequence, through the gateway to the real services (auth,
//! users, posts, notifications, the realtime hub), all in-process on the real backing servers:
//! register, login, refresh, follow, following/followers, create post, feed, notifications, mark
//! read, read-all, unfollow, logout, with the original's bodies and envelope.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use instaclone_shared::testing::{TestClient, TestEnv};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{assert_error_envelope, test_settings};

/// How long an event may take to reach what it changes (a feed, a history): a bound for a
/// failing test, not a latency target. A loaded two-core CI machine running the Redis Cluster
/// pass once took over 20 s.
const EVENTUAL: Duration = Duration::from_secs(60);

struct Platform {
    gateway: TestClient,
    _env: TestEnv,
    _stop: tokio_util::sync::DropGuard,
}

/// How the gateway reaches the services.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Over HTTP, as separate processes would be.
    Http,
    /// By calling their routers, as in the all-in-one binary.
    InProcess,
}

async fn start_platform(reach: Reach) -> Platform {
    use instaclone_gateway::routes::Upstream;
    let mut env = TestEnv::new();
    let shutdown = CancellationToken::new();
    let url = |app: &instaclone_shared::server::ServiceApp| format!("http://{}", app.address());
    let mut in_process = Vec::new();
    let mut local = |upstream: Upstream, app: &instaclone_shared::server::ServiceApp| {
        if reach == Reach::InProcess {
            in_process.push((upstream, app.router()));
        }
    };

    let users = instaclone_users::build(&env.settings, shutdown.clone())
        .await
        .unwrap();
    env.settings.services.users = url(&users);
    local(Upstream::Users, &users);
    tokio::spawn(users.run_until_stopped());
    let auth = instaclone_auth::build(&env.settings, shutdown.clone())
        .await
        .unwrap();
    env.settings.services.auth = url(&auth);
    local(Upstream::Auth, &auth);
    tokio::spawn(auth.run_until_stopped());
    let posts = instaclone_posts::build(&env.settings, shutdown.clone())
        .await
        .unwrap();
    env.settings.services.posts = url(&posts);
    local(Upstream::Posts, &posts);
    tokio::spawn(posts.run_until_stopped());
    let notifications = instaclone_notifications::build(&env.settings, shutdown.clone())
        .await
        .unwrap();
    env.settings.services.notifications = url(&notifications);
    local(Upstream::Notifications, &notifications);
    tokio::spawn(notifications.run_until_stopped());
    let hub = instaclone_realtime_hub::build(&env.settings, shutdown.clone())
        .await
        .unwrap();
    env.settings.services.hub = url(&hub);
    local(Upstream::Hub, &hub);
    tokio::spawn(hub.run_until_stopped());

    let gateway = instaclone_gateway::build_in_process(
        &env.settings,
        test_settings(),
        in_process,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let address = url(&gateway);
    tokio::spawn(gateway.run_until_stopped());
    Platform {
        gateway: TestClient::new(address),
        _env: env,
        _stop: shutdown.drop_guard(),
    }
}

impl Platform {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .gateway
            .request(method.parse().unwrap(), path)
            .maybe_bearer(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.await.parts()
    }

    /// Calls until `done` accepts the body (events take a moment to flow).
    async fn until(&self, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + EVENTUAL;
        loop {
            let (status, body) = self.call("GET", path, Some(token), None).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            if done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never became as expected: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn ok(status: StatusCode, body: &Value, expected: u16) {
    assert_eq!(status.as_u16(), expected, "{body}");
    assert_eq!(body["statusCode"], expected, "{body}");
}

fn ids(list: &Value, field: &str) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|item| item[field].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_originals_request_sequence_works_through_the_gateway() {
    run_the_originals_sequence(start_platform(Reach::Http).await).await;
}

#[tokio::test]
async fn the_originals_request_sequence_works_with_the_services_in_process() {
    run_the_originals_sequence(start_platform(Reach::InProcess).await).await;
}

async fn run_the_originals_sequence(p: Platform) {
    // Register and log in.
    let (status, alice) = p
        .call("POST", "/auth/register", None, Some(json!({"email": "alice@example.com", "password": "correct horse battery", "username": "alice"})))
        .await;
    ok(status, &alice, 201);
    let alice_id = alice["data"]["user"]["id"].as_str().unwrap().to_owned();
    assert!(alice["data"]["accessToken"].is_string() && alice["data"]["refreshToken"].is_string());
    let (status, bob) = p
        .call("POST", "/auth/register", None, Some(json!({"email": "bob@example.com", "password": "another good one", "username": "bob"})))
        .await;
    ok(status, &bob, 201);
    let bob_id = bob["data"]["user"]["id"].as_str().unwrap().to_owned();
    let bob_token = bob["data"]["accessToken"].as_str().unwrap().to_owned();
    let (status, body) = p
        .call(
            "POST",
            "/auth/register",
            None,
            Some(json!({"email": "alice@example.com", "password": "whatever it is"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_error_envelope(&body, 409);

    let (status, login) = p
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "alice@example.com", "password": "correct horse battery"})),
        )
        .await;
    ok(status, &login, 200);
    let refresh_token = login["data"]["refreshToken"].as_str().unwrap().to_owned();
    let (status, refreshed) = p
        .call("POST", "/auth/refresh", Some(&refresh_token), None)
        .await;
    ok(status, &refreshed, 200);
    let alice_token = refreshed["data"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let alice_refresh = refreshed["data"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = p
        .call("POST", "/auth/refresh", Some(&refresh_token), None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a used refresh token: {body}"
    );

    let (status, me) = p.call("GET", "/users/me", Some(&alice_token), None).await;
    ok(status, &me, 200);
    assert_eq!(me["data"]["id"], alice_id.as_str());

    // Follow; lists.
    let (status, body) = p
        .call(
            "POST",
            "/users/follow",
            Some(&bob_token),
            Some(json!({"userIdToFollow": alice_id})),
        )
        .await;
    ok(status, &body, 201);
    let (status, following) = p
        .call("GET", "/users/following", Some(&bob_token), None)
        .await;
    ok(status, &following, 200);
    assert_eq!(ids(&following, "id"), [alice_id.as_str()]);
    let (status, followers) = p
        .call("GET", "/users/followers", Some(&alice_token), None)
        .await;
    ok(status, &followers, 200);
    assert_eq!(ids(&followers, "id"), [bob_id.as_str()]);

    // Bob's feed is read (and cached) after following, before Alice posts.
    let (status, feed) = p.call("GET", "/posts/feed", Some(&bob_token), None).await;
    ok(status, &feed, 200);
    assert_eq!(feed["data"], json!([]));

    // Alice posts; it shows in Bob's feed (his cached page is dropped by `post.created`).
    let (status, post) = p
        .call(
            "POST",
            "/posts",
            Some(&alice_token),
            Some(json!({"caption": "hello", "mediaUrl": "https://img.example/1.jpg"})),
        )
        .await;
    ok(status, &post, 201);
    let post_id = post["data"]["_id"].as_str().unwrap().to_owned();
    assert_eq!(post["data"]["userId"], alice_id.as_str());
    p.until("/posts/feed", &bob_token, |feed| {
        ids(feed, "_id") == [post_id.clone()]
    })
    .await;
    let (status, one) = p
        .call("GET", &format!("/posts/{post_id}"), Some(&bob_token), None)
        .await;
    ok(status, &one, 200);
    let (status, theirs) = p
        .call(
            "GET",
            &format!("/users/{alice_id}/posts"),
            Some(&bob_token),
            None,
        )
        .await;
    ok(status, &theirs, 200);
    assert_eq!(ids(&theirs, "_id"), [post_id.as_str()]);

    // Notifications: Alice was followed, Bob got Alice's post.
    let alice_notes = p
        .until("/notifications/my", &alice_token, |b| {
            !b["data"].as_array().unwrap().is_empty()
        })
        .await;
    assert_eq!(alice_notes["data"][0]["type"], "follow");
    assert_eq!(
        alice_notes["data"][0]["data"]["followerId"],
        bob_id.as_str()
    );
    let bob_notes = p
        .until("/notifications/my", &bob_token, |b| {
            !b["data"].as_array().unwrap().is_empty()
        })
        .await;
    assert_eq!(bob_notes["data"][0]["type"], "post_created");
    assert_eq!(bob_notes["data"][0]["data"]["postId"], post_id.as_str());

    let note_id = alice_notes["data"][0]["_id"].as_str().unwrap();
    let (status, body) = p
        .call(
            "POST",
            &format!("/notifications/{note_id}/read"),
            Some(&alice_token),
            None,
        )
        .await;
    ok(status, &body, 200);
    let (status, body) = p
        .call(
            "POST",
            &format!("/notifications/{note_id}/read"),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not Bob's: {body}");
    let (status, count) = p
        .call("GET", "/notifications/unread-count", Some(&bob_token), None)
        .await;
    ok(status, &count, 200);
    assert_eq!(count["data"]["count"], 1);
    let (status, body) = p
        .call("POST", "/notifications/read-all", Some(&bob_token), None)
        .await;
    ok(status, &body, 200);
    let (_, count) = p
        .call("GET", "/notifications/unread-count", Some(&bob_token), None)
        .await;
    assert_eq!(count["data"]["count"], 0);

    // A realtime ticket comes from the hub.
    let (status, ticket) = p
        .call("POST", "/realtime/ticket", Some(&bob_token), None)
        .await;
    assert!(status.is_success(), "{ticket}");

    // Unfollow, then log out: the session's refresh token stops working.
    let (status, body) = p
        .call(
            "POST",
            "/users/unfollow",
            Some(&bob_token),
            Some(json!({"userIdToUnfollow": alice_id})),
        )
        .await;
    ok(status, &body, 200);
    let (_, following) = p
        .call("GET", "/users/following", Some(&bob_token), None)
        .await;
    assert_eq!(following["data"], json!([]));
    let (status, body) = p
        .call("POST", "/auth/logout", Some(&alice_token), None)
        .await;
    ok(status, &body, 200);
    let (status, _) = p
        .call("POST", "/auth/refresh", Some(&alice_refresh), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
