//! A follow/unfollow/follow cycle notifies the followed user once per window; history and
//! bookkeeping are deleted past their retention, and with the account they belong to.

use chrono::{TimeDelta, Utc};
use instaclone_notifications::{
    domain::{NotificationData, NotificationKind},
    retention,
    store::{NotificationDocument, NotificationStore},
};
use instaclone_shared::{config::NotificationSettings, events::UserFollowed};
use mongodb::bson::{self, doc};
use uuid::Uuid;

use crate::helpers::spawn_app;

#[tokio::test]
async fn repeated_follows_of_one_pair_notify_once_per_window() {
    let app = spawn_app().await;
    let (bob, bob_token) = app.user("bob").await;
    let ada = Uuid::now_v7();
    let follow = |follower: Uuid| UserFollowed {
        follower_id: follower,
        followed_id: bob,
        follower_username: "ada".to_owned(),
    };
    let mut created = app.listen_for_created().await;
    // Follow, (unfollow,) follow again, five times over.
    for _ in 0..5 {
        let event = app.publish(&follow(ada)).await;
        app.wait_until_handled(event.id).await;
    }
    // Someone else's follow is a notification of its own.
    let other = app.publish(&follow(Uuid::now_v7())).await;
    app.wait_until_handled(other.id).await;

    let history = app.my_notifications(&bob_token, "").await;
    let from_ada = history
        .iter()
        .filter(|n| n["data"]["followerId"] == ada.to_string())
        .count();
    assert_eq!(from_ada, 1, "{history:#?}");
    assert_eq!(history.len(), 2, "{history:#?}");
    created.until(|seen| seen.len() >= 2).await;
    assert_eq!(
        created.recipients()[&bob],
        2,
        "one notification.created each"
    );
}

fn old_notification(recipient: Uuid, days_ago: i64) -> NotificationDocument {
    let at = Utc::now() - TimeDelta::days(days_ago);
    NotificationDocument::new(
        (Uuid::now_v7(), at),
        recipient,
        NotificationKind::Follow,
        "ada started following you".to_owned(),
        NotificationData::Follow {
            follower_id: Uuid::now_v7().to_string(),
        },
        bson::DateTime::from_millis(at.timestamp_millis()),
    )
}

#[tokio::test]
async fn history_and_progress_records_are_deleted_past_their_retention() {
    // No service runs here, so nothing else cleans in between.
    let env = instaclone_shared::testing::TestEnv::new();
    let database = env.mongo(&env.settings.mongo.notifications_database).await;
    let store = NotificationStore::new(&database);
    store.ensure_indexes().await.unwrap();
    let recipient = Uuid::now_v7();
    let kept = old_notification(recipient, 10);
    store
        .insert_batch(vec![old_notification(recipient, 400), kept.clone()])
        .await
        .unwrap();
    let progress = database.collection::<bson::Document>("event_progress");
    let stamp = |days: i64| {
        bson::DateTime::from_millis((Utc::now() - TimeDelta::days(days)).timestamp_millis())
    };
    progress
        .insert_many([
            doc! { "_id": "old-done", "type": "user.followed", "stored": 1_i64, "completed": true, "updatedAt": stamp(40) },
            doc! { "_id": "old-open", "type": "post.created", "stored": 1_i64, "completed": false, "updatedAt": stamp(40) },
            doc! { "_id": "new-done", "type": "user.followed", "stored": 1_i64, "completed": true, "updatedAt": stamp(1) },
        ])
        .await
        .unwrap();

    let settings = NotificationSettings {
        retention: std::time::Duration::from_secs(365 * 86_400),
        progress_retention: std::time::Duration::from_secs(30 * 86_400),
    };
    let (notifications, records) = retention::clean_once(&store, &settings, Utc::now())
        .await
        .unwrap();
    assert_eq!((notifications, records), (1, 1));
    let left: Vec<String> = database
        .collection::<bson::Document>("notifications")
        .distinct("_id", doc! {})
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.as_object_id().unwrap().to_hex())
        .collect();
    assert_eq!(left, [kept.id.to_hex()]);
    // An unfinished fan-out keeps its checkpoint however old it is.
    let mut ids: Vec<String> = progress
        .distinct("_id", doc! {})
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["new-done", "old-open"]);
}

#[tokio::test]
async fn a_deleted_accounts_history_goes_with_it() {
    let app = spawn_app().await;
    let (bob, bob_token) = app.user("bob").await;
    let (carol, carol_token) = app.user("carol").await;
    for recipient in [bob, carol] {
        let event = app
            .publish(&UserFollowed {
                follower_id: Uuid::now_v7(),
                followed_id: recipient,
                follower_username: "ada".to_owned(),
            })
            .await;
        app.wait_until_handled(event.id).await;
    }
    app.publish(&instaclone_shared::events::UserDeleted { user_id: bob })
        .await;
    let notifications = app
        .database()
        .await
        .collection::<bson::Document>("notifications");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while notifications
        .count_documents(doc! { "userId": bob.to_string() })
        .await
        .unwrap()
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's history is still there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(app.my_notifications(&bob_token, "").await.is_empty());
    assert_eq!(
        app.my_notifications(&carol_token, "").await.len(),
        1,
        "others keep theirs"
    );
}
