//! Follow, unfollow, their error cases and the paginated lists.

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{assert_error, ids, spawn_app};

#[tokio::test]
async fn follow_then_unfollow() {
    let app = spawn_app().await;
    let (ada, ada_token) = app.user("ada").await;
    let (grace, grace_token) = app.user("grace").await;

    let (status, body) = app.follow(&ada_token, grace).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["statusCode"], 201);
    assert_eq!(body["data"]["followerId"], ada.to_string());
    assert_eq!(body["data"]["followedId"], grace.to_string());

    let body = app.get("/users/following").bearer(&ada_token).await.body;
    assert_eq!(ids(&body), vec![grace]);
    let body = app.get("/users/followers").bearer(&grace_token).await.body;
    assert_eq!(ids(&body), vec![ada]);
    assert!(body["data"][0].get("email").is_none(), "{body}");

    let (status, body) = app.unfollow(&ada_token, grace).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["statusCode"], 200);
    let body = app.get("/users/following").bearer(&ada_token).await.body;
    assert!(ids(&body).is_empty());
    let body = app
        .get(&format!("/users/{grace}"))
        .bearer(&ada_token)
        .await
        .body;
    assert_eq!(body["data"]["followersCount"], 0);

    // And again: following after unfollowing works.
    assert_eq!(app.follow(&ada_token, grace).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn follow_errors() {
    let app = spawn_app().await;
    let (ada, ada_token) = app.user("ada").await;
    let (grace, _) = app.user("grace").await;

    let (status, body) = app.follow(&ada_token, ada).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (status, body) = app.follow(&ada_token, Uuid::now_v7()).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    assert_eq!(app.follow(&ada_token, grace).await.0, StatusCode::CREATED);
    let (status, body) = app.follow(&ada_token, grace).await;
    assert_error(status, &body, StatusCode::CONFLICT);

    for bad in [
        json!({}),
        json!({"userIdToFollow": "not-a-uuid"}),
        json!({"userIdToFollow": grace, "extra": 1}),
        json!({"userId": grace}),
    ] {
        let (status, body) = app
            .post("/users/follow")
            .bearer(&ada_token)
            .json(&bad)
            .await
            .parts();
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    let body = app
        .get(&format!("/users/{grace}"))
        .bearer(&ada_token)
        .await
        .body;
    assert_eq!(
        body["data"]["followersCount"], 1,
        "the failures changed nothing"
    );
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(outbox, 1, "one event for the one follow");
}

#[tokio::test]
async fn unfollow_errors() {
    let app = spawn_app().await;
    let (ada, ada_token) = app.user("ada").await;
    let (grace, _) = app.user("grace").await;
    let (status, body) = app.unfollow(&ada_token, grace).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = app.unfollow(&ada_token, Uuid::now_v7()).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = app.unfollow(&ada_token, ada).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (status, body) = app
        .post("/users/unfollow")
        .bearer(&ada_token)
        .json(&json!({"userIdToFollow": grace}))
        .await
        .parts();
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    // A second unfollow is "not following".
    assert_eq!(app.follow(&ada_token, grace).await.0, StatusCode::CREATED);
    assert_eq!(app.unfollow(&ada_token, grace).await.0, StatusCode::OK);
    let (status, body) = app.unfollow(&ada_token, grace).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lists_are_paginated_newest_first_with_a_hard_maximum() {
    let app = spawn_app().await;
    let (star, star_token) = app.user("star").await;
    let mut fans = Vec::new();
    for i in 0..5 {
        let (fan, token) = app.user(&format!("fan{i}")).await;
        assert_eq!(app.follow(&token, star).await.0, StatusCode::CREATED);
        fans.push(fan);
    }
    fans.reverse();

    // Pages of two: 2 + 2 + 1, then an empty page.
    let mut seen = Vec::new();
    let mut cursor: Option<Uuid> = None;
    for expected_len in [2, 2, 1, 0] {
        let path = match cursor {
            None => format!("/users/{star}/followers?limit=2"),
            Some(c) => format!("/users/{star}/followers?limit=2&cursor={c}"),
        };
        let (status, body) = app.get(&path).bearer(&star_token).await.parts();
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = ids(&body);
        assert_eq!(page.len(), expected_len, "{body}");
        cursor = page.last().copied();
        seen.extend(page);
    }
    assert_eq!(seen, fans);

    // The own list gives the same, and anyone can read anyone's list.
    let body = app
        .get("/users/followers?limit=10")
        .bearer(&star_token)
        .await
        .body;
    assert_eq!(ids(&body), fans);
    let fan_token = app.env.access_token(fans[0]);
    let body = app
        .get(&format!("/users/{star}/followers"))
        .bearer(&fan_token)
        .await
        .body;
    assert_eq!(ids(&body), fans);
    let body = app
        .get(&format!("/users/{}/following", fans[0]))
        .bearer(&star_token)
        .await
        .body;
    assert_eq!(ids(&body), vec![star]);

    // Limits: 0 is refused, too large is cut to the maximum (100).
    let (status, body) = app
        .get("/users/followers?limit=0")
        .bearer(&star_token)
        .await
        .parts();
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (status, body) = app
        .get("/users/followers?limit=100000")
        .bearer(&star_token)
        .await
        .parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    for bad in [
        "/users/followers?limit=abc".to_owned(),
        "/users/followers?cursor=nope".to_owned(),
        "/users/followers?page=2".to_owned(),
        "/users/not-a-uuid/followers".to_owned(),
    ] {
        let (status, body) = app.get(&bad).bearer(&star_token).await.parts();
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    for missing in [
        format!("/users/{}/following", Uuid::now_v7()),
        // A user who is not in the list is not a position in it: the cursor is well formed, the
        // position it names is not found.
        format!("/users/followers?cursor={}", Uuid::now_v7()),
    ] {
        let (status, body) = app.get(&missing).bearer(&star_token).await.parts();
        assert_error(status, &body, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn the_page_size_is_capped_at_one_hundred() {
    let app = spawn_app().await;
    let (star, token) = app.user("star").await;
    let pool = app.db().await;
    sqlx::query(
        "INSERT INTO users (id, email, username, password_hash) \
         SELECT gen_random_uuid(), 'fan' || n || '@example.com', 'fan' || n, 'h' FROM generate_series(1, 150) n",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO follows (id, follower_id, followed_id) \
         SELECT gen_random_uuid(), id, $1 FROM users WHERE id <> $1",
    )
    .bind(star)
    .execute(&pool)
    .await
    .unwrap();
    let body = app
        .get("/users/followers?limit=1000")
        .bearer(&token)
        .await
        .body;
    let first = ids(&body);
    assert_eq!(first.len(), 100);
    let body = app
        .get(&format!("/users/followers?limit=1000&cursor={}", first[99]))
        .bearer(&token)
        .await
        .body;
    let second = ids(&body);
    assert_eq!(second.len(), 50);
    assert!(second.iter().all(|id| !first.contains(id)));
}

#[tokio::test]
async fn concurrent_opposite_follows_both_succeed() {
    let app = spawn_app().await;
    let (ada, ada_token) = app.user("ada").await;
    let (grace, grace_token) = app.user("grace").await;
    for _ in 0..5 {
        let (a, b) = tokio::join!(app.follow(&ada_token, grace), app.follow(&grace_token, ada));
        assert_eq!(
            (a.0, b.0),
            (StatusCode::CREATED, StatusCode::CREATED),
            "{a:?} {b:?}"
        );
        let (a, b) = tokio::join!(
            app.unfollow(&ada_token, grace),
            app.unfollow(&grace_token, ada)
        );
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");
    }
    let body = app.get("/users/me").bearer(&ada_token).await.body;
    assert_eq!(body["data"]["followersCount"], 0);
    assert_eq!(body["data"]["followingCount"], 0);
}
