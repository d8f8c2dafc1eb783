//! Consuming `notification.created`: every replica competes on one durable queue, and for each
//! message (one event, or a batch of them) appends every recipient's notification to their stream
//! and publishes it to the replicas holding their connections, a script call per
//! [`APPEND_BATCH`](crate::store::APPEND_BATCH) recipients (see [`crate::store`]). Whichever
//! replica holds the recipient's connections then delivers it.
//!
//! The message is acknowledged only after every recipient's append succeeded; a redelivered
//! batch is harmless because appends are deduplicated by notification id.

use chrono::{DateTime, Utc};
use instaclone_shared::{
    amqp::{Batch, HandlerError, QueueSpec, Rejected},
    config::AmqpSettings,
    events::{EventData, EventEnvelope, NotificationsRead, event_type},
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

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
        routing_keys: vec![
            event_type::NOTIFICATION_CREATED.to_owned(),
            event_type::NOTIFICATIONS_READ.to_owned(),
        ],
        delivery_limit: DELIVERY_LIMIT,
    }
}

/// A `notification.created` payload with each notification kept as the JSON it arrived as: that
/// JSON is what the stream stores and the clients receive, so it is never decoded into a tree
/// and encoded again.
#[derive(Serialize, Deserialize)]
struct RawNotifications {
    notifications: Vec<Box<RawValue>>,
}

/// The fields of a notification the hub routes by.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Routing {
    #[serde(rename = "_id")]
    id: String,
    user_id: Uuid,
    created_at: DateTime<Utc>,
}

/// A notification ready to append: its routing fields and its JSON.
struct Ready {
    routing: Routing,
    json: Box<RawValue>,
}

impl EventData for RawNotifications {
    const TYPE: &'static str = event_type::NOTIFICATION_CREATED;
}

/// Handles the `notification.created` events of one batch together, and pushes each
/// `notifications.read` to the user's connections.
pub async fn handle_batch(store: &Store, batch: Batch) -> Result<Vec<Rejected>, HandlerError> {
    let mut rejected = Vec::new();
    let mut ready = Vec::new();
    let (reads, created): (Vec<_>, Vec<_>) = batch
        .events
        .into_iter()
        .partition(|event| event.event_type == event_type::NOTIFICATIONS_READ);
    for event in reads {
        match event.data::<NotificationsRead>() {
            Ok(read) => {
                let json = format!(r#"{{"unreadCount":{}}}"#, read.unread_count);
                store
                    .publish_control(read.user_id, &json)
                    .await
                    .map_err(|error| HandlerError::Transient(format!("Redis: {error}")))?;
            }
            Err(error) => rejected.push(Rejected {
                event,
                reason: error.to_string(),
            }),
        }
    }
    for event in created {
        match routed(&event) {
            Ok(notifications) => ready.extend(notifications),
            Err(reason) => rejected.push(Rejected { event, reason }),
        }
    }
    let appends: Vec<Append<'_>> = ready
        .iter()
        .map(|item| Append {
            user: item.routing.user_id,
            notification_id: &item.routing.id,
            created_at_millis: item.routing.created_at.timestamp_millis(),
            notification_json: item.json.get(),
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

/// The notifications of one event with what routes them; an error says why it can never be
/// handled.
fn routed(event: &EventEnvelope) -> Result<Vec<Ready>, String> {
    let created: RawNotifications = event.data().map_err(|e| e.to_string())?;
    created
        .notifications
        .into_iter()
        .map(|json| {
            let routing: Routing = serde_json::from_str(json.get())
                .map_err(|e| format!("a notification without its routing fields: {e}"))?;
            Ok(Ready { routing, json })
        })
        .collect()
}
