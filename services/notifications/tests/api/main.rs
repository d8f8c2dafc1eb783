#![allow(clippy::unwrap_used)] // tests and their helpers fail by panicking

mod events;
mod helpers;
mod replay;
mod rest;
