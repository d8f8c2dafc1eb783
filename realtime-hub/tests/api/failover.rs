//! A replica going away with clients attached: they are told to reconnect, and reconnecting to
//! the other replica with their last id loses nothing. Also `/metrics` content.

use instaclone_shared::testing::TestEnv;
use uuid::Uuid;

use crate::{
    helpers::{
        Frame, Publisher, SseClient, close_code, metric, next_frame, next_notification,
        notification, spawn_replica, ws_connect,
    },
    resume::wait_for_stream_length,
};

#[tokio::test]
async fn clients_of_a_stopped_replica_lose_nothing_on_the_other() {
    let env = TestEnv::new();
    let replica_a = spawn_replica(&env).await;
    let replica_b = spawn_replica(&env).await;
    let publisher = Publisher::new(&env).await;
    let users: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();

    let mut sockets = Vec::new();
    for user in &users {
        sockets.push(ws_connect(&replica_a, &env.access_token(*user), "").await);
    }
    let mut sse = SseClient::connect(&replica_a, Some(&env.access_token(users[0])), None, "")
        .await
        .unwrap();
    let mut last_ids = Vec::new();
    for (user, socket) in users.iter().zip(&mut sockets) {
        publisher.publish(&[notification(*user)]).await;
        last_ids.push(
            next_notification(socket).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let sse_last = sse.next_notification().await.id;

    let stopping = tokio::spawn(async move {
        let mut replica_a = replica_a;
        replica_a.stop().await;
    });
    for socket in &mut sockets {
        match next_frame(socket, crate::helpers::PATIENCE).await {
            Some(Frame::Json(frame)) => assert_eq!(frame["type"], "reconnect", "{frame}"),
            other => panic!("expected a reconnect notice, got {other:?}"),
        }
        assert_eq!(
            close_code(socket, crate::helpers::PATIENCE).await,
            Some(1001)
        );
    }
    let event = sse.next_event(crate::helpers::PATIENCE).await.unwrap();
    assert_eq!(event.event, "reconnect");
    stopping.await.unwrap();

    // Published while the clients are away: only replica B consumes now.
    let mut missed = Vec::new();
    for user in &users {
        let items = vec![notification(*user), notification(*user)];
        publisher.publish(&items).await;
        missed.push(items);
    }
    for user in &users {
        wait_for_stream_length(&env, *user, 3).await;
    }
    for ((user, last_id), items) in users.iter().zip(&last_ids).zip(&missed) {
        let query = format!("?lastEventId={last_id}");
        let mut socket = ws_connect(&replica_b, &env.access_token(*user), &query).await;
        for item in items {
            assert_eq!(next_notification(&mut socket).await["data"]["_id"], item.id);
        }
    }
    let mut sse = SseClient::connect(
        &replica_b,
        Some(&env.access_token(users[0])),
        Some(&sse_last),
        "",
    )
    .await
    .unwrap();
    for item in &missed[0] {
        assert!(sse.next_notification().await.data.contains(&item.id));
    }

    assert!(metric(&replica_b, "hub_connections", &["transport=\"sse\""]).await >= 1.0);
    assert!(metric(&replica_b, "hub_messages_delivered_total", &[]).await >= 8.0);
    assert!(metric(&replica_b, "hub_delivery_lag_seconds_count", &[]).await >= 1.0);
    assert!(
        metric(
            &replica_b,
            "hub_disconnects_total",
            &["reason=\"shutdown\""]
        )
        .await
            >= 3.0
    );
}
