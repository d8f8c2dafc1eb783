//! MongoDB out of reach: posts answer 503 with `Retry-After`, never a 500, and a refused post
//! left nothing behind: neither a post nor its outbox entry (they are one write).

use std::time::Duration;

use instaclone_shared::testing::{TcpProxy, TestEnv, assert_unavailable};
use reqwest::StatusCode;

use crate::helpers::{post_body, spawn_app_with, user};

#[tokio::test]
async fn an_unreachable_mongodb_is_a_503_with_retry_after_and_writes_nothing() {
    let mut env = TestEnv::new();
    let (proxy, through_proxy) = TcpProxy::for_mongo(&env.settings).await;
    let direct = std::mem::replace(&mut env.settings.mongo.url, through_proxy);
    let mut app = spawn_app_with(env).await;
    // The test's own inspection goes straight to the server.
    app.env.settings.mongo.url = direct;
    let (author, token) = user(&app);
    let kept = app.create_post(&token, "before the outage").await;

    proxy.cut();
    let id = kept["_id"].as_str().unwrap();
    let requests = [
        (
            "POST /posts",
            app.post("/posts").json(&post_body("refused")),
        ),
        ("GET /posts/{id}", app.get(&format!("/posts/{id}"))),
        ("DELETE /posts/{id}", app.delete(&format!("/posts/{id}"))),
        ("GET /posts/me", app.get("/posts/me")),
        (
            "GET /users/{id}/posts",
            app.get(&format!("/users/{author}/posts")),
        ),
    ];
    for (what, request) in requests {
        assert_unavailable(&request.bearer(&token).await, what);
    }
    assert_eq!(
        app.stored_count().await,
        1,
        "the refused post was not stored"
    );

    proxy.restore().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = app
            .post("/posts")
            .bearer(&token)
            .json(&post_body("again"))
            .await
            .parts();
        if status == StatusCode::CREATED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never accepted again"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(app.stored_count().await, 2);
    let status = app.get(&format!("/posts/{id}")).bearer(&token).await.status;
    assert_eq!(
        status,
        StatusCode::OK,
        "the post from before is still there"
    );
}
