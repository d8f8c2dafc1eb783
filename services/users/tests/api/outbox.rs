//! Follow events go through the outbox: with RabbitMQ cut off, follows still succeed, and their
//! events reach the exchange once the broker is back.

use std::time::Duration;

use instaclone_shared::{
    events::{UserFollowed, UserUnfollowed},
    testing::{TcpProxy, TestEnv},
};
use reqwest::StatusCode;

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn follows_succeed_while_rabbitmq_is_down_and_their_events_go_out_after() {
    let env = TestEnv::new();
    // A queue on the real broker, bound to the follow events.
    let (_connection, channel) = env.amqp_channel().await;
    let queue = env
        .observer_queue(&channel, &["user.followed", "user.unfollowed"])
        .await;

    // The service reaches RabbitMQ only through the proxy, cut once it has started (it declares
    // its queue before serving, so it starts only with the broker up).
    let (proxy, through_proxy) = TcpProxy::for_rabbitmq(&env.settings).await;
    let app = spawn_app_with(env, |settings| settings.amqp.url = through_proxy).await;
    proxy.cut();
    let (ada, ada_token) = app.user("ada").await;
    let (grace, grace_token) = app.user("grace").await;

    let (status, body) = app.follow(&ada_token, grace).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app.follow(&grace_token, ada).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app.unfollow(&grace_token, ada).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Nothing can have gone out: the events wait in the outbox.
    assert!(
        TestEnv::receive_events(&channel, &queue, 1, Duration::from_secs(1))
            .await
            .is_empty()
    );
    let pool = app.db().await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 3);

    proxy.restore().await;
    let events = TestEnv::receive_events(&channel, &queue, 3, Duration::from_secs(20)).await;
    assert_eq!(events.len(), 3, "{events:?}");
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["user.followed", "user.followed", "user.unfollowed"]);
    assert_eq!(
        events[0].data::<UserFollowed>().unwrap(),
        UserFollowed {
            follower_id: ada,
            followed_id: grace,
            follower_username: "ada".to_owned()
        }
    );
    assert_eq!(
        events[2].data::<UserUnfollowed>().unwrap(),
        UserUnfollowed {
            follower_id: grace,
            followed_id: ada
        }
    );
    assert!(events.iter().all(|e| e.producer == "users"));

    // The relay marks them once confirmed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} events still pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing was published twice.
    assert!(
        TestEnv::receive_events(&channel, &queue, 1, Duration::from_millis(500))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn the_janitor_deletes_only_old_published_rows_and_old_event_ids() {
    let app = crate::helpers::spawn_app().await;
    let pool = app.db().await;
    let ids: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO outbox (id, event, created_at, published_at) VALUES \
         ($1, '{}', now() - interval '9 days', now() - interval '8 days'), \
         ($2, '{}', now() - interval '2 days', now() - interval '1 day'), \
         ($3, '{}', now() - interval '30 days', NULL)",
    )
    .bind(ids[0])
    .bind(ids[1])
    .bind(ids[2])
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO processed_events (id, processed_at) VALUES \
         ($1, now() - interval '31 days'), ($2, now() - interval '1 day')",
    )
    .bind(ids[3])
    .bind(ids[4])
    .execute(&pool)
    .await
    .unwrap();

    instaclone_users::janitor::clean_once(&pool, &tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();

    let outbox: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        outbox,
        vec![ids[1], ids[2]],
        "recent and still pending rows stay"
    );
    let processed: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM processed_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(processed, vec![ids[4]]);
}
