//! Cross-replica delivery: any replica consumes, the one holding the connection delivers.

use std::{collections::HashSet, time::Duration};

use instaclone_shared::testing::TestEnv;
use uuid::Uuid;

use crate::helpers::{
    Publisher, assert_silent, metric, next_notification, notification, spawn_replica, ws_connect,
};

#[tokio::test]
async fn a_notification_for_a_user_on_another_replica_arrives_exactly_once() {
    let env = TestEnv::new();
    let replica_a = spawn_replica(&env).await;
    let replica_b = spawn_replica(&env).await;
    let publisher = Publisher::new(&env).await;
    let (on_b, on_a) = (Uuid::now_v7(), Uuid::now_v7());
    let mut socket_b = ws_connect(&replica_b, &env.access_token(on_b), "").await;
    let mut socket_a = ws_connect(&replica_a, &env.access_token(on_a), "").await;
    // A second device of the same user, on the other replica.
    let mut second_device = ws_connect(&replica_a, &env.access_token(on_b), "").await;

    // Several events, so both replicas' consumers (competing on one queue) take some.
    let mut sent = Vec::new();
    for _ in 0..6 {
        let for_b = notification(on_b);
        sent.push(for_b.id.clone());
        publisher.publish(&[for_b, notification(on_a)]).await;
    }

    for socket in [&mut socket_b, &mut second_device] {
        let mut received = Vec::new();
        let mut last_id = String::new();
        for _ in 0..sent.len() {
            let frame = next_notification(socket).await;
            assert_eq!(frame["data"]["userId"], on_b.to_string());
            let id = frame["id"].as_str().unwrap().to_owned();
            assert!(
                id_key(&id) > id_key(&last_id),
                "ids must increase: {id} after {last_id}"
            );
            last_id = id;
            received.push(frame["data"]["_id"].as_str().unwrap().to_owned());
        }
        let received: HashSet<_> = received.into_iter().collect();
        assert_eq!(received, sent.iter().cloned().collect::<HashSet<_>>());
    }
    for _ in 0..sent.len() {
        let frame = next_notification(&mut socket_a).await;
        assert_eq!(frame["data"]["userId"], on_a.to_string());
    }
    for socket in [&mut socket_b, &mut second_device, &mut socket_a] {
        assert_silent(socket, Duration::from_millis(500)).await;
    }
    assert!(metric(&replica_a, "hub_connections", &["transport=\"ws\""]).await >= 2.0);
    // A healthy pub/sub link is never torn down (no test breaks it on purpose).
    assert_eq!(
        metric(&replica_a, "hub_pubsub_reconnects_total", &[]).await,
        0.0
    );
}

#[tokio::test]
async fn a_re_emitted_notification_is_delivered_once() {
    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let publisher = Publisher::new(&env).await;
    let user = Uuid::now_v7();
    let mut socket = ws_connect(&replica, &env.access_token(user), "").await;

    let repeated = notification(user);
    let event = publisher.publish(std::slice::from_ref(&repeated)).await;
    // The same event redelivered, and the same notification in a new event.
    publisher.publish_event(&event).await;
    publisher.publish(std::slice::from_ref(&repeated)).await;
    let last = notification(user);
    publisher.publish(std::slice::from_ref(&last)).await;

    assert_eq!(
        next_notification(&mut socket).await["data"]["_id"],
        repeated.id
    );
    assert_eq!(next_notification(&mut socket).await["data"]["_id"], last.id);
    assert_silent(&mut socket, Duration::from_millis(500)).await;
}

/// Orders `<ms>-<seq>` ids numerically ("" first).
pub fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or(("0", "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[tokio::test]
async fn the_dedupe_window_is_bounded_per_user_and_expires_with_the_stream() {
    let mut env = TestEnv::new();
    env.settings.hub.stream_max_len = 5;
    let replica = spawn_replica(&env).await;
    let publisher = Publisher::new(&env).await;
    let user = Uuid::now_v7();
    let mut socket = ws_connect(&replica, &env.access_token(user), "").await;

    let sent: Vec<_> = (0..120).map(|_| notification(user)).collect();
    for batch in sent.chunks(40) {
        publisher.publish(batch).await;
    }
    // Separate messages may be handled concurrently: each arrives once, in stream order.
    let mut received = Vec::new();
    let mut previous = (0, 0);
    for _ in &sent {
        let frame = next_notification(&mut socket).await;
        let key = id_key(frame["id"].as_str().unwrap());
        assert!(key > previous, "ids increase");
        previous = key;
        received.push(frame["data"]["_id"].as_str().unwrap().to_owned());
    }
    received.sort();
    let mut expected: Vec<String> = sent.iter().map(|n| n.id.clone()).collect();
    expected.sort();
    assert_eq!(received, expected);
    // An id ending in 0 trims the window (one in 16 does): end on one, so the bound is exact.
    let mut last = notification(user);
    last.id.replace_range(last.id.len() - 1.., "0");
    publisher.publish(std::slice::from_ref(&last)).await;
    assert_eq!(next_notification(&mut socket).await["data"]["_id"], last.id);
    // A repeat of the newest is still recognised.
    publisher.publish(std::slice::from_ref(&last)).await;
    assert_silent(&mut socket, Duration::from_millis(500)).await;

    let mut redis = env.redis().await;
    let prefix = &env.settings.redis.key_prefix;
    let seen = format!("{prefix}seen:{{{user}}}");
    let stream = format!("{prefix}stream:{{{user}}}");
    let remembered: u64 = redis::cmd("ZCARD")
        .arg(&seen)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        remembered, 10,
        "twice the stream length, not every id ever seen"
    );
    for key in [&seen, &stream] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has no expiry ({ttl})");
    }
}

/// A new unread count (marked read in one tab) reaches every connection of the user, on every
/// replica, and nobody else's.
#[tokio::test]
async fn an_unread_count_is_pushed_to_every_connection_of_the_user() {
    use crate::helpers::{Frame, expect_connected, next_frame};
    use instaclone_shared::events::{EventEnvelope, NotificationsRead};

    let env = TestEnv::new();
    let (replica_a, replica_b) = (spawn_replica(&env).await, spawn_replica(&env).await);
    let publisher = Publisher::new(&env).await;
    let user = Uuid::now_v7();
    let token = env.access_token(user);
    let mut tabs = vec![
        ws_connect(&replica_a, &token, "").await,
        ws_connect(&replica_b, &token, "").await,
    ];
    for tab in &mut tabs {
        expect_connected(tab).await;
    }
    let mut stranger = ws_connect(&replica_a, &env.access_token(Uuid::now_v7()), "").await;
    expect_connected(&mut stranger).await;

    let read = NotificationsRead {
        user_id: user,
        unread_count: 3,
    };
    publisher
        .publish_event(&EventEnvelope::new("test", &read).unwrap())
        .await;
    for tab in &mut tabs {
        match next_frame(tab, Duration::from_secs(5)).await {
            Some(Frame::Json(frame)) => {
                assert_eq!(frame, serde_json::json!({ "type": "unread", "count": 3 }));
            }
            other => panic!("expected the unread count, got {other:?}"),
        }
    }
    assert_silent(&mut stranger, Duration::from_millis(300)).await;
}
