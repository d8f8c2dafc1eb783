//! Realtime hub. WebSocket and SSE push of notifications, across replicas.
//!
//! A library (`build` returns a bound [`ServiceApp`]) with a thin `main.rs`, so the all-in-one
//! binary and the tests start it in-process.

use instaclone_shared::{
    auth::TokenVerifier,
    config::Settings,
    db,
    health::{self, Dependency},
    http::with_common_layers,
    metrics,
    server::{ServiceApp, StartupError},
};
use tokio_util::sync::CancellationToken;

pub const SERVICE_NAME: &str = "realtime-hub";

/// Connects to the backing services and binds the listener; serve with
/// [`ServiceApp::run_until_stopped`].
pub async fn build(
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<ServiceApp, StartupError> {
    // Fail at startup, not on the first request, when the token keys are missing or invalid.
    let _verifier = TokenVerifier::from_settings(&settings.jwt)?;
    let redis = db::connect_redis(&settings.redis.url, settings.startup_wait).await?;
    let router = axum::Router::new()
        .merge(health::router(vec![
            Dependency::Redis(redis),
            Dependency::RabbitMq(settings.amqp.clone()),
        ]))
        .merge(metrics::router());
    let router = with_common_layers(
        metrics::with_request_metrics(router, SERVICE_NAME),
        settings.http.body_limit_bytes,
    );
    ServiceApp::bind(
        SERVICE_NAME,
        settings.http.host,
        settings.http.hub_port,
        router,
        shutdown,
    )
    .await
    .map_err(StartupError::from)
}
