//! A replica whose Redis link drops while its clients stay connected: notifications published
//! meanwhile (by the other replica) reach those clients once the link is back, exactly once.

use instaclone_shared::testing::{TcpProxy, TestEnv};
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
    let env = TestEnv::new();
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
    // Replica B (or A, once its appends are retried) stores these; A's pub/sub is down.
    let missed: Vec<_> = (0..3).map(|_| notification(user)).collect();
    publisher.publish(&missed).await;
    wait_for_stream_length(&env, user, 4).await;
    proxy.restore().await;

    for item in &missed {
        assert_eq!(next_notification(&mut socket).await["data"]["_id"], item.id);
    }
    assert_silent(&mut socket, std::time::Duration::from_millis(500)).await;
    assert!(metric(&replica_a, "hub_pubsub_reconnects_total", &[]).await >= 1.0);
    drop(replica_b);
}
