//! Keeps history and bookkeeping bounded: every hour, notifications older than
//! `NOTIFICATIONS_RETENTION_DAYS` (365) and the progress records of events completed more than
//! `NOTIFICATIONS_PROGRESS_RETENTION_DAYS` (30) ago are deleted, by `_id` range and by an index on
//! `updatedAt`. A redelivery or replay of an event older than the progress retention stores
//! nothing new: notification ids are derived from the event.

use std::time::Duration;

use chrono::{DateTime, Utc};
use instaclone_shared::{
    backoff::{Backoff, RetryPolicy, Retrying, any_error, retry_notify},
    config::NotificationSettings,
};
use tokio_util::sync::CancellationToken;

use crate::{error::NotificationsError, store::NotificationStore};

const EVERY: Duration = Duration::from_secs(3600);

/// Cleans once now, then every hour, until `shutdown`; a failed round is retried with backoff.
pub async fn run(
    store: NotificationStore,
    settings: NotificationSettings,
    shutdown: CancellationToken,
) {
    let (store, settings) = (&store, &settings);
    let log_failure = |retrying: &Retrying<'_, NotificationsError>| {
        let error = retrying.error;
        tracing::warn!(%error, "retention cleanup failed; will retry");
    };
    loop {
        // From the first step again after every round that succeeded.
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let policy = RetryPolicy::until_shutdown(backoff, &shutdown);
        let round = move || clean_once(store, settings, Utc::now());
        let Ok((notifications, progress)) =
            retry_notify(policy, any_error, log_failure, round).await
        else {
            return;
        };
        if notifications + progress > 0 {
            tracing::info!(
                notifications,
                progress,
                "deleted records past their retention"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One round, as of `now`; returns how many notifications and progress records went.
pub async fn clean_once(
    store: &NotificationStore,
    settings: &NotificationSettings,
    now: DateTime<Utc>,
) -> Result<(u64, u64), NotificationsError> {
    let before = |retention: Duration| {
        if retention.is_zero() {
            DateTime::<Utc>::UNIX_EPOCH
        } else {
            now - chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX)
        }
    };
    store
        .delete_older_than(
            before(settings.retention),
            before(settings.progress_retention),
        )
        .await
}
