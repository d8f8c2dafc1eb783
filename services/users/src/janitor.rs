//! Keeps the bookkeeping tables bounded: published outbox rows and the ids of consumed events
//! are only needed for a while (the relay never re-reads a published row; redeliveries of an
//! event come within minutes, not weeks), so they are deleted once old, in small batches.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Published outbox rows are kept this many days (for inspection), then deleted.
pub const OUTBOX_RETENTION_DAYS: i32 = 7;
/// Consumed event ids are kept this many days, the window in which a redelivery is recognised.
pub const PROCESSED_EVENTS_RETENTION_DAYS: i32 = 30;
/// Time between cleanups.
pub const CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);
/// Rows deleted per statement, so a cleanup never holds long locks.
const BATCH: i64 = 5000;

/// Cleans up now and then every [`CLEANUP_INTERVAL`] until `shutdown` is cancelled.
pub async fn run(pool: PgPool, shutdown: CancellationToken) {
    loop {
        if let Err(error) = clean_once(&pool, &shutdown).await {
            tracing::warn!(%error, "cleanup of old outbox rows and event ids failed; will retry");
        }
        tokio::select! {
            () = tokio::time::sleep(CLEANUP_INTERVAL) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One cleanup: deletes what is older than its retention, batch by batch.
pub async fn clean_once(pool: &PgPool, shutdown: &CancellationToken) -> Result<(), sqlx::Error> {
    let statements = [
        (
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
             WHERE published_at < now() - make_interval(days => $1) LIMIT $2)",
            OUTBOX_RETENTION_DAYS,
        ),
        (
            "DELETE FROM processed_events WHERE id IN (SELECT id FROM processed_events \
             WHERE processed_at < now() - make_interval(days => $1) LIMIT $2)",
            PROCESSED_EVENTS_RETENTION_DAYS,
        ),
    ];
    for (statement, days) in statements {
        loop {
            let deleted = sqlx::query(statement)
                .bind(days)
                .bind(BATCH)
                .execute(pool)
                .await?
                .rows_affected();
            if deleted < u64::try_from(BATCH).unwrap_or(u64::MAX) || shutdown.is_cancelled() {
                break;
            }
        }
    }
    Ok(())
}
