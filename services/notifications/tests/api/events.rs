//! From a published event to stored notifications and `notification.created` emissions.

use std::collections::HashSet;

use chrono::Utc;
use instaclone_notifications::store::{NotificationDocument, NotificationStore};
use instaclone_notifications::{
    domain::{NotificationData, NotificationKind},
    events::Outcome,
};
use instaclone_shared::{
    amqp::HandlerError,
    auth::InternalToken,
    events::{EventEnvelope, NotificationView, PostCreated, UserFollowed},
    testing::TcpProxy,
    users_internal::UsersClient,
};
use mongodb::bson;
use uuid::Uuid;

use crate::helpers::{WAIT, seed_followers, spawn_app};

fn post_by(author: Uuid) -> PostCreated {
    PostCreated {
        post_id: "65f0c0ffee0000000000abcd".to_owned(),
        author_id: author,
        caption: Some("sunset".to_owned()),
        media_url: "https://cdn.example.com/sunset.jpg".to_owned(),
        created_at: Utc::now(),
    }
}

#[tokio::test]
async fn a_follow_through_the_users_service_notifies_the_followed_user() {
    let app = spawn_app().await;
    let mut created = app.listen_for_created().await;
    let (ada, ada_token) = app.user(&format!("ada{}", app.env.id)).await;
    let (bob, bob_token) = app.user(&format!("bob{}", app.env.id)).await;

    app.follow(&ada_token, bob).await;

    let list = app.wait_for_notifications(&bob_token, 1).await;
    let notification = &list[0];
    assert_eq!(notification["type"], "follow");
    assert_eq!(notification["userId"], bob.to_string());
    assert_eq!(
        notification["message"],
        format!("ada{} started following you", app.env.id)
    );
    assert_eq!(
        notification["data"],
        serde_json::json!({ "followerId": ada.to_string() })
    );
    assert_eq!(notification["read"], false);
    for field in ["_id", "createdAt", "updatedAt"] {
        assert!(notification[field].is_string(), "{field} in {notification}");
    }
    assert!(app.my_notifications(&ada_token, "").await.is_empty());
    let count = app
        .get("/notifications/unread-count")
        .bearer(&bob_token)
        .await
        .body;
    assert_eq!(count["data"], serde_json::json!({ "count": 1 }));

    // The hub is told, with the same notification as the history serves.
    created.until(|seen| !seen.is_empty()).await;
    assert_eq!(created.seen.len(), 1);
    assert_eq!(
        serde_json::to_value(&created.seen[0]).unwrap(),
        *notification
    );
}

#[tokio::test]
async fn a_post_notifies_every_follower_of_its_author_by_name() {
    let app = spawn_app().await;
    let (author, author_token) = app.user(&format!("cam{}", app.env.id)).await;
    let mut followers = Vec::new();
    for name in ["dee", "eve", "fay"] {
        let (id, token) = app.user(&format!("{name}{}", app.env.id)).await;
        app.follow(&token, author).await;
        followers.push((id, token));
    }
    app.wait_for_notifications(&author_token, 3).await;
    let mut created = app.listen_for_created().await;

    let event = app.publish(&post_by(author)).await;

    for (id, token) in &followers {
        let list = app.wait_for_notifications(token, 1).await;
        assert_eq!(list[0]["type"], "post_created");
        assert_eq!(list[0]["userId"], id.to_string());
        assert_eq!(
            list[0]["message"],
            format!("cam{} shared a new post", app.env.id)
        );
        assert_eq!(
            list[0]["data"],
            serde_json::json!({
                "authorId": author.to_string(),
                "postId": "65f0c0ffee0000000000abcd",
                "caption": "sunset",
                "mediaUrl": "https://cdn.example.com/sunset.jpg",
            })
        );
    }
    app.wait_until_handled(event.id).await;
    // The listener may also catch the author's follow notifications, emitted just after they
    // became readable above: count only the post's.
    let posts_seen =
        |seen: &[NotificationView]| seen.iter().filter(|n| n.kind == "post_created").count();
    created.until(|seen| posts_seen(seen) >= 3).await;
    let expected: HashSet<Uuid> = followers.iter().map(|(id, _)| *id).collect();
    let recipients: HashSet<Uuid> = created
        .seen
        .iter()
        .filter(|n| n.kind == "post_created")
        .map(|n| n.user_id)
        .collect();
    assert_eq!(recipients, expected);
    assert_eq!(posts_seen(&created.seen), 3, "one notification each");
    // The author is not notified of their own post.
    assert_eq!(app.wait_for_notifications(&author_token, 3).await.len(), 3);
}

#[tokio::test]
async fn a_redelivered_event_creates_no_duplicate() {
    let app = spawn_app().await;
    let (bob, bob_token) = app.user(&format!("bob{}", app.env.id)).await;
    let event = EventEnvelope::new(
        "test",
        &UserFollowed {
            follower_id: Uuid::now_v7(),
            followed_id: bob,
            follower_username: "ada".to_owned(),
        },
    )
    .unwrap();

    app.publisher.publish(&event).await.unwrap();
    app.wait_until_handled(event.id).await;
    // The same event again (a producer retry, or a redelivery after a lost ack).
    app.publisher.publish(&event).await.unwrap();
    app.publisher.publish(&event).await.unwrap();
    // A later event on the same queue proves the repeats were consumed before we look.
    let marker = app
        .publish(&UserFollowed {
            follower_id: Uuid::now_v7(),
            followed_id: bob,
            follower_username: "zed".to_owned(),
        })
        .await;
    app.wait_until_handled(marker.id).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    assert_eq!(app.stored_count(event.id).await, 1);
    assert_eq!(app.wait_for_notifications(&bob_token, 2).await.len(), 2);
}

#[tokio::test]
async fn a_redelivery_after_a_partial_fan_out_completes_it_without_duplicates() {
    let app = spawn_app().await;
    let (author, _) = app.user(&format!("cam{}", app.env.id)).await;
    let followers = seed_followers(&app.env, author, 30).await;
    let event = EventEnvelope::new("test", &post_by(author)).unwrap();

    // What a delivery that died mid-fan-out leaves: some notifications stored (perhaps never
    // emitted), no progress recorded.
    let store = NotificationStore::new(&app.database().await);
    let earlier: Vec<NotificationDocument> = followers[..5]
        .iter()
        .map(|&follower| {
            NotificationDocument::new(
                (event.id, event.occurred_at),
                follower,
                NotificationKind::PostCreated,
                "cam shared a new post".to_owned(),
                NotificationData::PostCreated {
                    author_id: author.to_string(),
                    post_id: "65f0c0ffee0000000000abcd".to_owned(),
                    caption: Some("sunset".to_owned()),
                    media_url: "https://cdn.example.com/sunset.jpg".to_owned(),
                },
                bson::DateTime::now(),
            )
        })
        .collect();
    let earlier_ids: HashSet<String> = earlier.iter().map(|n| n.id.to_hex()).collect();
    store.insert_batch(earlier).await.unwrap();
    let mut created = app.listen_for_created().await;

    app.publisher.publish(&event).await.unwrap();
    app.wait_until_handled(event.id).await;

    assert_eq!(app.stored_count(event.id).await, 30);
    created.until(|seen| seen.len() >= 30).await;
    let recipients = created.recipients();
    assert_eq!(recipients.len(), 30, "every follower is emitted");
    assert!(
        recipients.values().all(|&times| times == 1),
        "{recipients:?}"
    );
    // The notifications stored before are emitted as they were stored (same ids).
    let emitted_ids: HashSet<String> = created.seen.iter().map(|n| n.id.clone()).collect();
    assert!(earlier_ids.is_subset(&emitted_ids));
}

#[tokio::test]
async fn a_fan_out_cut_off_from_the_users_service_resumes_where_it_stopped() {
    let app = spawn_app().await;
    let (author, _) = app.user(&format!("cam{}", app.env.id)).await;
    let followers = seed_followers(&app.env, author, 60).await;
    let event = EventEnvelope::new("test", &post_by(author)).unwrap();

    let upstream = app
        .users_api
        .base_url
        .trim_start_matches("http://")
        .to_owned();
    let proxy = TcpProxy::start(&upstream).await;
    let token = InternalToken::new(app.env.settings.internal.token.clone().unwrap());
    let through_proxy = UsersClient::new(
        &format!("http://127.0.0.1:{}", proxy.port()),
        token,
        std::time::Duration::from_secs(2),
    );
    let store = NotificationStore::new(&app.database().await);
    let processor = instaclone_notifications::events::EventProcessor::new(
        store,
        through_proxy,
        app.publisher.clone(),
    )
    .with_follower_page(10);
    let mut created = app.listen_for_created().await;

    // Let the first pages through, then cut the users service off mid-fan-out.
    let handling = processor.handle(&event);
    let cut = async {
        created.until(|seen| seen.len() >= 10).await;
        proxy.cut();
    };
    let (outcome, ()) = tokio::join!(handling, cut);
    match outcome {
        Err(HandlerError::Transient(_)) => {}
        // The fan-out may have finished just before the cut.
        Ok(Outcome::Handled { .. }) => {}
        other => panic!("unexpected outcome {other:?}"),
    }
    let stored_before = app.stored_count(event.id).await;
    assert!(stored_before >= 10, "{stored_before}");

    proxy.restore().await;
    let outcome = tokio::time::timeout(WAIT, processor.handle(&event))
        .await
        .unwrap();
    if stored_before < 60 {
        assert!(
            matches!(
                outcome,
                Ok(Outcome::Handled {
                    notifications: 60,
                    ..
                })
            ),
            "{outcome:?}"
        );
    }
    assert_eq!(app.stored_count(event.id).await, 60);
    created
        .until(|seen| seen.iter().map(|n| n.user_id).collect::<HashSet<_>>().len() >= 60)
        .await;
    let recipients = created.recipients();
    assert_eq!(
        recipients.keys().copied().collect::<HashSet<_>>(),
        followers.into_iter().collect::<HashSet<_>>()
    );
    // Done now: a further delivery does nothing.
    assert_eq!(
        processor.handle(&event).await.unwrap(),
        Outcome::AlreadyDone
    );
}

#[tokio::test]
async fn poison_messages_go_to_the_dead_letter_queue_and_consuming_goes_on() {
    let app = spawn_app().await;
    let (bob, bob_token) = app.user(&format!("bob{}", app.env.id)).await;

    app.publish_raw("user.followed", b"this is not an event")
        .await;
    assert_eq!(app.next_dead_letter().await, b"this is not an event");

    // A well-formed envelope whose payload is not a user.followed.
    let mut malformed = EventEnvelope::new(
        "test",
        &UserFollowed {
            follower_id: Uuid::now_v7(),
            followed_id: bob,
            follower_username: "ada".to_owned(),
        },
    )
    .unwrap();
    malformed.data =
        serde_json::value::to_raw_value(&serde_json::json!({ "followerId": "not-a-uuid" }))
            .unwrap();
    app.publisher.publish(&malformed).await.unwrap();
    let dead = EventEnvelope::from_slice(&app.next_dead_letter().await).unwrap();
    assert_eq!(dead.id, malformed.id);

    // A post by an author the users service does not know can never be handled either.
    let orphan = app.publish(&post_by(Uuid::now_v7())).await;
    let dead = EventEnvelope::from_slice(&app.next_dead_letter().await).unwrap();
    assert_eq!(dead.id, orphan.id);

    let fine = app
        .publish(&UserFollowed {
            follower_id: Uuid::now_v7(),
            followed_id: bob,
            follower_username: "ada".to_owned(),
        })
        .await;
    app.wait_until_handled(fine.id).await;
    assert_eq!(app.wait_for_notifications(&bob_token, 1).await.len(), 1);
}

#[tokio::test]
async fn posts_of_one_author_in_one_message_are_fanned_out_together_and_once() {
    let app = spawn_app().await;
    let (author, _) = app.user(&format!("dan{}", app.env.id)).await;
    let followers = seed_followers(&app.env, author, 25).await;
    let (other, _) = app.user(&format!("eve{}", app.env.id)).await;
    let mut other_followers = Vec::new();
    for name in ["fay", "gus"] {
        let (follower, token) = app.user(&format!("{name}{}", app.env.id)).await;
        app.follow(&token, other).await;
        other_followers.push(follower);
    }
    let mut events: Vec<EventEnvelope> = (0..4)
        .map(|_| EventEnvelope::new("test", &post_by(author)).unwrap())
        .collect();
    events.push(EventEnvelope::new("test", &post_by(other)).unwrap());
    let mut created = app.listen_for_created().await;

    // One message, as the posts relay sends a round of posts; then the same message again, as a
    // republish after a lost confirm would.
    app.publisher.publish_batch(&events).await.unwrap();
    app.publisher.publish_batch(&events).await.unwrap();
    for event in &events {
        app.wait_until_handled(event.id).await;
    }
    for event in &events[..4] {
        assert_eq!(app.stored_count(event.id).await, 25, "one per follower");
    }
    assert_eq!(app.stored_count(events[4].id).await, 2);
    created
        .until(|seen| {
            seen.iter()
                .filter(|n| n.kind == "post_created")
                .map(|n| &n.id)
                .collect::<HashSet<_>>()
                .len()
                >= 102
        })
        .await;
    // Every follower heard of each of the author's posts, under one id each (re-emissions of
    // the repeat carry the same ids, which the hub drops).
    let ids_by_recipient = |recipient: Uuid| {
        created
            .seen
            .iter()
            .filter(|n| n.user_id == recipient && n.kind == "post_created")
            .map(|n| n.id.clone())
            .collect::<HashSet<_>>()
            .len()
    };
    assert!(followers.iter().all(|&f| ids_by_recipient(f) == 4));
    assert!(other_followers.iter().all(|&f| ids_by_recipient(f) == 1));
}
