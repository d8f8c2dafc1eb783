//! Helpers for the tests that run the `instaclone` binary as a process.

#![allow(clippy::unwrap_used, dead_code)] // each test file uses a subset

use std::process::{Child, Command};

use instaclone_shared::testing::TestEnv;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when the test ends, however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `instaclone` binary pointed at this test's isolated databases, key prefix and exchange
/// and queue names. Ports, keys and the service credential are the caller's to set.
pub fn instaclone(env: &TestEnv) -> Command {
    let s = &env.settings;
    let mut command = Command::new(env!("CARGO_BIN_EXE_instaclone"));
    command
        .env("USERS_DATABASE_URL", s.postgres.users_url.expose())
        .env("POSTS_MONGODB_DATABASE", &s.mongo.posts_database)
        .env(
            "NOTIFICATIONS_MONGODB_DATABASE",
            &s.mongo.notifications_database,
        )
        .env("REDIS_KEY_PREFIX", &s.redis.key_prefix)
        .env("EVENTS_EXCHANGE", &s.amqp.exchange)
        .env("AMQP_QUEUE_PREFIX", &s.amqp.queue_prefix)
        .env("AMQP_QUEUE_EXPIRES_SECS", "300")
        .env("STARTUP_WAIT_SECS", "5");
    command
}
