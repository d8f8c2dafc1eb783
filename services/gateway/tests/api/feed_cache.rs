//! The home feed is cached per user; a user's own writes drop their cache; nobody is ever served
//! another user's feed.

use std::time::Duration;

use axum::http::StatusCode;
use instaclone_gateway::routes::Upstream;
use instaclone_shared::{
    amqp::{EventPublisher, declare_work_queue},
    events::{EventEnvelope, PostCreated},
};
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, start_followers_service, test_settings};

async fn feed(
    app: &crate::helpers::TestApp,
    token: &str,
    query: &str,
) -> (String, serde_json::Value) {
    let response = app.get(&format!("/posts/feed{query}")).bearer(token).await;
    assert_eq!(response.status, StatusCode::OK);
    let cache = response.headers["x-cache"].to_str().unwrap().to_owned();
    let body = response.body;
    (cache, body)
}

#[tokio::test]
async fn a_repeated_feed_read_is_served_from_the_cache_for_that_user_only() {
    let app = spawn_app().await;
    let alice = app.token(Uuid::now_v7());
    let bob = app.token(Uuid::now_v7());

    let (first, first_body) = feed(&app, &alice, "?limit=10").await;
    let (second, second_body) = feed(&app, &alice, "?limit=10").await;
    assert_eq!((first.as_str(), second.as_str()), ("MISS", "HIT"));
    assert_eq!(first_body, second_body);
    assert_eq!(app.service(Upstream::Posts).hits(), 1);

    // Bob never gets Alice's page, even for the same query.
    let (bobs, bobs_body) = feed(&app, &bob, "?limit=10").await;
    assert_eq!(bobs, "MISS");
    assert_eq!(
        bobs_body["data"]["headers"]["authorization"],
        format!("Bearer {bob}")
    );
    // Another page is another entry.
    let (other_page, _) = feed(&app, &alice, "?limit=10&before=abc").await;
    assert_eq!(other_page, "MISS");
    assert_eq!(app.service(Upstream::Posts).hits(), 3);
}

#[tokio::test]
async fn the_users_own_post_or_follow_drops_their_cached_feed() {
    let app = spawn_app().await;
    let alice = app.token(Uuid::now_v7());
    let bob = app.token(Uuid::now_v7());
    feed(&app, &alice, "").await;
    feed(&app, &bob, "").await;
    assert_eq!(feed(&app, &alice, "").await.0, "HIT");

    let response = app
        .post("/posts")
        .bearer(&alice)
        .body(r#"{"mediaUrl":"https://img.example/1.jpg"}"#)
        .await;
    assert!(response.status.is_success());
    assert_eq!(feed(&app, &alice, "").await.0, "MISS");
    assert_eq!(
        feed(&app, &bob, "").await.0,
        "HIT",
        "only the author's cache goes"
    );

    let response = app.post("/users/follow").bearer(&bob).await;
    assert!(response.status.is_success());
    assert_eq!(feed(&app, &bob, "").await.0, "MISS");
}

#[tokio::test]
async fn failed_reads_are_not_cached() {
    let app = spawn_app().await;
    let alice = app.token(Uuid::now_v7());
    for _ in 0..2 {
        let response = app
            .get("/posts/feed")
            .bearer(&alice)
            .header("x-test-status", "400")
            .await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST);
    }
    assert_eq!(app.service(Upstream::Posts).hits(), 2);
}

#[tokio::test]
async fn a_post_event_drops_the_cached_feeds_of_the_authors_followers() {
    let (author, alice, carol, bob) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let followers = start_followers_service(author, vec![alice, carol]).await;
    let app = spawn_app_with(test_settings(), |settings| {
        settings.services.users = followers.url.clone();
    })
    .await;
    let tokens = [alice, carol, bob].map(|user| app.token(user));
    for token in &tokens {
        feed(&app, token, "").await;
        assert_eq!(feed(&app, token, "").await.0, "HIT");
    }

    // Make sure the gateway's queue exists before publishing (the consumer may still be starting).
    let (_connection, channel) = app.env.amqp_channel().await;
    let settings = &app.env.settings.amqp;
    declare_work_queue(
        &channel,
        settings,
        &instaclone_gateway::feed_cache_queue(settings),
    )
    .await
    .unwrap();
    let created = PostCreated {
        post_id: "65f0c0ffee0000000000abcd".to_owned(),
        author_id: author,
        caption: None,
        media_url: "https://img.example/1.jpg".to_owned(),
        created_at: chrono::Utc::now(),
    };
    EventPublisher::new(settings.clone())
        .publish(&EventEnvelope::new("posts", &created).unwrap())
        .await
        .unwrap();

    // Both followers' entries go (the second one is on the second page of followers).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    for token in &tokens[..2] {
        loop {
            let (cache, _) = feed(&app, token, "").await;
            if cache == "MISS" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "follower's feed still cached"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(feed(&app, &tokens[2], "").await.0, "HIT", "not a follower");
    assert!(followers.hits() >= 2, "followers were read page by page");
}

#[tokio::test]
async fn distinct_query_strings_cannot_grow_a_users_cache_nor_keep_it_alive() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let token = app.token(user);
    for page in 0..50 {
        feed(&app, &token, &format!("?limit=10&before=p{page}")).await;
    }
    let mut redis = app.env.redis().await;
    let key = app
        .env
        .settings
        .redis
        .key(&format!("gateway:feedcache:{user}"));
    let entries: usize = redis::cmd("HLEN")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        (1..=instaclone_gateway::feed_cache::MAX_ENTRIES_PER_USER).contains(&entries),
        "{entries} cached pages"
    );

    // Writes do not push the expiry out: it counts from the hash's first write.
    let reader = Uuid::now_v7();
    let token = app.token(reader);
    let key = app
        .env
        .settings
        .redis
        .key(&format!("gateway:feedcache:{reader}"));
    feed(&app, &token, "?limit=10").await;
    let first: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(first > 0, "the hash has no expiry");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for page in 0..3 {
        feed(&app, &token, &format!("?limit=10&again={page}")).await;
    }
    let later: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        later < first,
        "a write extended the expiry ({first} ms -> {later} ms)"
    );
}
