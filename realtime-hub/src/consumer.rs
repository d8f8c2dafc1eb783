//! Consuming `notification.created`: every replica competes on one durable queue, and for each
//! message (one event, or a batch of them) appends every recipient's notification to their stream
//! and publishes it to the replicas holding their connections, a script call per
//! [`APPEND_BATCH`](crate::store::APPEND_BATCH) recipients (see [`crate::store`]). Whichever
//! replica holds the recipient's connections then delivers it.
//!
//! The message is acknowledged only after every recipient's append succeeded; a redelivered
//! batch is harmless because appends are deduplicated by notification id.

use instaclone_shared::{
    amqp::{Batch, HandlerError, QueueSpec, Rejected},
    config::AmqpSettings,
    events::{NotificationCreated, event_type},
};

use crate::{
    store::{Append, Store},
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

/// A notification ready to append: recipient, id, creation time and its JSON.
struct Ready {
    user: uuid::Uuid,
    id: String,
    created_at_millis: i64,
    json: String,
}

/// Handles the `notification.created` events of one message together.
pub async fn handle_batch(store: &Store, batch: Batch) -> Result<Vec<Rejected>, HandlerError> {
    let mut rejected = Vec::new();
    let mut ready = Vec::new();
    for event in batch.events {
        let created: NotificationCreated = match event.data() {
            Ok(created) => created,
            Err(error) => {
                rejected.push(Rejected {
                    event,
                    reason: error.to_string(),
                });
                continue;
            }
        };
        for notification in created.notifications {
            let json = serde_json::to_string(&notification)
                .map_err(|error| HandlerError::Permanent(error.to_string()))?;
            ready.push(Ready {
                user: notification.user_id,
                created_at_millis: notification.created_at.timestamp_millis(),
                id: notification.id,
                json,
            });
        }
    }
    let appends: Vec<Append<'_>> = ready
        .iter()
        .map(|item| Append {
            user: item.user,
            notification_id: &item.id,
            created_at_millis: item.created_at_millis,
            notification_json: &item.json,
        })
        .collect();
    let appended = store
        .append(&appends)
        .await
        .map_err(|error| HandlerError::Transient(format!("Redis: {error}")))?;
    telemetry::appended("new", appended.new);
    telemetry::appended("duplicate", appended.duplicate);
    Ok(rejected)
}
