#![allow(clippy::unwrap_used)] // tests and their helpers fail by panicking

mod coalescing;
mod events;
mod helpers;
mod outage;
mod replay;
mod rest;
