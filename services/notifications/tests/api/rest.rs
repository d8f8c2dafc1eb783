//! The REST API: history pages, unread count, marking read, and bad input.

use instaclone_shared::events::UserFollowed;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

/// `count` follow notifications for `recipient`, published as events; returns when all are in.
async fn followed_by_many(app: &TestApp, recipient: Uuid, token: &str, count: usize) {
    let mut last = None;
    for i in 0..count {
        let event = app
            .publish(&UserFollowed {
                follower_id: Uuid::now_v7(),
                followed_id: recipient,
                follower_username: format!("fan{i}"),
            })
            .await;
        last = Some(event.id);
    }
    if let Some(last) = last {
        app.wait_until_handled(last).await;
    }
    app.wait_for_notifications(token, count).await;
}

fn ids(page: &[Value]) -> Vec<String> {
    page.iter()
        .map(|n| n["_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn history_is_newest_first_in_keyset_pages() {
    let app = spawn_app().await;
    let bob = Uuid::now_v7();
    let token = app.env.access_token(bob);
    followed_by_many(&app, bob, &token, 25).await;

    let mut pages = Vec::new();
    let mut query = "?limit=10".to_owned();
    loop {
        let page = app.my_notifications(&token, &query).await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        let last = page.last().unwrap()["_id"].as_str().unwrap().to_owned();
        pages.push(ids(&page));
        query = format!("?limit=10&before={last}");
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 5]
    );
    let all: Vec<String> = pages.concat();
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(all, sorted, "newest first, no repeats");
    // The default page is 20.
    assert_eq!(app.my_notifications(&token, "").await.len(), 20);
}

#[tokio::test]
async fn only_the_recipient_can_mark_a_notification_read() {
    let app = spawn_app().await;
    let bob = Uuid::now_v7();
    let bob_token = app.env.access_token(bob);
    let mallory_token = app.env.access_token(Uuid::now_v7());
    followed_by_many(&app, bob, &bob_token, 2).await;
    let list = app.my_notifications(&bob_token, "").await;
    let id = list[0]["_id"].as_str().unwrap();

    let (status, body) = app
        .post(&format!("/notifications/{id}/read"))
        .bearer(&mallory_token)
        .await
        .parts();
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["statusCode"], 404);
    let count = app
        .get("/notifications/unread-count")
        .bearer(&bob_token)
        .await
        .body;
    assert_eq!(count["data"]["count"], 2, "nothing changed");

    let (status, body) = app
        .post(&format!("/notifications/{id}/read"))
        .bearer(&bob_token)
        .await
        .parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["_id"], id);
    assert_eq!(body["data"]["read"], true);
    // Marking it again is fine and changes nothing.
    let (status, again) = app
        .post(&format!("/notifications/{id}/read"))
        .bearer(&bob_token)
        .await
        .parts();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["data"], body["data"]);

    let unread = app.my_notifications(&bob_token, "?unread=true").await;
    assert_eq!(unread.len(), 1);
    assert_ne!(unread[0]["_id"], id);
    let count = app
        .get("/notifications/unread-count")
        .bearer(&bob_token)
        .await
        .body;
    assert_eq!(count["data"], json!({ "count": 1 }));

    // Someone else's read-all does not touch Bob's.
    let (status, body) = app
        .post("/notifications/read-all")
        .bearer(&mallory_token)
        .await
        .parts();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"], json!({ "updated": 0 }));
    let (status, body) = app
        .post("/notifications/read-all")
        .bearer(&bob_token)
        .await
        .parts();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"], json!({ "updated": 1 }));
    let count = app
        .get("/notifications/unread-count")
        .bearer(&bob_token)
        .await
        .body;
    assert_eq!(count["data"], json!({ "count": 0 }));
    assert!(
        app.my_notifications(&bob_token, "?unread=true")
            .await
            .is_empty()
    );
    assert_eq!(
        app.my_notifications(&bob_token, "?unread=false")
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn bad_input_is_a_clear_400_and_no_token_a_401() {
    let app = spawn_app().await;
    let token = app.env.access_token(Uuid::now_v7());
    for query in [
        "?limit=0",
        "?limit=101",
        "?limit=ten",
        "?before=nope",
        "?unread=maybe",
        "?colour=blue",
    ] {
        let (status, body) = app
            .get(&format!("/notifications/my{query}"))
            .bearer(&token)
            .await
            .parts();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["statusCode"], 400);
        assert!(body["message"].is_string());
    }
    let status = app
        .post("/notifications/not-an-id/read")
        .bearer(&token)
        .await
        .status;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let status = app
        .post("/notifications/65f0c0ffee0000000000abcd/read")
        .bearer(&token)
        .await
        .status;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let response = app.get("/notifications/my").await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    let status = app.get("/notifications/my").bearer("garbage").await.status;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The static routes are not taken for ids.
    let status = app
        .get("/notifications/read-all")
        .bearer(&token)
        .await
        .status;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn marking_read_announces_the_new_unread_count() {
    use instaclone_shared::events::NotificationsRead;

    let app = spawn_app().await;
    let bob = Uuid::now_v7();
    let bob_token = app.env.access_token(bob);
    followed_by_many(&app, bob, &bob_token, 3).await;
    let queue = app
        .env
        .observer_queue(&app.amqp.1, &["notifications.read"])
        .await;
    let id = app.my_notifications(&bob_token, "").await[0]["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(&format!("/notifications/{id}/read"))
        .bearer(&bob_token)
        .await
        .parts();
    app.post("/notifications/read-all")
        .bearer(&bob_token)
        .await
        .parts();
    let events = instaclone_shared::testing::TestEnv::receive_events(
        &app.amqp.1,
        &queue,
        2,
        std::time::Duration::from_secs(10),
    )
    .await;
    let counts: Vec<NotificationsRead> = events.iter().map(|e| e.data().unwrap()).collect();
    assert_eq!(
        counts,
        [
            NotificationsRead {
                user_id: bob,
                unread_count: 2
            },
            NotificationsRead {
                user_id: bob,
                unread_count: 0
            },
        ]
    );
}
