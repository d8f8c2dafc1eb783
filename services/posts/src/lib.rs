//! Posts service. Posts and home feeds, on MongoDB.
//!
//! A library (`build` returns a bound [`ServiceApp`]) with a thin `main.rs`, so the all-in-one
//! binary and the tests start it in-process. Posts live in the service's own MongoDB database;
//! `post.created` and `post.deleted` leave through an outbox kept inside each post document
//! ([`store`]), published by the shared relay. Home feeds are read from per-reader timelines in
//! Redis ([`timeline`], [`feed`]), kept in step by a consumer of post and follow events
//! ([`events`]), with MongoDB and the users service's follow graph as the source of truth.

pub mod domain;
pub mod error;
pub mod events;
pub mod feed;
pub mod outbox;
pub mod routes;
pub mod store;
pub mod timeline;
pub mod writer;

use instaclone_shared::{
    amqp::{self, BrokerStatus, EventPublisher},
    auth::TokenVerifier,
    config::Settings,
    db,
    follow_cache::FollowCache,
    health::Dependency,
    outbox::{RelayWaker, run_relay},
    server::{ServiceApp, StartupError, service_router},
    users_internal::UsersClient,
};
use tokio_util::sync::CancellationToken;

use crate::{
    feed::{FollowGraph, HomeFeed},
    routes::AppState,
    store::PostStore,
    timeline::HomeTimelines,
};

pub const SERVICE_NAME: &str = "posts";

/// Connects to the backing services, creates the indexes, binds the listener and spawns the
/// outbox relay and the timeline consumer; serve with [`ServiceApp::run_until_stopped`].
pub async fn build(
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<ServiceApp, StartupError> {
    // Fail at startup, not on the first request, when the token keys are missing or invalid.
    let verifier = TokenVerifier::from_settings(&settings.jwt)?;
    let users = UsersClient::from_settings(
        settings,
        "the posts service needs it to read the follow graph",
    )?;
    let mongo = db::connect_mongo(
        &settings.mongo.url,
        &settings.mongo.posts_database,
        settings.startup_wait,
    )
    .await?;
    let store = PostStore::new(&mongo);
    store
        .ensure_indexes()
        .await
        .map_err(|e| StartupError::Config(format!("cannot create the posts indexes: {e}")))?;

    let redis = db::connect_redis(&settings.redis, settings.startup_wait).await?;
    let follows = FollowCache::new(
        redis.clone(),
        settings.redis.clone(),
        settings.timelines.ttl,
    );
    let feed = HomeFeed {
        store: store.clone(),
        graph: FollowGraph::new(users, follows.clone()),
        timelines: HomeTimelines::new(
            redis.clone(),
            &settings.redis.key_prefix,
            settings.timelines.clone(),
            follows,
        ),
    };

    let timeline_queue = events::queue_spec(&settings.amqp);
    amqp::declare_work_queue_at_startup(&settings.amqp, &timeline_queue, settings.startup_wait)
        .await?;

    let relay_waker = RelayWaker::default();
    let state = AppState {
        store: store.clone(),
        feed: feed.clone(),
        verifier,
        relay_waker: relay_waker.clone(),
    };
    let broker = BrokerStatus::default();
    let router = service_router(
        SERVICE_NAME,
        routes::router().with_state(state),
        vec![
            Dependency::Mongo(mongo),
            Dependency::Redis(redis),
            Dependency::RabbitMq {
                settings: settings.amqp.clone(),
                status: broker.clone(),
            },
        ],
        settings,
    );
    let mut app = ServiceApp::bind(
        SERVICE_NAME,
        settings.http.host,
        settings.http.posts_port,
        router,
        shutdown.clone(),
    )
    .await?;
    app.spawn_task(run_relay(
        store,
        EventPublisher::new(settings.amqp.clone()),
        relay_waker,
        shutdown.clone(),
    ));
    app.spawn_task(amqp::run_consumer(
        settings.amqp.clone(),
        timeline_queue,
        shutdown.clone(),
        broker,
        move |batch| {
            let feed = feed.clone();
            async move { events::handle(&feed, &batch).await }
        },
    ));
    Ok(app)
}
