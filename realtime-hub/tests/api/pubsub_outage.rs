//! A replica whose Redis link drops while its clients stay connected: notifications published
//! meanwhile (by the other replica) reach those clients once the link is back, exactly once;
//! meanwhile the replica refuses to issue tickets with a 503, not a 500.

use instaclone_realtime_hub::store::{Append, Store};
use instaclone_shared::{
    events::NotificationView,
    testing::{TcpProxy, TestEnv, assert_unavailable},
};
use uuid::Uuid;

use crate::{
    helpers::{
        Publisher, assert_silent, metric, next_notification, notification, spawn_replica,
        ws_connect,
    },
    resume::wait_for_stream_length,
};

#[tokio::test]
async fn notifications_missed_during_a_pubsub_outage_are_caught_up() {
    let mut env = TestEnv::new();
    env.use_single_redis();
    // Replica B talks to Redis directly; replica A through a proxy the test can cut.
    let replica_b = spawn_replica(&env).await;
    let (proxy, redis_through_proxy) = TcpProxy::for_redis(&env.settings).await;
    let mut settings_a = TestEnv {
        settings: env.settings.clone(),
        issuer: env.issuer.clone(),
        id: env.id.clone(),
    };
    settings_a.settings.redis.url = redis_through_proxy;
    let replica_a = spawn_replica(&settings_a).await;
    let publisher = Publisher::new(&env).await;
    let user = Uuid::now_v7();
    let mut socket = ws_connect(&replica_a, &env.access_token(user), "").await;

    let before = notification(user);
    publisher.publish(std::slice::from_ref(&before)).await;
    assert_eq!(
        next_notification(&mut socket).await["data"]["_id"],
        before.id
    );

    proxy.cut();
    // The cut aborts the proxy's connection tasks; let that land before publishing, or a
    // notification can still slip through A's old link live (and no catch-up is needed).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Another replica (B's consumer path, on its own Redis link) stores these while A's
    // pub/sub is down. Published through RabbitMQ they could go to A's consumer instead, which
    // holds them until its Redis is back: nothing would be missed, and nothing tested.
    let missed: Vec<_> = (0..3).map(|_| notification(user)).collect();
    append_directly(&env, &missed).await;
    wait_for_stream_length(&env, user, 4).await;
    // Meanwhile A cannot issue tickets: a 503 with Retry-After, not a 500.
    let ticket = replica_a
        .post("/realtime/ticket")
        .bearer(env.access_token(user))
        .await;
    assert_unavailable(&ticket, "POST /realtime/ticket with Redis cut off");
    proxy.restore().await;

    for item in &missed {
        assert_eq!(next_notification(&mut socket).await["data"]["_id"], item.id);
    }
    assert_silent(&mut socket, std::time::Duration::from_millis(500)).await;
    assert!(metric(&replica_a, "hub_pubsub_reconnects_total", &[]).await >= 1.0);
    drop(replica_b);
}

/// Appends `notifications` as a hub replica's consumer does, on a Redis link of its own.
async fn append_directly(env: &TestEnv, notifications: &[NotificationView]) {
    let redis = env.redis().await;
    let store = Store::new(
        redis,
        env.settings.redis.clone(),
        env.settings.hub.stream_max_len,
    );
    let json: Vec<String> = notifications
        .iter()
        .map(|n| serde_json::to_string(n).unwrap())
        .collect();
    let batch: Vec<Append<'_>> = notifications
        .iter()
        .zip(&json)
        .map(|(n, json)| Append {
            user: n.user_id,
            notification_id: &n.id,
            created_at_millis: n.created_at.timestamp_millis(),
            notification_json: json,
        })
        .collect();
    let appended = store.append(&batch).await.unwrap();
    assert_eq!(appended.new, notifications.len());
}
