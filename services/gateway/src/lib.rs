//! Gateway service. The one public entry point.
//!
//! Every public route of [`routes::PUBLIC_ROUTES`] is forwarded to the service that owns it over
//! pooled connections; nothing else is (`/internal/*` and unknown paths are 404s here). Before
//! forwarding, the gateway verifies the access token (services verify it again: they never
//! trust the gateway) and spends one request of the caller's rate-limit budget in Redis. The home
//! feed is cached per user for a few seconds, dropped on the user's own writes and, through a
//! consumer of `post.created`/`post.deleted`, for the author's followers. The gateway also serves
//! the OpenAPI document and Swagger UI, the web app at `/` ([`web`]), and its own `/health`, `/ready` and `/metrics`.
//!
//! A library (`build` returns a bound [`ServiceApp`]) with a thin `main.rs`, so the all-in-one
//! binary and the tests start it in-process.

pub mod config;
pub mod error;
pub mod feed_cache;
mod feed_invalidation;
mod openapi;
mod proxy;
mod rate_limit;
pub mod routes;
mod web;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{
        HeaderValue, Method, StatusCode,
        header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER},
    },
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use instaclone_shared::{
    auth::{TokenKind, TokenVerifier, bearer_token},
    config::Settings,
    db,
    health::Dependency,
    http::REQUEST_ID_HEADER,
    server::{ServiceApp, StartupError, service_router},
    users_internal::UsersClient,
};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use uuid::Uuid;

pub use config::GatewaySettings;
use config::{CorsOrigins, RateLimit};
use error::GatewayError;
use feed_cache::FeedCache;
use proxy::{Proxy, UpstreamAddress};
use rate_limit::{Decision, RateLimiter, Subject};
use routes::{Access, PUBLIC_ROUTES, PublicRoute, Target, Upstream};

pub const SERVICE_NAME: &str = "gateway";

/// What every proxied request shares. Cheap to clone.
#[derive(Clone)]
struct Gateway {
    verifier: TokenVerifier,
    proxy: Proxy,
    limiter: RateLimiter,
    feed_cache: Option<FeedCache>,
    settings: Arc<GatewaySettings>,
}

impl Gateway {
    async fn handle(
        self,
        route: &'static PublicRoute,
        upstream: Upstream,
        request: Request,
    ) -> Response {
        self.serve(route, upstream, request)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    }

    #[tracing::instrument(name = "forward", skip_all, fields(route = route.path, upstream = upstream.name()))]
    async fn serve(
        &self,
        route: &'static PublicRoute,
        upstream: Upstream,
        request: Request,
    ) -> Result<Response, GatewayError> {
        let client_ip = self.client_ip(&request);
        let user = match route.access {
            Access::AccessToken => {
                let token = bearer_token(request.headers()).ok_or(GatewayError::MissingToken)?;
                Some(self.verifier.verify(token, TokenKind::Access)?.sub)
            }
            Access::Anonymous | Access::RefreshToken | Access::Operational => None,
        };
        if route.access != Access::Operational {
            self.spend_budget(route, user, client_ip).await?;
        }

        let cache = self.feed_cache.as_ref().zip(user);
        match (route.feed_cache, cache) {
            (routes::FeedCache::Serves, Some((cache, user))) => {
                let query = request.uri().query().unwrap_or_default().to_owned();
                if FeedCache::accepts(&query) {
                    if let Some(body) = cache.get(user, &query).await {
                        ::metrics::counter!("gateway_feed_cache_total", "result" => "hit")
                            .increment(1);
                        return Ok(cached_response(body, "HIT"));
                    }
                    ::metrics::counter!("gateway_feed_cache_total", "result" => "miss")
                        .increment(1);
                    let response = self.proxy.forward(upstream, request, client_ip).await?;
                    return store_feed_page(cache, user, &query, response).await;
                }
                self.proxy.forward(upstream, request, client_ip).await
            }
            (routes::FeedCache::Invalidates, Some((cache, user))) => {
                let response = self.proxy.forward(upstream, request, client_ip).await?;
                if response.status().is_success() {
                    cache.invalidate(&[user]).await;
                }
                Ok(response)
            }
            _ => self.proxy.forward(upstream, request, client_ip).await,
        }
    }

    /// The caller's address: the TCP peer, or what a trusted proxy in front says it is.
    fn client_ip(&self, request: &Request) -> Option<IpAddr> {
        let ConnectInfo(peer) = request.extensions().get::<ConnectInfo<SocketAddr>>()?;
        Some(
            self.settings
                .client_addresses
                .client_address(*peer, request.headers()),
        )
    }

    async fn spend_budget(
        &self,
        route: &'static PublicRoute,
        user: Option<Uuid>,
        client_ip: Option<IpAddr>,
    ) -> Result<(), GatewayError> {
        let (subject, limit): (Subject, RateLimit) = match (user, client_ip) {
            (Some(user), _) => (Subject::User(user), self.settings.user_limit),
            (None, Some(ip)) => (Subject::Address(ip), self.settings.anonymous_limit),
            (None, None) => return Ok(()),
        };
        match self.limiter.check(&subject, limit).await {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after } => {
                ::metrics::counter!("gateway_rate_limited_total", "route" => route.path)
                    .increment(1);
                Err(GatewayError::RateLimited { retry_after })
            }
        }
    }
}

fn cached_response(body: axum::body::Bytes, cache_status: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-cache", HeaderValue::from_static(cache_status));
    response
}

/// Passes a feed page through, keeping a copy when it is a success small enough to cache.
async fn store_feed_page(
    cache: &FeedCache,
    user: Uuid,
    query: &str,
    response: Response,
) -> Result<Response, GatewayError> {
    let length = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let cacheable = response.status() == StatusCode::OK
        && length.is_some_and(|length| length <= feed_cache::MAX_CACHED_BODY);
    if !cacheable {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, feed_cache::MAX_CACHED_BODY)
        .await
        .map_err(|_| GatewayError::UpstreamFailed(Upstream::Posts))?;
    cache.put(user, query, &bytes).await;
    let mut response = Response::from_parts(parts, Body::from(bytes));
    response
        .headers_mut()
        .insert("x-cache", HeaderValue::from_static("MISS"));
    Ok(response)
}

/// Connects to Redis and binds the listener, with the gateway's own settings read from the
/// environment; serve with [`ServiceApp::run_until_stopped`].
pub async fn build(
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<ServiceApp, StartupError> {
    let gateway_settings = GatewaySettings::from_env()?;
    build_with(settings, gateway_settings, shutdown).await
}

/// [`build`] with the gateway's own settings given.
pub async fn build_with(
    settings: &Settings,
    gateway_settings: GatewaySettings,
    shutdown: CancellationToken,
) -> Result<ServiceApp, StartupError> {
    build_in_process(settings, gateway_settings, Vec::new(), shutdown).await
}

/// [`build_with`], serving the `in_process` services (those running in this process, as in the
/// all-in-one binary) by calling their routers directly instead of over HTTP.
pub async fn build_in_process(
    settings: &Settings,
    gateway_settings: GatewaySettings,
    in_process: Vec<(Upstream, Router)>,
    shutdown: CancellationToken,
) -> Result<ServiceApp, StartupError> {
    // Fail at startup, not on the first request, when the token keys are missing or invalid.
    let verifier = TokenVerifier::from_settings(&settings.jwt)?;
    let services = &settings.services;
    let addresses = [
        &services.auth,
        &services.users,
        &services.posts,
        &services.notifications,
        &services.hub,
    ]
    .map(|url| UpstreamAddress::parse(url));
    let [auth, users, posts, notifications, hub] = addresses;
    let addresses = [
        auth.map_err(StartupError::Config)?,
        users.map_err(StartupError::Config)?,
        posts.map_err(StartupError::Config)?,
        notifications.map_err(StartupError::Config)?,
        hub.map_err(StartupError::Config)?,
    ];
    let redis = db::connect_redis(&settings.redis, settings.startup_wait).await?;
    let proxy = in_process.into_iter().fold(
        Proxy::new(
            addresses,
            settings.internal.request_timeout,
            gateway_settings.pool_max_idle_per_service,
        ),
        |proxy, (upstream, router)| proxy.with_local(upstream, router),
    );
    let feed_cache = (!gateway_settings.feed_cache_ttl.is_zero()).then(|| {
        FeedCache::new(
            redis.clone(),
            settings.redis.key("gateway:feedcache:"),
            gateway_settings.feed_cache_ttl,
        )
    });
    // Followers' cached feeds are dropped on post events; that needs the users service's
    // internal API, hence the service credential.
    let feed_invalidation = match &feed_cache {
        None => None,
        Some(cache) => {
            let users = UsersClient::from_settings(
                settings,
                "the feed cache needs it (or set FEED_CACHE_TTL_SECS=0)",
            )?;
            Some((cache.clone(), users))
        }
    };
    let cors = cors_layer(&gateway_settings.cors);
    let web = web::router(gateway_settings.public_hub_url.clone());
    let gateway = Gateway {
        verifier,
        proxy,
        limiter: RateLimiter::new(redis.clone(), settings.redis.key("gateway:ratelimit:")),
        feed_cache,
        settings: Arc::new(gateway_settings),
    };

    let mut router = service_router(
        SERVICE_NAME,
        proxied_routes(gateway)?.merge(openapi::router()).merge(web),
        vec![Dependency::Redis(redis)],
        settings,
    );
    if let Some(cors) = cors {
        // Outermost, so preflights are answered before anything else and every response,
        // errors included, carries the CORS headers.
        router = router.layer(cors);
    }
    if feed_invalidation.is_some() {
        instaclone_shared::amqp::declare_work_queue_at_startup(
            &settings.amqp,
            &feed_cache_queue(&settings.amqp),
            settings.startup_wait,
        )
        .await?;
    }
    let mut app = ServiceApp::bind(
        SERVICE_NAME,
        settings.http.host,
        settings.http.gateway_port,
        router,
        shutdown.clone(),
    )
    .await?;
    if let Some((cache, users)) = feed_invalidation {
        app.spawn_task(instaclone_shared::amqp::run_consumer(
            settings.amqp.clone(),
            feed_cache_queue(&settings.amqp),
            shutdown,
            // Not part of readiness: without it only cached feeds go stale sooner.
            instaclone_shared::amqp::BrokerStatus::default(),
            move |batch| feed_invalidation::handle(batch, cache.clone(), users.clone()),
        ));
    }
    Ok(app)
}

/// The queue of post events the gateway consumes to drop followers' cached feeds.
pub fn feed_cache_queue(
    amqp: &instaclone_shared::config::AmqpSettings,
) -> instaclone_shared::amqp::QueueSpec {
    feed_invalidation::queue_spec(amqp)
}

/// One route per forwarded entry of the table, each knowing its upstream and access rule.
fn proxied_routes(gateway: Gateway) -> Result<Router, StartupError> {
    let mut router = Router::new();
    for route in PUBLIC_ROUTES {
        let Target::Upstream(upstream) = route.target else {
            continue;
        };
        let methods = MethodFilter::try_from(route.method.clone())
            .map_err(|e| StartupError::Config(format!("{} {}: {e}", route.method, route.path)))?;
        router = router.route(
            route.path,
            on(methods, move |State(gateway): State<Gateway>, request| {
                gateway.handle(route, upstream, request)
            }),
        );
    }
    Ok(router.with_state(gateway))
}

fn cors_layer(origins: &CorsOrigins) -> Option<CorsLayer> {
    let allow_origin = match origins {
        CorsOrigins::Disabled => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.clone()),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([AUTHORIZATION, CONTENT_TYPE, REQUEST_ID_HEADER])
            .expose_headers([REQUEST_ID_HEADER, RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}
