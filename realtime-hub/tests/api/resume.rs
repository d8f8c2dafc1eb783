//! Resume after a disconnect: exactly the missed notifications, in order, on both transports.

use std::time::Duration;

use instaclone_shared::testing::TestEnv;
use uuid::Uuid;

use crate::helpers::{
    Frame, Publisher, SseClient, assert_silent, expect_connected, next_frame, next_notification,
    notification, spawn_replica, ws_connect,
};

#[tokio::test]
async fn a_websocket_client_resuming_with_its_last_id_gets_exactly_what_it_missed() {
    let env = TestEnv::new();
    let replica_a = spawn_replica(&env).await;
    let replica_b = spawn_replica(&env).await;
    let publisher = Publisher::new(&env).await;
    let user = Uuid::now_v7();
    let token = env.access_token(user);

    let mut socket = ws_connect(&replica_a, &token, "").await;
    publisher.publish(&[notification(user)]).await;
    let seen = next_notification(&mut socket).await;
    let last_id = seen["id"].as_str().unwrap().to_owned();
    drop(socket);

    let missed: Vec<_> = (0..5).map(|_| notification(user)).collect();
    for item in &missed {
        publisher.publish(std::slice::from_ref(item)).await;
    }
    // Let the consumers store them all before reconnecting (to the other replica).
    wait_for_stream_length(&env, user, 6).await;

    let mut socket = ws_connect(&replica_b, &token, &format!("?lastEventId={last_id}")).await;
    for expected in &missed {
        let frame = next_notification(&mut socket).await;
        assert_eq!(frame["data"]["_id"], expected.id.as_str());
    }
    assert_silent(&mut socket, Duration::from_millis(300)).await;

    // And live delivery continues after the replay.
    let live = notification(user);
    publisher.publish(std::slice::from_ref(&live)).await;
    assert_eq!(next_notification(&mut socket).await["data"]["_id"], live.id);
    assert_silent(&mut socket, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_sse_client_resuming_with_last_event_id_gets_exactly_what_it_missed() {
    let env = TestEnv::new();
    let replica_a = spawn_replica(&env).await;
    let replica_b = spawn_replica(&env).await;
    let publisher = Publisher::new(&env).await;
    let user = Uuid::now_v7();
    let token = env.access_token(user);

    let mut events = SseClient::connect(&replica_a, Some(&token), None, "")
        .await
        .unwrap();
    let first = notification(user);
    publisher.publish(std::slice::from_ref(&first)).await;
    let seen = events.next_notification().await;
    let data: serde_json::Value = serde_json::from_str(&seen.data).unwrap();
    assert_eq!(data["_id"], first.id);
    let last_id = seen.id;
    drop(events);

    let missed: Vec<_> = (0..4).map(|_| notification(user)).collect();
    publisher.publish(&missed).await;
    wait_for_stream_length(&env, user, 5).await;

    let mut events = SseClient::connect(&replica_b, Some(&token), Some(&last_id), "")
        .await
        .unwrap();
    let mut previous = last_id;
    for expected in &missed {
        let event = events.next_notification().await;
        let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data["_id"], expected.id.as_str());
        let id = event.id;
        assert!(crate::delivery::id_key(&id) > crate::delivery::id_key(&previous));
        previous = id;
    }
    let live = notification(user);
    publisher.publish(std::slice::from_ref(&live)).await;
    let event = events.next_notification().await;
    assert!(event.data.contains(&live.id));
    assert!(
        events
            .next_event(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing more expected"
    );
}

#[tokio::test]
async fn an_id_the_server_no_longer_has_gets_resync_then_live_delivery() {
    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let publisher = Publisher::new(&env).await;
    let user = Uuid::now_v7();
    let token = env.access_token(user);

    // No stream at all (expired or lost) although the client has an id.
    let mut socket = ws_connect(&replica, &token, "?lastEventId=1700000000000-0").await;
    assert_eq!(expect_connected(&mut socket).await, "1700000000000-0");
    match next_frame(&mut socket, Duration::from_secs(5)).await {
        // The new position is the stream's head: none yet.
        Some(Frame::Json(frame)) => {
            assert_eq!(frame["type"], "resync", "{frame}");
            assert_eq!(frame["id"], "0-0", "{frame}");
        }
        other => panic!("expected resync, got {other:?}"),
    }
    let live = notification(user);
    publisher.publish(std::slice::from_ref(&live)).await;
    assert_eq!(next_notification(&mut socket).await["data"]["_id"], live.id);

    // An id older than the retained stream (it was recreated after that id) also resyncs, on SSE.
    let mut events = SseClient::connect(&replica, Some(&token), None, "?since=1700000000000-5")
        .await
        .unwrap();
    assert_eq!(events.expect_connected().await, "1700000000000-5");
    let event = events.next_event(Duration::from_secs(5)).await.unwrap();
    assert_eq!(event.event, "resync");
    // It moves the browser's Last-Event-ID to the head, past what the reload covers.
    let head = live_id(&env, user).await;
    assert_eq!(event.id, head);
}

/// The id of the newest entry of `user`'s stream.
async fn live_id(env: &TestEnv, user: Uuid) -> String {
    let store = instaclone_realtime_hub::store::Store::new(
        env.redis().await,
        env.settings.redis.clone(),
        env.settings.hub.stream_max_len,
    );
    store.head(user).await.unwrap().to_string()
}

#[tokio::test]
async fn a_websocket_client_that_received_nothing_resumes_from_its_first_frame() {
    let env = TestEnv::new();
    let replica_a = spawn_replica(&env).await;
    let replica_b = spawn_replica(&env).await;
    let publisher = Publisher::new(&env).await;
    let user = Uuid::now_v7();
    let token = env.access_token(user);
    // History from before this client existed.
    publisher
        .publish(&[notification(user), notification(user)])
        .await;
    wait_for_stream_length(&env, user, 2).await;

    let mut socket = ws_connect(&replica_a, &token, "").await;
    let position = expect_connected(&mut socket).await;
    assert_eq!(
        position,
        live_id(&env, user).await,
        "a new client starts at the head"
    );
    assert_silent(&mut socket, Duration::from_millis(200)).await;
    drop(socket);

    let missed: Vec<_> = (0..3).map(|_| notification(user)).collect();
    publisher.publish(&missed).await;
    wait_for_stream_length(&env, user, 5).await;

    let mut socket = ws_connect(&replica_b, &token, &format!("?lastEventId={position}")).await;
    assert_eq!(expect_connected(&mut socket).await, position);
    for expected in &missed {
        assert_eq!(
            next_notification(&mut socket).await["data"]["_id"],
            expected.id.as_str()
        );
    }
    assert_silent(&mut socket, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_sse_client_that_received_nothing_resumes_from_its_first_event() {
    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let publisher = Publisher::new(&env).await;
    let user = Uuid::now_v7();
    let token = env.access_token(user);

    // No stream yet: the position is 0-0, which resumes with everything.
    let mut events = SseClient::connect(&replica, Some(&token), None, "")
        .await
        .unwrap();
    let position = events.expect_connected().await;
    assert_eq!(position, "0-0");
    drop(events);

    let missed: Vec<_> = (0..3).map(|_| notification(user)).collect();
    publisher.publish(&missed).await;
    wait_for_stream_length(&env, user, 3).await;

    // As a browser's EventSource does: Last-Event-ID is the connected event's id.
    let mut events = SseClient::connect(&replica, Some(&token), Some(&position), "")
        .await
        .unwrap();
    assert_eq!(events.expect_connected().await, position);
    for expected in &missed {
        let event = events.next_notification().await;
        assert!(event.data.contains(&expected.id), "{event:?}");
    }
    assert!(
        events
            .next_event(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing more expected"
    );
}

#[tokio::test]
async fn a_malformed_resume_id_is_a_400() {
    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let token = env.access_token(Uuid::now_v7());
    let status = crate::helpers::try_ws_connect(&replica, Some(&token), "?lastEventId=yesterday")
        .await
        .err();
    assert_eq!(status, Some(400));
    let status = SseClient::connect(&replica, Some(&token), Some("nope"), "")
        .await
        .err();
    assert_eq!(status, Some(400));
    let status = SseClient::connect(&replica, Some(&token), None, "?unknown=1")
        .await
        .err();
    assert_eq!(status, Some(400));
}

/// Waits until the user's replay stream holds `length` entries.
pub async fn wait_for_stream_length(env: &TestEnv, user: Uuid, length: usize) {
    let mut redis = env.redis().await;
    let key = env.settings.redis.key(&format!("stream:{{{user}}}"));
    let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
    loop {
        let current: usize = redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        if current >= length {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream has {current} of {length} entries"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
