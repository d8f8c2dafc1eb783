//! The hub's Prometheus metrics (served on `/metrics` by the shared recorder).
//!
//! - `hub_connections{transport}` (gauge): open connections on this replica;
//! - `hub_messages_delivered_total{transport}`: notifications written to a socket (live and
//!   replayed);
//! - `hub_delivery_lag_seconds{transport}` (histogram): notification `createdAt` to socket write;
//! - `hub_drops_total{reason}`: messages not delivered on a connection (it is then closed and
//!   the client resumes from its last id, so nothing is lost for good);
//! - `hub_disconnects_total{transport,reason}`: connections ended by reason;
//! - `hub_notifications_appended_total{outcome}`: consumed notifications, `new` or `duplicate`;
//! - `hub_resyncs_total`, `hub_replayed_total`, `hub_pubsub_reconnects_total`,
//!   `hub_live_gaps_total` (Redis Cluster: a live line arrived before its predecessor).

use crate::protocol::CloseReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Self::WebSocket => "ws",
            Self::Sse => "sse",
        }
    }
}

pub fn connection_opened(transport: Transport) {
    metrics::gauge!("hub_connections", "transport" => transport.label()).increment(1.0);
}

pub fn connection_closed(transport: Transport, reason: CloseReason) {
    metrics::gauge!("hub_connections", "transport" => transport.label()).decrement(1.0);
    metrics::counter!(
        "hub_disconnects_total",
        "transport" => transport.label(),
        "reason" => reason.label()
    )
    .increment(1);
}

pub fn delivered(transport: Transport, created_at_millis: i64) {
    metrics::counter!("hub_messages_delivered_total", "transport" => transport.label())
        .increment(1);
    let lag_millis = chrono::Utc::now().timestamp_millis() - created_at_millis;
    if created_at_millis > 0 && lag_millis >= 0 {
        #[allow(clippy::cast_precision_loss)]
        let seconds = lag_millis as f64 / 1000.0;
        metrics::histogram!("hub_delivery_lag_seconds", "transport" => transport.label())
            .record(seconds);
    }
}

pub fn dropped(reason: &'static str) {
    metrics::counter!("hub_drops_total", "reason" => reason).increment(1);
}

pub fn appended(outcome: &'static str, count: usize) {
    if count > 0 {
        metrics::counter!("hub_notifications_appended_total", "outcome" => outcome)
            .increment(count as u64);
    }
}

pub fn replayed(count: usize) {
    metrics::counter!("hub_replayed_total").increment(count as u64);
}

/// A live line on a Redis Cluster came after an entry the connection had not delivered (publishes
/// reordered or lost between the store and the replica); the connection replayed instead.
pub fn live_gap() {
    metrics::counter!("hub_live_gaps_total").increment(1);
}

pub fn resync() {
    metrics::counter!("hub_resyncs_total").increment(1);
}

pub fn pubsub_reconnected() {
    metrics::counter!("hub_pubsub_reconnects_total").increment(1);
}
