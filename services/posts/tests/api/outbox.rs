//! The outbox: `post.created` and `post.deleted` reach RabbitMQ even when it is down at write time.

use std::time::Duration;

use instaclone_shared::{
    events::{EventEnvelope, PostCreated, PostDeleted},
    testing::{TcpProxy, TestEnv},
};
use lapin::{
    options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use mongodb::bson::doc;
use reqwest::StatusCode;

use crate::helpers::{spawn_app_with, user};

/// Events delivered to `queue`, waiting up to `within` for `count` of them.
async fn receive(
    channel: &lapin::Channel,
    queue: &str,
    count: usize,
    within: Duration,
) -> Vec<EventEnvelope> {
    let deadline = tokio::time::Instant::now() + within;
    let mut events = Vec::new();
    while events.len() < count && tokio::time::Instant::now() < deadline {
        match channel
            .basic_get(queue, BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                events.push(EventEnvelope::from_slice(&message.delivery.data).unwrap())
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    events
}

#[tokio::test]
async fn events_written_while_the_broker_is_down_are_published_once_it_is_back() {
    let mut env = TestEnv::new();
    // An observer on the real broker, bound before anything is published.
    let (_observer_connection, observer) = env.amqp_channel().await;
    let queue = observer
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue = queue.name().as_str().to_owned();
    observer
        .queue_bind(
            &queue,
            &env.settings.amqp.exchange,
            "post.#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // The service reaches RabbitMQ only through a proxy the test can cut.
    let (proxy, through_proxy) = TcpProxy::for_rabbitmq(&env.settings).await;
    env.settings.amqp.url = through_proxy;
    let app = spawn_app_with(env).await;
    let (author, token) = user(&app);

    let first = app.create_post(&token, "while the broker is up").await;
    let first_id = first["_id"].as_str().unwrap().to_owned();
    let events = receive(&observer, &queue, 1, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 1, "post.created while up");
    let created: PostCreated = events[0].data().unwrap();
    assert_eq!(created.post_id, first_id);
    assert_eq!(created.author_id, author);
    assert_eq!(created.caption.as_deref(), Some("while the broker is up"));

    proxy.cut();
    let second = app.create_post(&token, "while the broker is down").await;
    let second_id = second["_id"].as_str().unwrap().to_owned();
    let (status, body) = app.delete(&token, &format!("/posts/{first_id}")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "deleting works without the broker: {body}"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        receive(&observer, &queue, 1, Duration::from_millis(300))
            .await
            .is_empty(),
        "nothing can get through the cut proxy"
    );
    // Both events wait inside their documents; the deleted post is a hidden tombstone.
    let posts = app.posts_collection().await;
    let pending = posts
        .count_documents(doc! { "pendingEvents.0": { "$exists": true } })
        .await
        .unwrap();
    assert_eq!(pending, 2);
    let (status, _) = app.get(&token, &format!("/posts/{first_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    proxy.restore().await;
    let mut events = receive(&observer, &queue, 2, Duration::from_secs(30)).await;
    assert_eq!(
        events.len(),
        2,
        "both events arrive after the outage: {events:?}"
    );
    events.sort_by_key(|e| e.event_type.clone());
    let created: PostCreated = events[0].data().unwrap();
    assert_eq!(created.post_id, second_id);
    assert_eq!(created.caption.as_deref(), Some("while the broker is down"));
    let deleted: PostDeleted = events[1].data().unwrap();
    assert_eq!(deleted.post_id, first_id);
    assert_eq!(deleted.author_id, author);

    // Once confirmed, the outbox entries go, and so does the tombstone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tombstone = posts
            .count_documents(doc! { "caption": "while the broker is up" })
            .await
            .unwrap();
        let still_pending = posts
            .count_documents(doc! { "pendingSince": { "$exists": true } })
            .await
            .unwrap();
        if tombstone == 0 && still_pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tombstone {tombstone}, pending {still_pending}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.list_ids(&token, "/posts/me").await, [second_id]);
    // No duplicate was published.
    assert!(
        receive(&observer, &queue, 1, Duration::from_millis(500))
            .await
            .is_empty()
    );
}
