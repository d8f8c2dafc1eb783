#![allow(clippy::unwrap_used)]
//! The realtime hub against real Redis and RabbitMQ, with two replicas where it matters.

mod auth;
mod delivery;
mod failover;
mod helpers;
mod limits;
mod pubsub_outage;
mod resume;
mod sharding;
mod slow_clients;
