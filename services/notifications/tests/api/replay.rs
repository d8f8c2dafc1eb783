//! Rebuilding notifications from the event log.

use chrono::{Duration, Utc};
use instaclone_notifications::replay::ReplayReport;
use instaclone_shared::{
    events::{PostCreated, UserFollowed},
    testing::TestClient,
};
use mongodb::bson::{Document, doc};
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_users};

#[tokio::test]
async fn replay_rebuilds_what_is_missing_and_duplicates_nothing() {
    let started = Utc::now() - Duration::seconds(2);
    let app = spawn_app().await;
    let (author, author_token) = app.user(&format!("cam{}", app.env.id)).await;
    let (fan, fan_token) = app.user(&format!("dee{}", app.env.id)).await;
    app.follow(&fan_token, author).await;
    app.wait_for_notifications(&author_token, 1).await;
    let kept = app
        .publish(&UserFollowed {
            follower_id: Uuid::now_v7(),
            followed_id: fan,
            follower_username: "ada".to_owned(),
        })
        .await;
    let lost = app
        .publish(&UserFollowed {
            follower_id: Uuid::now_v7(),
            followed_id: fan,
            follower_username: "bea".to_owned(),
        })
        .await;
    let post = app
        .publish(&PostCreated {
            post_id: "65f0c0ffee0000000000abcd".to_owned(),
            author_id: author,
            caption: None,
            media_url: "https://cdn.example.com/a.jpg".to_owned(),
            created_at: Utc::now(),
        })
        .await;
    for event in [kept.id, lost.id, post.id] {
        app.wait_until_handled(event).await;
    }
    app.wait_for_notifications(&fan_token, 3).await;

    // Replaying over events that were all handled changes nothing.
    let report = instaclone_notifications::replay_since(&app.env.settings, started)
        .await
        .unwrap();
    assert_eq!(report.notifications_inserted, 0, "{report:?}");
    assert_eq!(report.events_handled, 0, "{report:?}");
    assert!(report.events_already_done >= 4, "{report:?}");
    assert_eq!(app.wait_for_notifications(&fan_token, 3).await.len(), 3);
    assert_eq!(app.wait_for_notifications(&author_token, 1).await.len(), 1);

    // Lose one event's notification (and its progress), as if the database were restored from
    // an older backup: the replay brings it back, once.
    let database = app.database().await;
    database
        .collection::<Document>("notifications")
        .delete_many(doc! { "eventId": lost.id.to_string() })
        .await
        .unwrap();
    database
        .collection::<Document>("event_progress")
        .delete_many(doc! { "_id": lost.id.to_string() })
        .await
        .unwrap();
    assert_eq!(app.my_notifications(&fan_token, "").await.len(), 2);

    let report = instaclone_notifications::replay_since(&app.env.settings, started)
        .await
        .unwrap();
    assert_eq!(report.notifications_inserted, 1, "{report:?}");
    assert_eq!(report.events_handled, 1, "{report:?}");
    let list = app.wait_for_notifications(&fan_token, 3).await;
    assert!(
        list.iter()
            .any(|n| n["message"] == "bea started following you")
    );
    assert_eq!(app.stored_count(lost.id).await, 1);

    let again = instaclone_notifications::replay_since(&app.env.settings, started)
        .await
        .unwrap();
    assert_eq!(again.notifications_inserted, 0, "{again:?}");
    assert_eq!(app.wait_for_notifications(&fan_token, 3).await.len(), 3);
}

#[tokio::test]
async fn replay_handles_events_no_consumer_saw_and_stops_at_the_end() {
    // Only the users service runs: events reach the log, nobody handles them.
    let app = spawn_users().await;
    let since = Utc::now() - Duration::seconds(2);
    let bob = Uuid::now_v7();
    let bob_token = app.env.access_token(bob);
    for name in ["ada", "cy"] {
        app.publish(&UserFollowed {
            follower_id: Uuid::now_v7(),
            followed_id: bob,
            follower_username: name.to_owned(),
        })
        .await;
    }

    let report = instaclone_notifications::replay_since(&app.env.settings, since)
        .await
        .unwrap();
    assert_eq!(
        report,
        ReplayReport {
            events_read: 2,
            events_handled: 2,
            events_already_done: 0,
            events_ignored: 0,
            events_failed: 0,
            notifications_inserted: 2,
        }
    );
    // Replay emits notification.created too, and those land in the log after the end it saw.
    let again = instaclone_notifications::replay_since(&app.env.settings, since)
        .await
        .unwrap();
    assert_eq!(again.notifications_inserted, 0, "{again:?}");
    assert_eq!(again.events_already_done, 2, "{again:?}");

    // Served by the service once it runs.
    let notifications = instaclone_notifications::build(&app.env.settings, app.shutdown.clone())
        .await
        .unwrap();
    let service = TestClient::new(format!("http://127.0.0.1:{}", notifications.port()));
    tokio::spawn(notifications.run_until_stopped());
    let reply = service.get("/notifications/my").bearer(&bob_token).await;
    assert_eq!(reply.data().as_array().unwrap().len(), 2);
}
