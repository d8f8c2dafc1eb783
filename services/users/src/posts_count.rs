//! Keeps `users.posts_count` in step with the posts service by consuming `post.created` and
//! `post.deleted`. Each event is applied at most once: its id goes into `processed_events` in the
//! same transaction as the counter change, and a redelivered event finds its id already there.

use instaclone_shared::{
    amqp::{HandlerError, QueueSpec},
    config::AmqpSettings,
    events::{EventEnvelope, PostCreated, PostDeleted, event_type},
};
use sqlx::PgPool;

/// Queue (suffix) of this consumer.
pub const QUEUE: &str = "users.posts-count";
/// Deliveries of one event before it goes to the dead-letter queue.
const DELIVERY_LIMIT: u32 = 10;

pub fn queue_spec(settings: &AmqpSettings) -> QueueSpec {
    QueueSpec {
        name: settings.queue(QUEUE),
        routing_keys: vec![
            event_type::POST_CREATED.to_owned(),
            event_type::POST_DELETED.to_owned(),
        ],
        delivery_limit: DELIVERY_LIMIT,
    }
}

/// Applies one post event to its author's count, once.
pub async fn apply(pool: PgPool, event: EventEnvelope) -> Result<(), HandlerError> {
    let permanent =
        |e: instaclone_shared::events::EventError| HandlerError::Permanent(e.to_string());
    let transient = |e: sqlx::Error| HandlerError::Transient(e.to_string());
    let (author, delta) = match event.event_type.as_str() {
        event_type::POST_CREATED => (
            event.data::<PostCreated>().map_err(permanent)?.author_id,
            1_i64,
        ),
        event_type::POST_DELETED => (
            event.data::<PostDeleted>().map_err(permanent)?.author_id,
            -1,
        ),
        other => {
            return Err(HandlerError::Permanent(format!(
                "unexpected event type {other}"
            )));
        }
    };
    let mut tx = pool.begin().await.map_err(transient)?;
    let first_time =
        sqlx::query("INSERT INTO processed_events (id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(event.id)
            .execute(&mut *tx)
            .await
            .map_err(transient)?
            .rows_affected()
            == 1;
    if first_time {
        // An unknown author changes nothing; a delete seen before its create cannot go below 0.
        sqlx::query("UPDATE users SET posts_count = GREATEST(posts_count + $2, 0) WHERE id = $1")
            .bind(author)
            .bind(delta)
            .execute(&mut *tx)
            .await
            .map_err(transient)?;
    }
    tx.commit().await.map_err(transient)?;
    Ok(())
}
