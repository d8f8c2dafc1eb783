#![allow(clippy::unwrap_used)] // tests fail by panicking

mod helpers;

mod access;
mod docs;
mod feed_cache;
mod original_sequence;
mod proxying;
mod rate_limit;
mod upstream_failures;
mod web;
