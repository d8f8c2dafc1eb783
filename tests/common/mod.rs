//! Helpers for the tests that run the `instaclone` binary as a process.

#![allow(clippy::unwrap_used, dead_code)] // each test file uses a subset

use std::process::{Child, Command};

use instaclone_shared::testing::TestEnv;

pub mod platform;

/// A port nothing listens on right now, for a child process to bind.
///
/// Taken below the kernel's ephemeral range (32768+) and from a counter, never twice in one test
/// process: a port the kernel handed out and took back could be handed out again at once to
/// anything that binds port 0 (a [`TcpProxy`](instaclone_shared::testing::TcpProxy), another
/// test's listener) before the child binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 100) as u16 * 100,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_768, "ran out of test ports");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Runs an outside test tool (Node with Chromium, schemathesis) to its end, off the async
/// runtime, and fails the test with the tool's output unless it succeeded. `what` names the
/// failure.
pub async fn run_to_success(what: &'static str, mut command: Command) {
    let program = format!("{:?}", command.get_program());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: cannot start {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(output.status.success(), "{what}:\n{stdout}\n{stderr}");
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
        .env("REDIS_URL", s.redis.url.expose())
        .env("REDIS_CLUSTER", s.redis.cluster.to_string())
        .env("REDIS_KEY_PREFIX", &s.redis.key_prefix)
        .env("EVENTS_EXCHANGE", &s.amqp.exchange)
        .env("AMQP_QUEUE_PREFIX", &s.amqp.queue_prefix)
        .env("AMQP_QUEUE_EXPIRES_SECS", "300")
        .env("STARTUP_WAIT_SECS", "5");
    command
}
