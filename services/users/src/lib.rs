//! Users service. Profiles, the follow graph and search, on PostgreSQL.
//!
//! A library (`build` returns a bound [`ServiceApp`]) with a thin `main.rs`, so the all-in-one
//! binary and the tests start it in-process. `build` runs the embedded migrations, then starts
//! two background tasks beside the HTTP server: the outbox relay that publishes `user.followed`
//! and `user.unfollowed`, and the consumer of `post.created`/`post.deleted` that keeps post
//! counts. A third, the [`janitor`], deletes old published outbox rows and consumed event ids.
//!
//! Public routes and the state every handler shares are in [`routes`], service-to-service
//! routes in [`internal`].

pub mod domain;
pub mod error;
pub mod internal;
pub mod janitor;
pub mod outbox;
pub mod posts_count;
pub mod routes;
pub mod store;
pub mod views;

use instaclone_shared::{
    amqp::{BrokerStatus, EventPublisher, declare_work_queue_at_startup, run_consumer},
    auth::{InternalToken, TokenVerifier},
    config::Settings,
    db,
    follow_cache::FollowCache,
    health::Dependency,
    outbox::{RelayWaker, run_relay},
    server::{ServiceApp, StartupError, service_router},
};
use tokio_util::sync::CancellationToken;

use crate::{outbox::PgOutbox, routes::AppState, store::Store};

pub const SERVICE_NAME: &str = "users";

/// Connects to the backing services, migrates the database and binds the listener; serve with
/// [`ServiceApp::run_until_stopped`].
pub async fn build(
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<ServiceApp, StartupError> {
    // Fail at startup, not on the first request, when the token keys are missing or invalid.
    let verifier = TokenVerifier::from_settings(&settings.jwt)?;
    let internal_token = InternalToken::from_settings(
        &settings.internal,
        "other services call the users service's internal API with it",
    )?;
    let pool = db::connect_postgres(
        &settings.postgres.users_url,
        settings.postgres.max_connections,
        settings.startup_wait,
    )
    .await?;
    sqlx::migrate!()
        .run(&pool)
        .await
        .map_err(|e| StartupError::Migrate(e.to_string()))?;

    let redis = db::connect_redis(&settings.redis, settings.startup_wait).await?;
    let follow_cache = FollowCache::new(redis, settings.redis.clone(), settings.timelines.ttl);
    let relay_waker = RelayWaker::default();
    let state = AppState {
        store: Store::new(pool.clone()),
        verifier,
        internal_token,
        relay_waker: relay_waker.clone(),
        follow_cache,
    };
    let broker = BrokerStatus::default();
    let router = service_router(
        SERVICE_NAME,
        axum::Router::new()
            .merge(routes::router())
            .merge(internal::router())
            .with_state(state),
        vec![
            Dependency::Postgres(pool.clone()),
            Dependency::RabbitMq {
                settings: settings.amqp.clone(),
                status: broker.clone(),
            },
        ],
        settings,
    );
    // Bound before serving, so no post.created published meanwhile misses the counts.
    let posts_count_queue = posts_count::queue_spec(&settings.amqp);
    declare_work_queue_at_startup(&settings.amqp, &posts_count_queue, settings.startup_wait)
        .await?;
    let mut app = ServiceApp::bind(
        SERVICE_NAME,
        settings.http.host,
        settings.http.users_port,
        router,
        shutdown.clone(),
    )
    .await
    .map_err(StartupError::from)?;

    app.spawn_task(run_relay(
        PgOutbox::new(pool.clone()),
        EventPublisher::new(settings.amqp.clone()),
        relay_waker,
        shutdown.clone(),
    ));
    app.spawn_task(janitor::run(pool.clone(), shutdown.clone()));
    let consumer_pool = pool;
    app.spawn_task(run_consumer(
        settings.amqp.clone(),
        posts_count_queue,
        shutdown,
        broker,
        move |batch| posts_count::apply_batch(consumer_pool.clone(), batch),
    ));
    Ok(app)
}
