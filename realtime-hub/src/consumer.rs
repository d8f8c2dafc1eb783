//! Consuming `notification.created`: every replica competes on one durable queue, and for each
//! recipient appends the notification to their stream and publishes it on their channel (one
//! Lua script, see [`crate::store`]). Whichever replica holds the recipient's connections then
//! delivers it.
//!
//! The event is acknowledged only after every recipient's append succeeded; a redelivered batch
//! is harmless because appends are deduplicated by notification id.

use instaclone_shared::{
    amqp::{HandlerError, QueueSpec},
    config::AmqpSettings,
    events::{EventEnvelope, NotificationCreated, event_type},
};

use crate::{
    store::{Appended, Store},
    telemetry,
};

/// Queue suffix shared by all replicas.
pub const QUEUE: &str = "hub";
/// Deliveries of one event before it is dead-lettered.
const DELIVERY_LIMIT: u32 = 10;

pub fn queue_spec(settings: &AmqpSettings) -> QueueSpec {
    QueueSpec {
        name: settings.queue(QUEUE),
        routing_keys: vec![event_type::NOTIFICATION_CREATED.to_owned()],
        delivery_limit: DELIVERY_LIMIT,
    }
}

/// Handles one `notification.created` event.
pub async fn handle(store: &Store, event: EventEnvelope) -> Result<(), HandlerError> {
    let created: NotificationCreated = event
        .data()
        .map_err(|error| HandlerError::Permanent(error.to_string()))?;
    // Issued together: the multiplexed connection pipelines them in order.
    let appends = created.notifications.iter().map(|notification| async move {
        let json = serde_json::to_string(notification)
            .map_err(|error| HandlerError::Permanent(error.to_string()))?;
        store
            .append(
                notification.user_id,
                &notification.id,
                notification.created_at.timestamp_millis(),
                &json,
            )
            .await
            .map_err(|error| HandlerError::Transient(format!("Redis: {error}")))
    });
    for outcome in futures_util::future::join_all(appends).await {
        match outcome? {
            Appended::New(_) => telemetry::appended("new"),
            Appended::Duplicate(_) => telemetry::appended("duplicate"),
        }
    }
    Ok(())
}
