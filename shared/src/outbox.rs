//! The relay half of the transactional outbox.
//!
//! A producer writes its state change and the pending event atomically (a row in the same
//! PostgreSQL transaction, or the event inside the same MongoDB document). The relay here reads
//! pending events, publishes them with confirms and only then marks them published. If RabbitMQ
//! is down the events simply stay pending and go out once it is back; if the process dies between
//! publishing and marking, they are published again and consumers dedupe them by event id.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    amqp::EventPublisher,
    backoff::{Backoff, RetryPolicy, Retrying, any_error, retry_notify},
    events::EventEnvelope,
};

/// Where a producer keeps its pending events.
pub trait OutboxStore: Send + Sync + 'static {
    type Error: std::fmt::Display + Send;

    /// Up to `limit` unpublished events, oldest first.
    fn pending(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<EventEnvelope>, Self::Error>> + Send;

    /// Marks the events with these ids as published (a store may finish that lazily, but must
    /// never hand them out again).
    fn mark_published(&self, ids: &[Uuid]) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Gives back events [`OutboxStore::pending`] handed out that could not be published, for
    /// stores that claim what they hand out; the next round may take them again at once.
    fn release(&self, ids: &[Uuid]) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = ids;
        async { Ok(()) }
    }

    /// Finishes whatever `mark_published` left to do; the relay calls it as it stops.
    fn flush(&self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }
}

/// Events read and published per round.
pub const RELAY_BATCH: usize = 200;
/// How often the relay looks for pending events when nobody wakes it.
pub const RELAY_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a woken relay waits before reading, so that the events of writes landing at about
/// the same moment leave in one round (one message per queue) rather than one round each. The
/// broker's cost is per message; at a few hundred writes a second this turns most rounds of one
/// event into rounds of several, for 2 ms of added latency.
pub const RELAY_LINGER: Duration = Duration::from_millis(2);

/// Wakes the relay right after a producer commits, so events do not wait for the next poll.
#[derive(Clone, Default)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Publishes pending events until `shutdown` is cancelled.
pub async fn run_relay<S: OutboxStore>(
    store: S,
    publisher: EventPublisher,
    waker: RelayWaker,
    shutdown: CancellationToken,
) {
    relay_until_stopped(&store, &publisher, &waker, &shutdown).await;
    if let Err(error) = store.flush().await {
        tracing::warn!(%error, "outbox relay could not finish marking events published");
    }
}

async fn relay_until_stopped<S: OutboxStore>(
    store: &S,
    publisher: &EventPublisher,
    waker: &RelayWaker,
    shutdown: &CancellationToken,
) {
    let log_failure = |retrying: &Retrying<'_, String>| {
        let error = retrying.error;
        tracing::warn!(%error, "outbox relay could not publish; events stay pending");
    };
    loop {
        // A round that fails is retried with backoff (from the first step again once one
        // succeeds) until shutdown.
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let policy = RetryPolicy::until_shutdown(backoff, shutdown);
        let round = move || relay_round(store, publisher);
        let Ok(published) = retry_notify(policy, any_error, log_failure, round).await else {
            return;
        };
        if published > 0 {
            tracing::debug!(published, "outbox relay published events");
        }
        if shutdown.is_cancelled() {
            return;
        }
        if published < RELAY_BATCH {
            tokio::select! {
                () = waker.0.notified() => tokio::time::sleep(RELAY_LINGER).await,
                () = tokio::time::sleep(RELAY_POLL_INTERVAL) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// One batch: read, publish, mark. Returns how many were published.
pub async fn relay_round<S: OutboxStore>(
    store: &S,
    publisher: &EventPublisher,
) -> Result<usize, String> {
    let events = store
        .pending(RELAY_BATCH)
        .await
        .map_err(|e| e.to_string())?;
    if events.is_empty() {
        return Ok(0);
    }
    #[allow(clippy::cast_precision_loss)]
    metrics::histogram!("outbox_relay_round_events").record(events.len() as f64);
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    if let Err(error) = publisher.publish_batch(&events).await {
        if let Err(release) = store.release(&ids).await {
            tracing::warn!(error = %release, "cannot give back unpublished outbox events");
        }
        return Err(error.to_string());
    }
    store
        .mark_published(&ids)
        .await
        .map_err(|e| e.to_string())?;
    Ok(events.len())
}
