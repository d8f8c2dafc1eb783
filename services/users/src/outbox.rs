//! The PostgreSQL side of the transactional outbox: follow changes insert their event into the
//! `outbox` table in their own transaction (see [`crate::store`]); the shared relay reads the
//! pending rows from here, publishes them with confirms and marks them published.

use instaclone_shared::{events::EventEnvelope, outbox::OutboxStore};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct PgOutbox {
    pool: PgPool,
}

impl PgOutbox {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("outbox row {id} holds no valid event: {reason}")]
    Corrupt { id: Uuid, reason: String },
}

impl OutboxStore for PgOutbox {
    type Error = OutboxError;

    async fn pending(&self, limit: usize) -> Result<Vec<EventEnvelope>, Self::Error> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, event::text FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, json)| {
                EventEnvelope::from_slice(json.as_bytes()).map_err(|e| OutboxError::Corrupt {
                    id,
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    async fn mark_published(&self, ids: &[Uuid]) -> Result<(), Self::Error> {
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
