#![allow(clippy::unwrap_used)]
//! Integration tests of the posts service against the real MongoDB-protocol server and RabbitMQ.

mod feed;
mod helpers;
mod outage;
mod outbox;
mod pagination;
mod posts;
mod store;
