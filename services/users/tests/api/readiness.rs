//! `/ready` reports RabbitMQ from the service's own consumer link: no connection of its own per
//! request (a public endpoint must not let anyone make the service open broker connections), and
//! down while that link is.

use std::time::Duration;

use instaclone_shared::testing::{TcpProxy, TestEnv};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app_with;

async fn ready(app: &crate::helpers::TestApp) -> (StatusCode, Value) {
    app.get("/ready").await.parts()
}

async fn eventually(app: &crate::helpers::TestApp, expected: StatusCode) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ready(app).await;
        if status == expected {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn readiness_reuses_the_consumer_link_and_follows_it() {
    let env = TestEnv::new();
    let (proxy, through_proxy) = TcpProxy::for_rabbitmq(&env.settings).await;
    let app = spawn_app_with(env, |settings| settings.amqp.url = through_proxy).await;
    eventually(&app, StatusCode::OK).await;

    let before = proxy.accepted();
    for _ in 0..50 {
        let (status, body) = ready(&app).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(proxy.accepted(), before, "/ready opened broker connections");

    proxy.cut();
    let body = eventually(&app, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["checks"]["rabbitmq"], "down", "{body}");
    assert_eq!(body["checks"]["postgres"], "up", "{body}");
    proxy.restore().await;
    eventually(&app, StatusCode::OK).await;
}
