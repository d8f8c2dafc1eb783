//! PostgreSQL out of reach: every route that needs it answers 503 with `Retry-After` (never a
//! 500), and a refused write left nothing behind (repeating it afterwards succeeds once).

use std::time::Duration;

use instaclone_shared::testing::{TcpProxy, TestEnv, assert_unavailable};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn an_unreachable_database_is_a_503_with_retry_after_and_writes_nothing() {
    let env = TestEnv::new();
    let (proxy, through_proxy) = TcpProxy::for_postgres(&env.settings).await;
    let app = spawn_app_with(env, |settings| settings.postgres.users_url = through_proxy).await;
    let (_, ada_token) = app.user("ada").await;
    let (grace, _) = app.user("grace").await;

    proxy.cut();
    let follow = || {
        app.post("/users/follow")
            .bearer(&ada_token)
            .json(&json!({ "userIdToFollow": grace }))
    };
    let requests = [
        ("POST /users/follow", follow()),
        ("GET /users/me", app.get("/users/me").bearer(&ada_token)),
        (
            "PATCH /users/me",
            app.patch("/users/me")
                .bearer(&ada_token)
                .json(&json!({ "bio": "offline" })),
        ),
        (
            "GET /users/search",
            app.get("/users/search?q=gra").bearer(&ada_token),
        ),
        (
            "GET /users/{id}/followers",
            app.get(&format!("/users/{grace}/followers"))
                .bearer(&ada_token),
        ),
    ];
    for (what, request) in requests {
        assert_unavailable(&request.await, what);
    }

    proxy.restore().await;
    // The pool reconnects; the follow that was refused is accepted once, not found done already.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = follow().await.status;
        if status != StatusCode::SERVICE_UNAVAILABLE || tokio::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status, StatusCode::CREATED);
    let me = app.get("/users/me").bearer(&ada_token).await.body;
    assert_eq!(me["data"]["followingCount"], 1, "{me}");
    assert_ne!(me["data"]["bio"], "offline", "{me}");
}
