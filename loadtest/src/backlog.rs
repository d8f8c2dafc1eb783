//! The deployment's event backlog: ready messages in the notifications and hub work queues
//! (RabbitMQ, `AMQP_URL` and `AMQP_QUEUE_PREFIX` as the services use them).
//!
//! Set-up (follows, seeded posts) and earlier runs leave events behind, and on a slow MongoDB
//! server the notifications service can take minutes to work through them; a run started on top
//! of that backlog measures the backlog. So the scenarios wait for these queues to empty before
//! the run, and record their depth at the start and end of it.

use std::time::{Duration, Instant};

use instaclone_shared::{amqp, config::Settings};
use lapin::{Channel, Connection, options::QueueDeclareOptions, types::FieldTable};
use serde_json::{Value, json};

use crate::progress;

/// The work queues whose backlog delays a notification.
const QUEUES: [&str; 2] = ["notifications", "hub"];
/// Readings in a row, a second apart, that must find the queues empty.
const QUIET_READINGS: u32 = 5;

pub struct Backlog {
    connection: Connection,
    names: Vec<String>,
}

impl Backlog {
    pub async fn connect() -> anyhow::Result<Self> {
        let settings = Settings::from_env()?;
        let connection = amqp::connect(&settings.amqp).await?;
        Ok(Self {
            connection,
            names: QUEUES.iter().map(|q| settings.amqp.queue(q)).collect(),
        })
    }

    /// Ready messages per queue (`None` for a queue that does not exist).
    pub async fn depths(&self) -> Vec<(String, Option<u32>)> {
        let mut depths = Vec::with_capacity(self.names.len());
        for name in &self.names {
            // A passive declare of a missing queue closes the channel: one channel per query.
            let depth = match self.connection.create_channel().await {
                Ok(channel) => depth(&channel, name).await,
                Err(_) => None,
            };
            depths.push((name.clone(), depth));
        }
        depths
    }

    /// `{"<queue>": <ready messages>, ...}`.
    pub async fn to_json(&self) -> Value {
        self.depths()
            .await
            .into_iter()
            .map(|(name, depth)| (name, json!(depth)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// Waits until every queue has been empty for [`QUIET_READINGS`] readings in a row (a
    /// second apart: events the outbox relays have not published yet arrive a little after
    /// the writes that made them), at most `max`; returns how long it waited and whether the
    /// queues emptied.
    pub async fn wait_empty(&self, max: Duration) -> (f64, bool) {
        let started = Instant::now();
        let total = |depths: &[(String, Option<u32>)]| -> u64 {
            depths.iter().map(|(_, d)| u64::from(d.unwrap_or(0))).sum()
        };
        let first = total(&self.depths().await);
        let bar = progress::bar(first, "backlog");
        let (mut emptied, mut quiet) = (false, 0);
        let mut most = first;
        loop {
            let left = total(&self.depths().await);
            most = most.max(left);
            bar.set_length(most);
            bar.set_position(most.saturating_sub(left));
            bar.set_message(format!("{left} events queued"));
            quiet = if left == 0 { quiet + 1 } else { 0 };
            if quiet >= QUIET_READINGS {
                emptied = true;
                break;
            }
            if started.elapsed() >= max {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        progress::finish(
            &bar,
            if emptied {
                format!("{most} queued events drained")
            } else {
                format!("queues still not empty after {}s", max.as_secs())
            },
        );
        (started.elapsed().as_secs_f64(), emptied)
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done").await;
    }
}

async fn depth(channel: &Channel, name: &str) -> Option<u32> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(name, options, FieldTable::default())
        .await
        .ok()?;
    let _ = channel.close(200, "done").await;
    Some(queue.message_count())
}

/// Before a run: wait (at most `max`) for the queues to empty, then a little longer for the
/// messages consumers already hold. Returns `{waitedSeconds, emptied, atStart}` and the
/// connection for the end-of-run reading, or a note when RabbitMQ cannot be reached.
pub async fn settle(max: Duration) -> (Value, Option<Backlog>) {
    let backlog = match Backlog::connect().await {
        Ok(backlog) => backlog,
        Err(error) => {
            progress::note(format!(
                "cannot read the queue backlog ({error}); waiting {}s instead",
                max.as_secs().min(10)
            ));
            tokio::time::sleep(max.min(Duration::from_secs(10))).await;
            return (json!({ "error": error.to_string() }), None);
        }
    };
    let (waited, emptied) = backlog.wait_empty(max).await;
    if emptied {
        // Consumers may still hold up to a prefetch's worth of messages.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let at_start = backlog.to_json().await;
    (
        json!({ "waitedSeconds": waited, "emptied": emptied, "atStart": at_start }),
        Some(backlog),
    )
}

/// The queue depths at the end of a run (null without a broker connection), closing it.
pub async fn final_depths(backlog: Option<Backlog>) -> Value {
    match backlog {
        Some(backlog) => {
            let depths = backlog.to_json().await;
            backlog.close().await;
            depths
        }
        None => Value::Null,
    }
}
