//! What every Instaclone part shares: configuration, the HTTP contract (envelopes, errors,
//! extractors, middleware), token verification, the event envelope, RabbitMQ publishing and
//! consuming, the outbox relay, connections to the backing services, health and metrics routes,
//! and (with the `testing` feature) the per-test isolation harness.

pub mod amqp;
pub mod auth;
pub mod clients;
pub mod config;
pub mod db;
pub mod events;
pub mod follow_cache;
pub mod health;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod server;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
