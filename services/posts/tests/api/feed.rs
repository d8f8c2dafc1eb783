//! The home feed: the caller's posts and those of everyone they follow, newest first, with the
//! follow graph read live from the real users service.

use reqwest::StatusCode;

use crate::helpers::spawn_app_with_users;

#[tokio::test]
async fn the_feed_follows_the_follow_graph() {
    let app = spawn_app_with_users().await;
    let (_, ada_token) = app.registered_user("ada").await;
    let (bob, bob_token) = app.registered_user("bob").await;
    let (_, cy_token) = app.registered_user("cyd").await;

    let id = |post: serde_json::Value| post["_id"].as_str().unwrap().to_owned();
    let bob_1 = id(app.create_post(&bob_token, "bob 1").await);
    let cy_1 = id(app.create_post(&cy_token, "cy 1").await);
    let ada_1 = id(app.create_post(&ada_token, "ada 1").await);
    let bob_2 = id(app.create_post(&bob_token, "bob 2").await);

    // Following nobody: only one's own posts.
    assert_eq!(
        app.list_ids(&ada_token, "/posts/feed").await,
        std::slice::from_ref(&ada_1)
    );

    app.set_following(&ada_token, bob, true).await;
    assert_eq!(
        app.list_ids(&ada_token, "/posts/feed").await,
        [bob_2.clone(), ada_1.clone(), bob_1.clone()],
        "own and followed posts, newest first, nobody else's (cy_1 = {cy_1})"
    );

    // Paging through the feed.
    let first = app.list_ids(&ada_token, "/posts/feed?limit=2").await;
    assert_eq!(first, [bob_2.clone(), ada_1.clone()]);
    let rest = app
        .list_ids(
            &ada_token,
            &format!("/posts/feed?limit=2&before={}", first[1]),
        )
        .await;
    assert_eq!(rest, std::slice::from_ref(&bob_1));

    // A deleted post leaves the feed at once.
    let (status, _) = app.delete(&bob_token, &format!("/posts/{bob_2}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.list_ids(&ada_token, "/posts/feed").await,
        [ada_1.clone(), bob_1.clone()]
    );

    // Unfollowing takes effect on the next request.
    app.set_following(&ada_token, bob, false).await;
    assert_eq!(app.list_ids(&ada_token, "/posts/feed").await, [ada_1]);
    // Bob's own feed never had Ada's posts: following is one-way.
    assert_eq!(app.list_ids(&bob_token, "/posts/feed").await, [bob_1]);
}

#[tokio::test]
async fn a_feed_page_is_refused_with_a_clear_400_before_the_graph_is_read() {
    let app = spawn_app_with_users().await;
    let (_, token) = app.registered_user("dee").await;
    for query in ["limit=0", "limit=101", "before=xyz", "page=2"] {
        let (status, body) = app.get(&token, &format!("/posts/feed?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
}

#[tokio::test]
async fn the_feed_is_a_503_not_a_500_while_the_users_service_is_down() {
    let mut env = instaclone_shared::testing::TestEnv::new();
    // Nothing listens on port 1.
    env.settings.services.users = "http://127.0.0.1:1".to_owned();
    let app = crate::helpers::spawn_app_with(env).await;
    let (_, token) = crate::helpers::user(&app);
    app.create_post(&token, "still works").await;
    let (status, body) = app.get(&token, "/posts/feed").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["statusCode"], 503);
    // Lists that do not need the graph are unaffected.
    assert_eq!(app.list_ids(&token, "/posts/me").await.len(), 1);
}
