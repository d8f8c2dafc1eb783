//! `postsCount` follows `post.created` / `post.deleted`, once per event id.

use std::time::Duration;

use chrono::Utc;
use instaclone_shared::{
    amqp::{EventPublisher, declare_work_queue},
    events::{EventEnvelope, PostCreated, PostDeleted},
};
use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

async fn posts_count(app: &TestApp, token: &str) -> i64 {
    let (status, body) = app.get("/users/me").bearer(token).await.parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["postsCount"].as_i64().unwrap()
}

async fn wait_for_count(app: &TestApp, token: &str, expected: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let count = posts_count(app, token).await;
        if count == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "postsCount stuck at {count}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn post_events_move_the_count_once_each() {
    let app = spawn_app().await;
    let (author, token) = app.user("ada").await;
    // Make sure the consumer's queue exists before publishing (the service declares the same).
    let (_connection, channel) = app.env.amqp_channel().await;
    let settings = &app.env.settings.amqp;
    declare_work_queue(
        &channel,
        settings,
        &instaclone_users::posts_count::queue_spec(settings),
    )
    .await
    .unwrap();
    let publisher = EventPublisher::new(settings.clone());

    let created = |post_id: &str| {
        EventEnvelope::new(
            "posts",
            &PostCreated {
                post_id: post_id.to_owned(),
                author_id: author,
                caption: None,
                media_url: "https://cdn.example.com/p.jpg".to_owned(),
                created_at: Utc::now(),
            },
        )
        .unwrap()
    };
    let first = created("p1");
    let second = created("p2");
    let second_again = second.clone();
    // The first one is delivered twice (a redelivery after a lost ack looks like this).
    publisher
        .publish_batch(&[first.clone(), second, first])
        .await
        .unwrap();
    wait_for_count(&app, &token, 2).await;

    // Events for unknown authors are consumed without effect.
    let stranger = EventEnvelope::new(
        "posts",
        &PostDeleted {
            post_id: "x".to_owned(),
            author_id: Uuid::now_v7(),
        },
    )
    .unwrap();
    let deleted = EventEnvelope::new(
        "posts",
        &PostDeleted {
            post_id: "p1".to_owned(),
            author_id: author,
        },
    )
    .unwrap();
    // Redeliveries of a delete and of an old create change nothing either: without the
    // idempotency the count would end at 3 - 2 + 1 = 2, not 2 - 1 = 1.
    publisher
        .publish_batch(&[stranger, deleted.clone(), deleted, second_again])
        .await
        .unwrap();
    wait_for_count(&app, &token, 1).await;
    // It stays there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(posts_count(&app, &token).await, 1);
}
