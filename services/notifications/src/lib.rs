//! Notifications service: turns follow and new-post events into notifications, keeps each
//! user's notification history in MongoDB, serves it over REST, and tells the realtime hub about
//! every new notification with `notification.created` events.
//!
//! A library (`build` returns a bound [`ServiceApp`]) with a thin `main.rs`, so the all-in-one
//! binary and the tests start it in-process. The event handling is in [`events`], its storage in
//! [`store`], the REST routes in [`routes`], and rebuilding from the event log in [`replay`].

pub mod domain;
pub mod error;
pub mod events;
pub mod replay;
pub mod retention;
pub mod routes;
pub mod store;

use std::sync::Arc;

use instaclone_shared::{
    amqp::{BrokerStatus, EventPublisher},
    auth::TokenVerifier,
    config::Settings,
    db,
    health::Dependency,
    server::{ServiceApp, StartupError, service_router},
    users_internal::UsersClient,
};
use tokio_util::sync::CancellationToken;

use crate::{events::EventProcessor, routes::AppState, store::NotificationStore};

pub const SERVICE_NAME: &str = "notifications";

/// Connects to the backing services, prepares the indexes, binds the listener and starts the
/// event consumer; serve with [`ServiceApp::run_until_stopped`].
pub async fn build(
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<ServiceApp, StartupError> {
    // Fail at startup, not on the first request, when the token keys are missing or invalid.
    let verifier = TokenVerifier::from_settings(&settings.jwt)?;
    let (mongo, processor) = connect_processor(settings).await?;
    let store = NotificationStore::new(&mongo);
    let retained = store.clone();
    let broker = BrokerStatus::default();
    let router = service_router(
        SERVICE_NAME,
        routes::router().with_state(AppState {
            store,
            verifier,
            publisher: EventPublisher::new(settings.amqp.clone()),
        }),
        vec![
            Dependency::Mongo(mongo),
            Dependency::RabbitMq {
                settings: settings.amqp.clone(),
                status: broker.clone(),
            },
        ],
        settings,
    );
    instaclone_shared::amqp::declare_work_queue_at_startup(
        &settings.amqp,
        &events::queue_spec(&settings.amqp),
        settings.startup_wait,
    )
    .await?;
    let mut app = ServiceApp::bind(
        SERVICE_NAME,
        settings.http.host,
        settings.http.notifications_port,
        router,
        shutdown.clone(),
    )
    .await?;
    app.spawn_task(retention::run(
        retained,
        settings.notifications.clone(),
        shutdown.clone(),
    ));
    app.spawn_task(events::run(
        settings.amqp.clone(),
        Arc::new(processor),
        shutdown,
        broker,
    ));
    Ok(app)
}

/// The event processor on its database (indexes ensured), as the service and the replay command
/// use it.
pub async fn connect_processor(
    settings: &Settings,
) -> Result<(mongodb::Database, EventProcessor), StartupError> {
    let users = UsersClient::from_settings(
        settings,
        "the notifications service needs it to read followers from the users service",
    )?;
    let mongo = db::connect_mongo(
        &settings.mongo.url,
        &settings.mongo.notifications_database,
        settings.startup_wait,
    )
    .await?;
    let store = NotificationStore::new(&mongo);
    store
        .ensure_indexes()
        .await
        .map_err(|e| StartupError::Migrate(format!("notification indexes: {e}")))?;
    let publisher = EventPublisher::new(settings.amqp.clone());
    Ok((mongo, EventProcessor::new(store, users, publisher)))
}

/// Replays the event log from `since` (see [`replay`]): connects like the service does, without
/// serving HTTP.
pub async fn replay_since(
    settings: &Settings,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<replay::ReplayReport> {
    let (_mongo, processor) = connect_processor(settings).await?;
    Ok(replay::replay(&settings.amqp, &processor, since).await?)
}
