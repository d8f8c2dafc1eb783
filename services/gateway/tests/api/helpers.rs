//! Starting the gateway in-process in front of real HTTP servers standing in for the services.
//!
//! The stand-ins are small axum servers of our own on port 0 that answer every request with what
//! they received (method, path, query, headers, body), so a test sees exactly what the gateway
//! forwarded. Headers on the request steer them: `x-test-status` picks the status,
//! `x-test-delay-ms` makes them slow.

use std::{
    collections::BTreeMap,
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Request, State},
    http::StatusCode,
    response::IntoResponse,
};
use instaclone_gateway::{GatewaySettings, routes::Upstream};
use instaclone_shared::testing::{TestClient, TestEnv};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A stand-in service that echoes what it receives.
pub struct EchoService {
    pub url: String,
    hits: Arc<AtomicUsize>,
    _stop: tokio_util::sync::DropGuard,
}

impl EchoService {
    pub async fn start(name: &'static str) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .fallback(echo)
            .with_state((name, hits.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
                .unwrap();
        });
        Self {
            url,
            hits,
            _stop: stop.drop_guard(),
        }
    }

    /// How many requests reached this service.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn echo(
    State((name, hits)): State<(&'static str, Arc<AtomicUsize>)>,
    request: Request,
) -> impl IntoResponse {
    let hit = hits.fetch_add(1, Ordering::SeqCst) + 1;
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(delay) = header("x-test-delay-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = header("x-test-status")
        .and_then(|v| v.parse().ok())
        .and_then(|v| StatusCode::from_u16(v).ok())
        .unwrap_or(StatusCode::OK);
    let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("<binary>").to_owned()))
        .collect();
    let data = json!({
        "service": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "bodyLength": body.len(),
        "body": String::from_utf8_lossy(&body),
        "hit": hit,
    });
    (
        status,
        [("x-upstream", name)],
        Json(json!({"statusCode": status.as_u16(), "data": data})),
    )
}

pub struct TestApp {
    /// The gateway.
    pub client: TestClient,
    pub env: TestEnv,
    pub services: BTreeMap<&'static str, EchoService>,
    _stop: tokio_util::sync::DropGuard,
}

impl Deref for TestApp {
    type Target = TestClient;

    fn deref(&self) -> &TestClient {
        &self.client
    }
}

impl TestApp {
    pub fn service(&self, upstream: Upstream) -> &EchoService {
        &self.services[upstream.name()]
    }

    pub fn token(&self, user: uuid::Uuid) -> String {
        self.env.access_token(user)
    }

    /// Another gateway replica on the same settings (same Redis prefix, same services).
    pub async fn replica(
        &self,
        gateway_settings: GatewaySettings,
    ) -> (TestClient, CancellationToken) {
        let shutdown = CancellationToken::new();
        let app =
            instaclone_gateway::build_with(&self.env.settings, gateway_settings, shutdown.clone())
                .await
                .expect("gateway builds");
        let client = TestClient::new(format!("http://127.0.0.1:{}", app.port()));
        tokio::spawn(app.run_until_stopped());
        (client, shutdown)
    }
}

/// Generous limits, so only the tests about rate limiting ever meet them.
pub fn test_settings() -> GatewaySettings {
    let mut settings = GatewaySettings::default();
    settings.anonymous_limit.requests = 10_000;
    settings.user_limit.requests = 10_000;
    settings
}

/// The gateway in front of one echo service per upstream.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_settings(), |_| {}).await
}

/// The gateway with these gateway settings; `adjust` may change the shared settings (service
/// URLs are already pointed at the echo services).
pub async fn spawn_app_with(
    gateway_settings: GatewaySettings,
    adjust: impl FnOnce(&mut instaclone_shared::config::Settings),
) -> TestApp {
    let mut env = TestEnv::new();
    let mut services = BTreeMap::new();
    for upstream in Upstream::ALL {
        services.insert(upstream.name(), EchoService::start(upstream.name()).await);
    }
    let urls = &mut env.settings.services;
    urls.auth = services["auth"].url.clone();
    urls.users = services["users"].url.clone();
    urls.posts = services["posts"].url.clone();
    urls.notifications = services["notifications"].url.clone();
    urls.hub = services["hub"].url.clone();
    adjust(&mut env.settings);

    let shutdown = CancellationToken::new();
    let app = instaclone_gateway::build_with(&env.settings, gateway_settings, shutdown.clone())
        .await
        .expect("gateway builds");
    let client = TestClient::new(format!("http://127.0.0.1:{}", app.port()));
    tokio::spawn(app.run_until_stopped());
    TestApp {
        client,
        env,
        services,
        _stop: shutdown.drop_guard(),
    }
}

/// A URL where nothing listens.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Asserts the error envelope of the NestJS original.
pub fn assert_error_envelope(body: &Value, status: u16) {
    assert_eq!(body["statusCode"], status, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert!(body["error"].is_string(), "{body}");
}

/// A stand-in for the users service's internal follower list: `author`'s followers, one per
/// page, so callers must follow the cursor.
pub async fn start_followers_service(
    author: uuid::Uuid,
    followers: Vec<uuid::Uuid>,
) -> EchoService {
    use axum::extract::{Path, Query};
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let router = Router::new().route(
        "/internal/users/{id}/followers",
        axum::routing::get(
            move |Path(id): Path<uuid::Uuid>,
                  Query(query): Query<BTreeMap<String, String>>,
                  headers: axum::http::HeaderMap| {
                let followers = followers.clone();
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    if !headers.contains_key("x-internal-token") {
                        return (StatusCode::UNAUTHORIZED, Json(json!({})));
                    }
                    if id != author {
                        return (StatusCode::NOT_FOUND, Json(json!({"statusCode": 404, "message": "Not found", "error": "Not Found"})));
                    }
                    let index: usize = query.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
                    let ids: Vec<_> = followers.get(index).into_iter().collect();
                    let next = (index + 1 < followers.len()).then(|| (index + 1).to_string());
                    (StatusCode::OK, Json(json!({"statusCode": 200, "data": {"ids": ids, "nextCursor": next}})))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
            .unwrap();
    });
    EchoService {
        url,
        hits,
        _stop: stop.drop_guard(),
    }
}
