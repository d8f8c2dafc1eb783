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

/// Rows as a follow would write them, straight into the outbox, for relays to race over.
async fn insert_pending(pool: &sqlx::PgPool, count: usize) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let event = instaclone_shared::events::EventEnvelope::new(
            "users",
            &UserUnfollowed {
                follower_id: uuid::Uuid::now_v7(),
                followed_id: uuid::Uuid::now_v7(),
            },
        )
        .unwrap();
        sqlx::query("INSERT INTO outbox (id, event) VALUES ($1, $2::jsonb)")
            .bind(event.id)
            .bind(serde_json::to_string(&event).unwrap())
            .execute(pool)
            .await
            .unwrap();
        ids.push(event.id);
    }
    ids
}

#[tokio::test]
async fn concurrent_relays_claim_disjoint_rows_and_a_released_claim_is_taken_again() {
    use instaclone_shared::outbox::OutboxStore;
    use instaclone_users::outbox::PgOutbox;

    let env = TestEnv::new();
    let pool = env.postgres().await;
    sqlx::migrate!("./migrations").run(&pool).await.unwrap();
    let written = insert_pending(&pool, 120).await;
    let (a, b) = (PgOutbox::new(pool.clone()), PgOutbox::new(pool.clone()));
    let (first, second) = tokio::join!(a.pending(100), b.pending(100));
    let (first, second) = (first.unwrap(), second.unwrap());
    let mut seen: Vec<uuid::Uuid> = first.iter().chain(&second).map(|e| e.id).collect();
    seen.sort_unstable();
    let before = seen.len();
    seen.dedup();
    assert_eq!(seen.len(), before, "a row was handed to both relays");
    assert_eq!(seen, written, "every row handed out once");
    // Nothing is left to claim until a claim is released.
    assert!(a.pending(100).await.unwrap().is_empty());
    let given_back: Vec<uuid::Uuid> = second.iter().map(|e| e.id).take(5).collect();
    b.release(&given_back).await.unwrap();
    let again: Vec<uuid::Uuid> = a.pending(100).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(again, given_back);
}

#[tokio::test]
async fn an_undecodable_row_is_set_aside_and_does_not_stall_the_relay() {
    let env = TestEnv::new();
    let (_connection, channel) = env.amqp_channel().await;
    let queue = env.observer_queue(&channel, &["user.followed"]).await;
    let app = spawn_app_with(env, |_| {}).await;
    let pool = app.db().await;
    // Oldest first: the bad row sorts before the follow's event.
    let bad = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO outbox (id, event) VALUES ($1, '{\"not\": \"an event\"}')")
        .bind(bad)
        .execute(&pool)
        .await
        .unwrap();
    let (_, ada_token) = app.user("ada").await;
    let (grace, _) = app.user("grace").await;
    let (status, body) = app.follow(&ada_token, grace).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let events = TestEnv::receive_events(&channel, &queue, 1, Duration::from_secs(10)).await;
    assert_eq!(
        events.len(),
        1,
        "the follow's event went out past the bad row"
    );
    let (published, reason): (bool, Option<String>) =
        sqlx::query_as("SELECT published_at IS NOT NULL, dead_reason FROM outbox WHERE id = $1")
            .bind(bad)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(published, "the bad row is no longer pending");
    assert!(
        reason.is_some_and(|r| !r.is_empty()),
        "why it was set aside is kept"
    );
}
