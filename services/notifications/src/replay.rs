//! Rebuilding notifications from the event log.
//!
//! Every event published on the exchange is also kept by the event-log stream queue (declared by
//! [`instaclone_shared::amqp::declare_topology`], retention 7 days). `replay` reads that stream
//! from a point in time up to its end as it was when the replay started, and runs every event
//! through the same idempotent [`EventProcessor`] as the live consumer. Events already handled
//! are skipped by their progress record, half-finished fan-outs are completed, and events that
//! never reached this service (its database was lost or restored from a backup, an event went to
//! the dead-letter queue while the users service was down) are handled now. Running it twice, or
//! over events the live consumer is handling at the same moment, creates no duplicate: the unique
//! `{eventId, userId}` index holds.
//!
//! "The end" is found first with a short probe consumer at offset `last` (the last chunk of the
//! stream); the replay stops after the event at that offset. If the stream is empty there is
//! nothing to do. The stream timestamp has one-second, chunk-level granularity, so a replay may
//! start a little before `since`; those events are handled idempotently like the rest.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use instaclone_shared::{
    amqp::{self, EVENT_LOG_QUEUE, HandlerError},
    events::EventEnvelope,
};
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use serde::Serialize;
use uuid::Uuid;

use crate::events::{EventProcessor, Outcome};

/// Unacknowledged log entries the replay consumer holds (a stream consumer needs a bound).
const REPLAY_PREFETCH: u16 = 200;
/// The probe takes the stream's last chunk as delivered within this quiet period.
const PROBE_QUIET: Duration = Duration::from_millis(500);
/// Upper bound on the probe on a busy stream.
const PROBE_MAX: Duration = Duration::from_secs(3);
/// A replay that receives nothing for this long has reached the end (e.g. `since` is after the
/// last event).
const REPLAY_IDLE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    #[error("event {event_id} could not be handled (try again later): {reason}")]
    Transient { event_id: Uuid, reason: String },
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Events read from the log (a log entry may hold a batch of them).
    pub events_read: u64,
    /// Follow and post events handled now (their notifications were missing or incomplete).
    pub events_handled: u64,
    /// Follow and post events that had been handled completely before.
    pub events_already_done: u64,
    /// Entries of other types (this service ignores them).
    pub events_ignored: u64,
    /// Entries that are not valid events or that can never be handled.
    pub events_failed: u64,
    /// Notifications inserted by this replay.
    pub notifications_inserted: u64,
}

/// Replays the event log from `since` to its current end through `processor`.
pub async fn replay(
    settings: &instaclone_shared::config::AmqpSettings,
    processor: &EventProcessor,
    since: DateTime<Utc>,
) -> Result<ReplayReport, ReplayError> {
    let connection = amqp::connect(settings).await?;
    let channel = connection.create_channel().await?;
    amqp::declare_topology(&channel, settings).await?;
    channel
        .basic_qos(REPLAY_PREFETCH, BasicQosOptions::default())
        .await?;
    let log = settings.queue(EVENT_LOG_QUEUE);
    let mut report = ReplayReport::default();

    let Some(end) = last_offset(&channel, &log).await? else {
        tracing::info!("the event log is empty; nothing to replay");
        return Ok(report);
    };
    let since_secs = u64::try_from(since.timestamp()).unwrap_or_default();
    let tag = format!("replay-{}", Uuid::now_v7());
    let mut deliveries = channel
        .basic_consume(
            &log,
            &tag,
            BasicConsumeOptions::default(),
            offset_argument(AMQPValue::Timestamp(since_secs)),
        )
        .await?;
    tracing::info!(%since, end_offset = end, "replaying the event log");

    while let Ok(Some(delivery)) = tokio::time::timeout(REPLAY_IDLE, deliveries.next()).await {
        let delivery = delivery?;
        let offset = stream_offset(&delivery);
        match EventEnvelope::decode_batch(&delivery.data) {
            Err(error) => {
                tracing::warn!(?offset, %error, "skipping an unreadable log entry");
                report.events_read += 1;
                report.events_failed += 1;
            }
            Ok(events) => {
                for event in events {
                    report.events_read += 1;
                    replay_one(processor, &event, &mut report).await?;
                }
            }
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
        if offset.is_some_and(|offset| offset >= end) {
            break;
        }
    }
    let _ = channel
        .basic_cancel(&tag, BasicCancelOptions::default())
        .await;
    let _ = connection.close(200, "replay done").await;
    tracing::info!(?report, "replay finished");
    Ok(report)
}

/// Runs one logged event through `processor`, counting what happened in `report`.
async fn replay_one(
    processor: &EventProcessor,
    event: &EventEnvelope,
    report: &mut ReplayReport,
) -> Result<(), ReplayError> {
    match processor.handle_with_retries(event).await {
        Ok(Outcome::Ignored) => report.events_ignored += 1,
        Ok(Outcome::AlreadyDone) => report.events_already_done += 1,
        Ok(Outcome::Handled { inserted, .. }) => {
            report.events_handled += 1;
            report.notifications_inserted += inserted;
        }
        Err(HandlerError::Permanent(reason)) => {
            tracing::warn!(event_id = %event.id, %reason, "skipping an event that cannot be handled");
            report.events_failed += 1;
        }
        Err(HandlerError::Transient(reason)) => {
            return Err(ReplayError::Transient {
                event_id: event.id,
                reason,
            });
        }
    }
    Ok(())
}

/// The offset of the stream's last entry, or `None` when the stream is empty.
async fn last_offset(channel: &Channel, log: &str) -> Result<Option<i64>, lapin::Error> {
    let tag = format!("replay-probe-{}", Uuid::now_v7());
    let mut deliveries = channel
        .basic_consume(
            log,
            &tag,
            BasicConsumeOptions::default(),
            offset_argument(AMQPValue::LongString("last".into())),
        )
        .await?;
    let started = tokio::time::Instant::now();
    let mut last = None;
    while started.elapsed() < PROBE_MAX {
        match tokio::time::timeout(PROBE_QUIET, deliveries.next()).await {
            Ok(Some(delivery)) => {
                let delivery = delivery?;
                last = last.max(stream_offset(&delivery));
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            Ok(None) | Err(_) => break,
        }
    }
    channel
        .basic_cancel(&tag, BasicCancelOptions::default())
        .await?;
    Ok(last)
}

fn offset_argument(value: AMQPValue) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), value);
    arguments
}

/// The `x-stream-offset` header RabbitMQ puts on every delivery from a stream.
fn stream_offset(delivery: &Delivery) -> Option<i64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(offset) => Some(*offset),
        AMQPValue::LongInt(offset) => Some(i64::from(*offset)),
        AMQPValue::LongUInt(offset) => Some(i64::from(*offset)),
        AMQPValue::Timestamp(offset) => i64::try_from(*offset).ok(),
        _ => None,
    }
}
