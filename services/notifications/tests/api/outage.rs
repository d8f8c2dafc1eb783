//! MongoDB out of reach: the REST routes answer 503 with `Retry-After`, never a 500, and serve
//! again as soon as it is back.

use std::time::Duration;

use instaclone_shared::testing::{TcpProxy, TestClient, assert_unavailable};
use reqwest::StatusCode;

use crate::helpers::spawn_users;

#[tokio::test]
async fn an_unreachable_mongodb_is_a_503_with_retry_after() {
    let mut app = spawn_users().await;
    let (proxy, through_proxy) = TcpProxy::for_mongo(&app.env.settings).await;
    let mut settings = app.env.settings.clone();
    settings.mongo.url = through_proxy;
    let notifications = instaclone_notifications::build(&settings, app.shutdown.clone())
        .await
        .expect("notifications service failed to build");
    app.client = TestClient::new(format!("http://127.0.0.1:{}", notifications.port()));
    tokio::spawn(notifications.run_until_stopped());
    let (_, token) = app.user("ada").await;
    let status = app.get("/notifications/my").bearer(&token).await.status;
    assert_eq!(status, StatusCode::OK);

    proxy.cut();
    let requests = [
        ("GET /notifications/my", app.get("/notifications/my")),
        (
            "GET /notifications/unread-count",
            app.get("/notifications/unread-count"),
        ),
        (
            "POST /notifications/read-all",
            app.post("/notifications/read-all"),
        ),
        (
            "POST /notifications/{id}/read",
            app.post("/notifications/65a1b2c3d4e5f60718293a4b/read"),
        ),
    ];
    for (what, request) in requests {
        assert_unavailable(&request.bearer(&token).await, what);
    }

    proxy.restore().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = app.get("/notifications/my").bearer(&token).await.parts();
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
