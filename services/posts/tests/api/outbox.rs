//! The outbox: `post.created` and `post.deleted` reach RabbitMQ even when it is down at write time.

use std::time::Duration;

use instaclone_posts::store::{POSTS_COLLECTION, PostStore};
use instaclone_shared::{
    events::{EventEnvelope, PostCreated, PostDeleted},
    testing::{TcpProxy, TestEnv},
};
use mongodb::bson::{self, doc, oid::ObjectId};
use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::{spawn_app_with, user};

#[tokio::test]
async fn events_written_while_the_broker_is_down_are_published_once_it_is_back() {
    let mut env = TestEnv::new();
    // An observer on the real broker, bound before anything is published.
    let (_observer_connection, observer) = env.amqp_channel().await;
    let queue = env.observer_queue(&observer, &["post.#"]).await;

    // The service reaches RabbitMQ only through a proxy the test can cut.
    let (proxy, through_proxy) = TcpProxy::for_rabbitmq(&env.settings).await;
    env.settings.amqp.url = through_proxy;
    let app = spawn_app_with(env).await;
    let (author, token) = user(&app);

    let first = app.create_post(&token, "while the broker is up").await;
    let first_id = first["_id"].as_str().unwrap().to_owned();
    let events = TestEnv::receive_events(&observer, &queue, 1, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 1, "post.created while up");
    let created: PostCreated = events[0].data().unwrap();
    assert_eq!(created.post_id, first_id);
    assert_eq!(created.author_id, author);
    assert_eq!(created.caption.as_deref(), Some("while the broker is up"));
    // Cut only once the broker has confirmed it (the relay then clears the document's outbox):
    // the observer can see the event before the confirm, which waits for every bound queue
    // (the quorum ones write it to disk first); a cut in between would, rightly, publish it
    // again (at-least-once) and this test is about events written during the outage.
    let posts = app.posts_collection().await;
    let first_oid = ObjectId::parse_str(&first_id).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while posts
        .count_documents(doc! { "_id": first_oid, "pendingSince": { "$exists": true } })
        .await
        .unwrap()
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first event never confirmed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    proxy.cut();
    let second = app.create_post(&token, "while the broker is down").await;
    let second_id = second["_id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .delete(&format!("/posts/{first_id}"))
        .bearer(&token)
        .await
        .parts();
    assert_eq!(
        status,
        StatusCode::OK,
        "deleting works without the broker: {body}"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        TestEnv::receive_events(&observer, &queue, 1, Duration::from_millis(300))
            .await
            .is_empty(),
        "nothing can get through the cut proxy"
    );
    // Both events wait inside their documents; the deleted post is a hidden tombstone.
    let pending = posts
        .count_documents(doc! { "pendingEvents.0": { "$exists": true } })
        .await
        .unwrap();
    assert_eq!(pending, 2);
    let status = app
        .get(&format!("/posts/{first_id}"))
        .bearer(&token)
        .await
        .status;
    assert_eq!(status, StatusCode::NOT_FOUND);

    proxy.restore().await;
    let mut events = TestEnv::receive_events(&observer, &queue, 2, Duration::from_secs(30)).await;
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
        TestEnv::receive_events(&observer, &queue, 1, Duration::from_millis(500))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn events_left_pending_by_a_stopped_process_are_published_by_the_next_one() {
    let env = TestEnv::new();
    let (_observer_connection, observer) = env.amqp_channel().await;
    let queue = env.observer_queue(&observer, &["post.#"]).await;

    // A post whose process stopped before its relay ran: the document and its event, no hint
    // in any living process.
    let id = ObjectId::new();
    let author = Uuid::now_v7();
    let event = EventEnvelope::new(
        "posts",
        &PostCreated {
            post_id: id.to_hex(),
            author_id: author,
            caption: Some("left pending".to_owned()),
            media_url: "https://cdn.example.com/left.jpg".to_owned(),
            created_at: chrono::Utc::now(),
        },
    )
    .unwrap();
    let mut document = PostStore::seed_document(
        id,
        author,
        "left pending",
        "https://cdn.example.com/left.jpg",
    );
    document.insert("pendingEvents", vec![bson::to_bson(&event).unwrap()]);
    document.insert("pendingSince", bson::DateTime::now());
    let posts = env
        .mongo(&env.settings.mongo.posts_database)
        .await
        .collection::<bson::Document>(POSTS_COLLECTION);
    posts.insert_one(document).await.unwrap();

    // The next process's first relay round sweeps the backlog.
    let _app = spawn_app_with(env).await;
    let events = TestEnv::receive_events(&observer, &queue, 1, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 1, "the leftover event is published");
    assert_eq!(events[0].id, event.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while posts
        .count_documents(doc! { "_id": id, "pendingSince": { "$exists": true } })
        .await
        .unwrap()
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox fields not cleared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn concurrent_posts_are_each_stored_and_announced_and_their_outboxes_settle() {
    let env = TestEnv::new();
    let (_observer_connection, observer) = env.amqp_channel().await;
    let queue = env.observer_queue(&observer, &["post.created"]).await;
    let app = spawn_app_with(env).await;
    let (_, token) = user(&app);

    // Many at once: they share insertMany calls and relay rounds.
    let captions: Vec<String> = (0..60).map(|n| format!("burst {n}")).collect();
    let posts = futures_util::future::join_all(
        captions
            .iter()
            .map(|caption| app.create_post(&token, caption)),
    )
    .await;
    let mut ids: Vec<String> = posts
        .iter()
        .map(|post| post["_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 60, "60 distinct posts");
    assert_eq!(app.stored_count().await, 60);
    let events = TestEnv::receive_events(&observer, &queue, 60, Duration::from_secs(15)).await;
    let mut announced: Vec<String> = events
        .iter()
        .map(|event| event.data::<PostCreated>().unwrap().post_id)
        .collect();
    announced.sort();
    assert_eq!(announced, ids, "one post.created for each");
    // Published events' documents lose their outbox fields soon after (batched).
    let posts_collection = app.posts_collection().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pending = posts_collection
            .count_documents(doc! { "pendingSince": { "$exists": true } })
            .await
            .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} posts still carry their outbox"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        TestEnv::receive_events(&observer, &queue, 1, Duration::from_millis(500))
            .await
            .is_empty(),
        "an event was published twice"
    );
}
