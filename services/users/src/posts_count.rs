//! Keeps `users.posts_count` in step with the posts service by consuming `post.created` and
//! `post.deleted`. Each event is applied at most once: its id goes into `processed_events` in the
//! same transaction as the counter change, and a redelivered event finds its id already there.
//! A message's whole batch of events costs one transaction of two statements.

use std::collections::HashMap;

use instaclone_shared::{
    amqp::{Batch, HandlerError, QueueSpec, Rejected},
    config::AmqpSettings,
    events::{EventEnvelope, PostCreated, PostDeleted, event_type},
};
use sqlx::PgPool;
use uuid::Uuid;

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

/// What one event does to a count: whose, and by how much.
fn change_of(event: &EventEnvelope) -> Result<(Uuid, i64), String> {
    match event.event_type.as_str() {
        event_type::POST_CREATED => event
            .data::<PostCreated>()
            .map(|post| (post.author_id, 1))
            .map_err(|e| e.to_string()),
        event_type::POST_DELETED => event
            .data::<PostDeleted>()
            .map(|post| (post.author_id, -1))
            .map_err(|e| e.to_string()),
        other => Err(format!("unexpected event type {other}")),
    }
}

/// Applies a batch of post events to their authors' counts, each event once, in one transaction:
/// the ids seen for the first time are those the `processed_events` insert returns, and only
/// their changes are summed per author and applied with one `UPDATE`.
pub async fn apply_batch(pool: PgPool, batch: Batch) -> Result<Vec<Rejected>, HandlerError> {
    let transient = |e: sqlx::Error| HandlerError::Transient(e.to_string());
    let mut rejected = Vec::new();
    let mut changes: HashMap<Uuid, (Uuid, i64)> = HashMap::new();
    for event in batch.events {
        match change_of(&event) {
            Ok(change) => {
                changes.insert(event.id, change);
            }
            Err(reason) => rejected.push(Rejected { event, reason }),
        }
    }
    if changes.is_empty() {
        return Ok(rejected);
    }
    let ids: Vec<Uuid> = changes.keys().copied().collect();
    let mut tx = pool.begin().await.map_err(transient)?;
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_events (id) SELECT * FROM unnest($1::uuid[]) \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(transient)?;
    let mut per_author: HashMap<Uuid, i64> = HashMap::new();
    for id in &fresh {
        if let Some((author, delta)) = changes.get(id) {
            *per_author.entry(*author).or_default() += delta;
        }
    }
    let (authors, deltas): (Vec<Uuid>, Vec<i64>) = per_author.into_iter().unzip();
    // An unknown author changes nothing; a delete seen before its create cannot go below 0.
    sqlx::query(
        "UPDATE users SET posts_count = GREATEST(posts_count + change.delta, 0) \
         FROM unnest($1::uuid[], $2::bigint[]) AS change(author, delta) \
         WHERE users.id = change.author",
    )
    .bind(&authors)
    .bind(&deltas)
    .execute(&mut *tx)
    .await
    .map_err(transient)?;
    tx.commit().await.map_err(transient)?;
    Ok(rejected)
}
