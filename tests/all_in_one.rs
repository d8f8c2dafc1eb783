//! The `instaclone` binary: every part answers `/health` on its port, `--only` starts a subset,
//! and SIGTERM stops it cleanly.

#![allow(clippy::unwrap_used)] // test helpers, like the tests, fail by panicking

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::{Running, free_port, instaclone};
use instaclone_shared::testing::TestEnv;

const PORT_VARS: [&str; 6] = [
    "GATEWAY_PORT",
    "AUTH_PORT",
    "USERS_PORT",
    "POSTS_PORT",
    "NOTIFICATIONS_PORT",
    "HUB_PORT",
];

/// Starts the binary against this test's isolated resources, on free ports.
fn start(env: &TestEnv, only: Option<&str>) -> (Running, Vec<(&'static str, u16)>) {
    let ports: Vec<(&'static str, u16)> = PORT_VARS.iter().map(|v| (*v, free_port())).collect();
    let mut command = instaclone(env);
    command
        .envs(ports.iter().map(|(k, v)| (*k, v.to_string())))
        .env_remove("JWT_PRIVATE_KEY")
        .env_remove("JWT_PUBLIC_KEY")
        .env_remove("JWT_PRIVATE_KEY_FILE")
        .env_remove("JWT_PUBLIC_KEY_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(only) = only {
        command.args(["--only", only]);
    }
    (Running(command.spawn().expect("start instaclone")), ports)
}

async fn wait_healthy(client: &reqwest::Client, port: u16) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{port}/health");
    for _ in 0..300 {
        if let Ok(response) = client.get(&url).send().await
            && response.status().is_success()
        {
            return response.json().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing healthy on port {port} after 30 s");
}

#[tokio::test]
async fn every_part_answers_health_and_ready_then_stops_on_sigterm() {
    let env = TestEnv::new();
    let (mut running, ports) = start(&env, None);
    let client = reqwest::Client::new();
    for (name, port) in &ports {
        let body = wait_healthy(&client, *port).await;
        assert_eq!(body["status"], "ok", "{name}");
        let ready = client
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            ready.status(),
            200,
            "{name} not ready: {}",
            ready.text().await.unwrap()
        );
    }

    let pid = running.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    for _ in 0..200 {
        if let Some(status) = running.0.try_wait().unwrap() {
            assert!(status.success(), "exited with {status}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("instaclone did not stop within 20 s of SIGTERM");
}

#[tokio::test]
async fn only_starts_the_chosen_parts() {
    let env = TestEnv::new();
    let (_running, ports) = start(&env, Some("auth,hub"));
    let client = reqwest::Client::new();
    let port = |name: &str| ports.iter().find(|(n, _)| *n == name).unwrap().1;
    wait_healthy(&client, port("AUTH_PORT")).await;
    wait_healthy(&client, port("HUB_PORT")).await;
    for absent in [
        "GATEWAY_PORT",
        "USERS_PORT",
        "POSTS_PORT",
        "NOTIFICATIONS_PORT",
    ] {
        let answer = client
            .get(format!("http://127.0.0.1:{}/health", port(absent)))
            .send()
            .await;
        assert!(answer.is_err(), "{absent} answered although not started");
    }
}

/// `instaclone replay` rebuilds notifications from the event log, once.
#[tokio::test]
async fn replay_rebuilds_notifications_from_the_event_log_idempotently() {
    use instaclone_shared::{
        amqp::EventPublisher,
        events::{EventEnvelope, UserFollowed},
    };
    let env = TestEnv::new();
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    let event = EventEnvelope::new(
        "test",
        &UserFollowed {
            follower_id: uuid::Uuid::now_v7(),
            followed_id: uuid::Uuid::now_v7(),
            follower_username: "ada".to_owned(),
        },
    )
    .unwrap();
    EventPublisher::new(env.settings.amqp.clone())
        .publish(&event)
        .await
        .unwrap();

    let replay = || {
        let output = instaclone(&env)
            .args(["replay", "--since", &since.to_rfc3339()])
            .env(
                "INTERNAL_TOKEN",
                env.settings.internal.token.as_ref().unwrap().expose(),
            )
            .output()
            .expect("run instaclone replay");
        assert!(
            output.status.success(),
            "replay failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).expect("replay report is JSON")
    };
    let first = replay();
    assert_eq!(first["eventsHandled"], 1, "{first}");
    assert_eq!(first["notificationsInserted"], 1, "{first}");
    let second = replay();
    assert_eq!(second["eventsAlreadyDone"], 1, "{second}");
    assert_eq!(second["notificationsInserted"], 0, "{second}");
}
