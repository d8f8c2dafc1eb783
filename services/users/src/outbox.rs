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

/// How long a relay's claim on the rows it read holds: far longer than publishing them takes,
/// short enough that the rows of a replica that died go out soon after from another.
const CLAIM_SECS: f64 = 30.0;

impl OutboxStore for PgOutbox {
    type Error = OutboxError;

    /// Claims up to `limit` pending rows no other relay holds (`FOR UPDATE SKIP LOCKED`, then a
    /// lease in `claimed_until`), oldest first. A row that is not a valid event is set aside
    /// (`dead_reason`, logged) rather than returned, so it cannot stall the rows behind it.
    async fn pending(&self, limit: usize) -> Result<Vec<EventEnvelope>, Self::Error> {
        let mut rows: Vec<(Uuid, String)> = sqlx::query_as(
            "WITH claimable AS ( \
                 SELECT id FROM outbox \
                 WHERE published_at IS NULL AND (claimed_until IS NULL OR claimed_until < now()) \
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
             UPDATE outbox SET claimed_until = now() + make_interval(secs => $2) \
             FROM claimable WHERE outbox.id = claimable.id \
             RETURNING outbox.id, outbox.event::text",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(CLAIM_SECS)
        .fetch_all(&self.pool)
        .await?;
        rows.sort_unstable_by_key(|(id, _)| *id);
        let mut events = Vec::with_capacity(rows.len());
        for (id, json) in rows {
            match EventEnvelope::from_slice(json.as_bytes()) {
                Ok(event) => events.push(event),
                Err(error) => self.set_aside(id, &error.to_string()).await?,
            }
        }
        Ok(events)
    }

    async fn mark_published(&self, ids: &[Uuid]) -> Result<(), Self::Error> {
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Lets go of rows that could not be published, so the next round (here or on another
    /// replica) takes them at once rather than when the claim lapses.
    async fn release(&self, ids: &[Uuid]) -> Result<(), Self::Error> {
        sqlx::query("UPDATE outbox SET claimed_until = NULL WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl PgOutbox {
    async fn set_aside(&self, id: Uuid, reason: &str) -> Result<(), OutboxError> {
        let corrupt = OutboxError::Corrupt {
            id,
            reason: reason.to_owned(),
        };
        tracing::error!(error = %corrupt, "outbox row set aside: it can never be published");
        sqlx::query("UPDATE outbox SET published_at = now(), dead_reason = $2 WHERE id = $1")
            .bind(id)
            .bind(reason)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
