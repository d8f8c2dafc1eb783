//! What every Instaclone part shares: configuration, the HTTP contract (envelopes, errors,
//! extractors, middleware), token verification, the event envelope, RabbitMQ publishing and
//! consuming, the outbox relay, connections to the backing services, health and metrics routes,
//! and (with the `testing` feature) the per-test isolation harness.

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod auth;
pub mod backoff;
pub mod client_address;
pub mod config;
pub mod db;
#[cfg(feature = "amqp")]
pub mod dead_letters;
pub mod events;
#[cfg(feature = "redis")]
pub mod follow_cache;
pub mod health;
pub mod http;
pub mod metrics;
pub mod openapi;
#[cfg(feature = "amqp")]
pub mod outbox;
#[cfg(feature = "redis")]
pub mod redis_conn;
#[cfg(feature = "redis")]
pub mod revocation;
pub mod server;
pub mod serving;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod unreachable;
pub mod users_internal;
pub mod web_url;

/// Every Instaclone binary allocates with mimalloc: the platform's hot paths (HTTP, JSON, BSON,
/// AMQP frames) make many small, short-lived allocations from several threads, which glibc's
/// allocator served at about a sixth of the services' CPU (profiled under `POST /posts` load).
/// Declared once here, so every part, the all-in-one binary and the tests get the same one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
