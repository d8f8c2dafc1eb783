#![allow(clippy::unwrap_used)]
//! The auth service against real Redis and a real users service (on a real PostgreSQL), both
//! started in-process on port 0 per test.

mod account;
mod helpers;
mod login;
mod outage;
mod rate_limit;
mod register;
mod sessions;
mod tokens;
