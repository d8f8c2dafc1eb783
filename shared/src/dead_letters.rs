//! Inspecting and redriving dead letters: the messages a consumer could never handle
//! (undecodable, invalid), each kept in its work queue's `<queue>.dlq` with why.
//!
//! Redrive moves every message of a dead-letter queue back to its own work queue (published to
//! that queue alone through the default exchange, so the other consumers of the same events do
//! not see them again), confirmed before the dead letter is acknowledged: a crash midway leaves
//! a message in both places at worst, never in neither, and every consumer is idempotent, so
//! redriving twice is harmless. Used by `instaclone dlq list|redrive`.

use lapin::{
    BasicProperties, Channel,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
    publisher_confirm::Confirmation,
    types::AMQPValue,
};
use serde::Serialize;

use crate::{
    amqp::{QueueSpec, REJECTED_REASON_HEADER, connect, declare_topology, declare_work_queue},
    config::AmqpSettings,
    events::EventEnvelope,
};

/// Dead letters shown per queue by [`list`]: enough to see what went wrong.
pub const SAMPLE: usize = 20;

/// A work queue's dead letters.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetters {
    pub queue: String,
    pub dead_letter_queue: String,
    pub messages: u32,
    /// The oldest [`SAMPLE`] of them.
    pub sample: Vec<DeadLetter>,
}

/// One dead-lettered message.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Event ids in the message (empty when it is not an event or event batch).
    pub event_ids: Vec<String>,
    pub event_type: Option<String>,
    /// Why it was rejected, when the consumer said (`x-rejected-reason`); otherwise RabbitMQ
    /// dead-lettered it (undecodable, or its delivery limit was spent).
    pub reason: Option<String>,
    pub bytes: usize,
}

/// How many messages each dead-letter queue holds, with the oldest few described. Nothing is
/// removed: every message read is returned to its queue.
pub async fn list(
    settings: &AmqpSettings,
    specs: &[QueueSpec],
) -> Result<Vec<DeadLetters>, lapin::Error> {
    let connection = connect(settings).await?;
    let mut report = Vec::with_capacity(specs.len());
    for spec in specs {
        // A channel per queue: closing it returns the sample it read, unacknowledged.
        let channel = connection.create_channel().await?;
        declare(&channel, settings, spec).await?;
        let dlq = spec.dead_letter_queue();
        let mut sample = Vec::new();
        let mut messages = 0;
        while sample.len() < SAMPLE {
            let Some(message) = channel
                .basic_get(&dlq, BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            messages = message.message_count + u32::try_from(sample.len()).unwrap_or(0) + 1;
            sample.push(describe(&message.delivery));
        }
        let _ = channel.close(200, "listed").await;
        report.push(DeadLetters {
            queue: spec.name.clone(),
            dead_letter_queue: dlq,
            messages,
            sample,
        });
    }
    let _ = connection.close(200, "listed").await;
    Ok(report)
}

/// Moves every message of `spec`'s dead-letter queue back to `spec`'s queue; returns how many.
pub async fn redrive(settings: &AmqpSettings, spec: &QueueSpec) -> Result<u64, lapin::Error> {
    let connection = connect(settings).await?;
    let channel = connection.create_channel().await?;
    declare(&channel, settings, spec).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let dlq = spec.dead_letter_queue();
    let mut moved = 0;
    while let Some(message) = channel
        .basic_get(&dlq, BasicGetOptions { no_ack: false })
        .await?
    {
        let delivery = message.delivery;
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(kind) = delivery.properties.kind() {
            properties = properties.with_type(kind.clone());
        }
        if let Some(id) = delivery.properties.message_id() {
            properties = properties.with_message_id(id.clone());
        }
        if let Some(content_type) = delivery.properties.content_type() {
            properties = properties.with_content_type(content_type.clone());
        }
        let confirm = channel
            .basic_publish(
                "",
                &spec.name,
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await?
            .await?;
        if let Confirmation::Nack(_) = confirm {
            // The work queue refused it (full): leave it where it is and stop.
            tracing::warn!(queue = %spec.name, "the work queue refused a redriven message; stopping");
            break;
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    let _ = channel.close(200, "redriven").await;
    let _ = connection.close(200, "redriven").await;
    tracing::info!(queue = %spec.name, moved, "dead letters redriven");
    Ok(moved)
}

async fn declare(
    channel: &Channel,
    settings: &AmqpSettings,
    spec: &QueueSpec,
) -> Result<(), lapin::Error> {
    declare_topology(channel, settings).await?;
    declare_work_queue(channel, settings, spec).await
}

fn describe(delivery: &lapin::message::Delivery) -> DeadLetter {
    let events = EventEnvelope::decode_batch(&delivery.data).unwrap_or_default();
    let reason = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(REJECTED_REASON_HEADER))
        .and_then(|value| match value {
            AMQPValue::LongString(text) => Some(text.to_string()),
            AMQPValue::ShortString(text) => Some(text.to_string()),
            _ => None,
        });
    DeadLetter {
        event_ids: events.iter().map(|event| event.id.to_string()).collect(),
        event_type: events.first().map(|event| event.event_type.clone()),
        reason,
        bytes: delivery.data.len(),
    }
}
