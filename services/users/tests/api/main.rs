#![allow(clippy::unwrap_used)]
//! Users service tests against the real PostgreSQL and RabbitMQ, each in its own `TestEnv`.

mod follows;
mod helpers;
mod internal;
mod outage;
mod outbox;
mod posts_count;
mod profiles;
mod readiness;
mod search;
