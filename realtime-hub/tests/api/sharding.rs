//! Where a replica listens: on a single Redis, a plain subscription to its own channel; on a
//! Redis Cluster, a sharded subscription on the one master that owns the channel's slot, and no
//! classic subscription (which the cluster would feed by broadcasting to every node). The same
//! test runs in both passes of the suite and checks what that pass's mode demands.

use instaclone_realtime_hub::store::Store;
use instaclone_shared::{redis_conn::slot, testing::TestEnv};
use uuid::Uuid;

use crate::helpers::{
    Publisher, assert_silent, expect_connected, metric, next_notification, notification,
    spawn_replica, ws_connect,
};

/// The replica channels (`<prefix>hub:replica:*`) subscribed on `master`, classic and sharded.
async fn subscribed_on(master: redis::ConnectionInfo, pattern: &str) -> (Vec<String>, Vec<String>) {
    let mut connection = redis::Client::open(master)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("a Redis node of the test's deployment is unreachable");
    let classic: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(pattern)
        .query_async(&mut connection)
        .await
        .unwrap();
    let sharded: Vec<String> = redis::cmd("PUBSUB")
        .arg("SHARDCHANNELS")
        .arg(pattern)
        .query_async(&mut connection)
        .await
        .unwrap();
    (classic, sharded)
}

#[tokio::test]
async fn a_replica_listens_on_its_channel_alone_and_on_a_cluster_on_its_shard_alone() {
    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let publisher = Publisher::new(&env).await;
    let user = Uuid::now_v7();
    let mut socket = ws_connect(&replica, &env.access_token(user), "").await;
    expect_connected(&mut socket).await;
    // Live delivery proves the link is up before the subscriptions are counted.
    let sent = notification(user);
    publisher.publish(std::slice::from_ref(&sent)).await;
    assert_eq!(next_notification(&mut socket).await["data"]["_id"], sent.id);

    let redis = env.redis().await;
    let pattern = format!("{}hub:replica:*", env.settings.redis.key_prefix);
    let mut found = Vec::new();
    for master in redis.masters().await.unwrap() {
        let (classic, sharded) = subscribed_on(master.clone(), &pattern).await;
        found.push((master, classic, sharded));
    }
    let classic: Vec<&String> = found.iter().flat_map(|(_, c, _)| c).collect();
    let sharded: Vec<_> = found
        .iter()
        .flat_map(|(master, _, s)| s.iter().map(move |channel| (master, channel)))
        .collect();
    if redis.is_cluster() {
        assert!(
            classic.is_empty(),
            "classic subscriptions on a cluster: {classic:?}"
        );
        assert_eq!(sharded.len(), 1, "one sharded subscription: {sharded:?}");
        let (master, channel) = sharded[0];
        let owner = redis
            .shards()
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.slots.contains(&slot(channel.as_bytes())))
            .unwrap();
        assert_eq!(
            owner.master.addr.to_string(),
            master.addr.to_string(),
            "{channel} is subscribed on a node that does not own its slot"
        );
    } else {
        assert_eq!(classic.len(), 1, "one subscription: {classic:?}");
        assert!(sharded.is_empty(), "sharded subscriptions: {sharded:?}");
    }
    drop(replica);
}

/// On a cluster, lines from different consumers can reach a replica out of order, or one can be
/// lost after its entry was stored; each line names the entry before it. Here the second of two
/// stored entries is announced first (and the first never): the client still gets both, in
/// order, once, and the late line changes nothing. Runs on either mode: the replica checks any
/// line that names its predecessor.
#[tokio::test]
async fn a_line_that_overtakes_its_predecessor_makes_the_connection_replay_in_order() {
    let env = TestEnv::new();
    let replica = spawn_replica(&env).await;
    let user = Uuid::now_v7();
    let mut socket = ws_connect(&replica, &env.access_token(user), "").await;
    let position = expect_connected(&mut socket).await;

    let mut redis = env.redis().await;
    let store = Store::new(
        redis.clone(),
        env.settings.redis.clone(),
        env.settings.hub.stream_max_len,
    );
    let (first, second) = (notification(user), notification(user));
    let mut ids = Vec::new();
    for item in [&first, &second] {
        let id: String = redis::cmd("XADD")
            .arg(store.stream_key(user))
            .arg("*")
            .arg("t")
            .arg(item.created_at.timestamp_millis())
            .arg("n")
            .arg(serde_json::to_string(item).unwrap())
            .query_async(&mut redis)
            .await
            .unwrap();
        ids.push(id);
    }
    let replicas: Vec<String> = redis::cmd("ZRANGE")
        .arg(store.presence_key(user))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(replicas.len(), 1, "the user is present on the one replica");
    let channel = store.replica_channel(&replicas[0]);
    let line = |item: &instaclone_shared::events::NotificationView, id: &str, previous: &str| {
        format!(
            "{user} {id}/{previous} {} {}",
            item.created_at.timestamp_millis(),
            serde_json::to_string(item).unwrap()
        )
    };
    let publish = |payload: String| {
        let mut redis = redis.clone();
        let channel = channel.clone();
        async move {
            redis::cmd(redis.publish_command())
                .arg(channel)
                .arg(payload)
                .exec_async(&mut redis)
                .await
                .unwrap();
        }
    };
    publish(line(&second, &ids[1], &ids[0])).await;
    assert_eq!(
        next_notification(&mut socket).await["data"]["_id"],
        first.id
    );
    assert_eq!(
        next_notification(&mut socket).await["data"]["_id"],
        second.id
    );
    publish(line(&first, &ids[0], &position)).await;
    assert_silent(&mut socket, std::time::Duration::from_millis(500)).await;
    assert!(metric(&replica, "hub_live_gaps_total", &[]).await >= 1.0);
}
