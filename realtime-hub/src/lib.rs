//! Realtime hub. WebSocket and SSE push of notifications, across replicas, with no loss.
//!
//! Any replica consumes `notification.created` from one shared queue and, per recipient,
//! appends to the recipient's Redis stream and publishes on their channel ([`consumer`],
//! [`store`]). Each replica subscribes only to the channels of its connected users and fans out
//! to their connections ([`registry`]); a connection replays the stream from the client's last
//! id before going live ([`connection`]), so reconnecting to any replica loses nothing.
//!
//! Each replica admits connections within caps per user and per client address, and throttles
//! addresses whose handshakes keep failing ([`admission`]). The HTTP surface (tickets and the two
//! connection routes) is in [`routes`], its errors in [`error`].
//!
//! A library (`build` returns a bound [`ServiceApp`]) with a thin `main.rs`, so the all-in-one
//! binary and the tests start it in-process. The protocol is documented in
//! `docs/realtime-hub.md`.

pub mod admission;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod protocol;
mod queue;
pub mod registry;
pub mod routes;
pub mod store;
pub mod telemetry;

use std::{sync::Arc, time::Duration};

use axum::{Router, http::header};
use instaclone_shared::{
    amqp::{self, BrokerStatus},
    auth::TokenVerifier,
    client_address::ClientAddressPolicy,
    config::Settings,
    db,
    health::Dependency,
    revocation::Revocations,
    server::{ServiceApp, StartupError, service_router},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admission::Admission,
    connection::ConnectionContext,
    registry::Registry,
    routes::{HubInner, HubState, api},
    store::Store,
};

pub const SERVICE_NAME: &str = "realtime-hub";

/// Connects to the backing services and binds the listener; serve with
/// [`ServiceApp::run_until_stopped`].
pub async fn build(
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<ServiceApp, StartupError> {
    // Fail at startup, not on the first request, when the token keys are missing or invalid.
    let verifier = TokenVerifier::from_settings(&settings.jwt)?;
    let redis = db::connect_redis(&settings.redis, settings.startup_wait).await?;
    let store = Store::new(
        redis.clone(),
        settings.redis.clone(),
        settings.hub.stream_max_len,
    );
    let (registry, pubsub_commands) = Registry::new(store.clone());
    let tracker = TaskTracker::new();
    let admission = Admission::new(&settings.hub);
    let state = HubState {
        inner: Arc::new(HubInner {
            verifier: verifier.clone(),
            store: store.clone(),
            admission: admission.clone(),
            revocations: Revocations::new(redis.clone(), settings.redis.clone()),
            addresses: ClientAddressPolicy::new(settings.hub.trusted_proxies.clone()),
            connections: Arc::new(ConnectionContext {
                registry: registry.clone(),
                store: store.clone(),
                verifier,
                shutdown: shutdown.clone(),
                send_queue_capacity: settings.hub.send_queue_capacity,
                ws_ping_interval: settings.hub.ws_ping_interval,
                sse_heartbeat_interval: settings.hub.sse_heartbeat_interval,
            }),
            ticket_ttl: settings.hub.ticket_ttl,
            tracker: tracker.clone(),
        }),
    };

    let (realtime, _) = api().split_for_parts();
    let realtime = realtime.with_state(state);
    let broker = BrokerStatus::default();
    let router = service_router(
        SERVICE_NAME,
        Router::new().merge(realtime),
        vec![
            Dependency::Redis(redis),
            Dependency::RabbitMq {
                settings: settings.amqp.clone(),
                status: broker.clone(),
            },
        ],
        settings,
    );
    // Outermost, so preflights are answered before routing (which would 405 them).
    let router = router.layer(browser_cors());
    let notification_queue = consumer::queue_spec(&settings.amqp);
    amqp::declare_work_queue_at_startup(&settings.amqp, &notification_queue, settings.startup_wait)
        .await?;
    let mut app = ServiceApp::bind(
        SERVICE_NAME,
        settings.http.host,
        settings.http.hub_port,
        router,
        shutdown.clone(),
    )
    .await?;
    // An idle SSE stream would otherwise cost hyper's two 8 KiB connection buffers.
    app.serve_event_streams_on(&["/realtime/sse"]);

    app.spawn_task(registry::run_pubsub(
        registry,
        pubsub_commands,
        shutdown.clone(),
    ));
    let consumer_store = store;
    app.spawn_task(amqp::run_consumer(
        settings.amqp.clone(),
        notification_queue,
        shutdown.clone(),
        broker,
        move |batch| {
            let store = consumer_store.clone();
            async move { consumer::handle_batch(&store, batch).await }
        },
    ));
    app.spawn_task(forget_old_failures(admission, shutdown.clone()));
    // Shutdown drain: every connection says goodbye (close 1001 / `event: reconnect`) and ends;
    // the app stops once they all have (or the server's drain timeout passes).
    app.spawn_task(async move {
        shutdown.cancelled().await;
        tracker.close();
        tracker.wait().await;
    });
    Ok(app)
}

/// Browsers on another origin (the web app is served by the gateway) may open the SSE stream and
/// ask for tickets: credentials travel in the URL (a ticket) or the `Authorization` header, never
/// in cookies, so any origin is safe.
fn browser_cors() -> tower_http::cors::CorsLayer {
    use axum::http::Method;
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("last-event-id"),
        ])
}

/// Keeps the failed-handshake table to recent offenders.
async fn forget_old_failures(admission: Admission, shutdown: CancellationToken) {
    let mut every_minute = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every_minute.tick() => admission.forget_old_failures(),
        }
    }
}
