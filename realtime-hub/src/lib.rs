//! Realtime hub. WebSocket and SSE push of notifications, across replicas, with no loss.
//!
//! Any replica consumes `notification.created` from one shared queue and, per recipient,
//! appends to the recipient's Redis stream and publishes on their channel ([`consumer`],
//! [`store`]). Each replica subscribes only to the channels of its connected users and fans out
//! to their connections ([`registry`]); a connection replays the stream from the client's last
//! id before going live ([`connection`]), so reconnecting to any replica loses nothing.
//!
//! Each replica admits connections within caps per user and per client address, and throttles
//! addresses whose handshakes keep failing ([`admission`]).
//!
//! A library (`build` returns a bound [`ServiceApp`]) with a thin `main.rs`, so the all-in-one
//! binary and the tests start it in-process. The protocol is documented in
//! `docs/realtime-hub.md`.

pub mod admission;
pub mod connection;
pub mod consumer;
pub mod protocol;
mod queue;
pub mod registry;
pub mod store;
pub mod telemetry;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{
        ConnectInfo, FromRef, State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use futures_util::StreamExt;
use instaclone_shared::{
    amqp::{self, BrokerStatus},
    auth::{AuthUser, TokenKind, TokenVerifier, bearer_token},
    client_address::ClientAddressPolicy,
    config::Settings,
    db,
    health::Dependency,
    http::{ApiError, ApiQuery, Envelope},
    revocation::Revocations,
    server::{ServiceApp, StartupError, service_router},
    unreachable::Unreachable,
};
use serde::{Deserialize, Serialize};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{
    admission::{Admission, Refusal, Slot},
    connection::{ConnectionContext, Resume, Subscriber},
    protocol::{InvalidStreamId, StreamId},
    registry::Registry,
    store::Store,
};

pub const SERVICE_NAME: &str = "realtime-hub";

/// Per-socket WebSocket buffers. Clients only send pongs and the occasional token refresh, so
/// the read side needs little; tungstenite's defaults (128 KiB read buffer, unbounded write
/// buffer, 64 MiB messages) would cost far more memory than the connection itself.
const WS_READ_BUFFER: usize = 256;
const WS_MAX_WRITE_BUFFER: usize = 256 * 1024;
const WS_MAX_MESSAGE: usize = 16 * 1024;

/// One error type for the hub's HTTP surface.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error(transparent)]
    BadResumeId(#[from] InvalidStreamId),
    #[error("{0}")]
    NotAnUpgrade(String, StatusCode),
    #[error("this replica is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl From<HubError> for ApiError {
    fn from(error: HubError) -> Self {
        match error {
            HubError::Unauthorized(message) => ApiError::unauthorized(message),
            HubError::BadResumeId(error) => ApiError::bad_request(error.to_string()),
            HubError::NotAnUpgrade(message, status) => ApiError::new(status, message),
            HubError::ShuttingDown => {
                ApiError::service_unavailable("This replica is shutting down; connect to another")
            }
            HubError::Refused(refusal) => {
                ::metrics::counter!("hub_connections_refused_total", "reason" => refusal.kind())
                    .increment(1);
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, refusal.to_string())
                    .with_retry_after(refusal.retry_after().as_secs().max(1))
            }
            HubError::Redis(error) if error.is_unreachable() => {
                ApiError::unavailable("Redis", error)
            }
            HubError::Redis(error) => ApiError::internal(error),
        }
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

#[derive(Clone)]
pub struct HubState {
    inner: Arc<HubInner>,
}

struct HubInner {
    verifier: TokenVerifier,
    store: Store,
    admission: Admission,
    addresses: ClientAddressPolicy,
    revocations: Revocations,
    connections: Arc<ConnectionContext>,
    ticket_ttl: Duration,
    tracker: TaskTracker,
}

impl FromRef<HubState> for TokenVerifier {
    fn from_ref(state: &HubState) -> Self {
        state.inner.verifier.clone()
    }
}

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

    let realtime = Router::new()
        .route("/realtime/ticket", post(issue_ticket))
        .route("/realtime/ws", get(websocket))
        .route("/realtime/sse", get(server_sent_events))
        .with_state(state);
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

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Ticket {
    ticket: String,
    /// Seconds the ticket stays valid.
    expires_in: u64,
}

/// `POST /realtime/ticket`: a one-time credential to put in a WebSocket or EventSource URL,
/// since browsers cannot set headers there. It carries the access token's expiry, so the
/// connection it opens ends when the token would have.
#[tracing::instrument(skip_all, fields(user = %user.id))]
async fn issue_ticket(
    State(hub): State<HubState>,
    user: AuthUser,
) -> Result<(StatusCode, Envelope<Ticket>), HubError> {
    let bytes: [u8; 32] = rand::random();
    let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let value = format!("{}:{}:{}", user.id, user.expires_at, user.issued_at);
    hub.inner
        .store
        .put_ticket(&ticket, &value, hub.inner.ticket_ttl)
        .await?;
    Ok((
        StatusCode::CREATED,
        Envelope::created(Ticket {
            ticket,
            expires_in: hub.inner.ticket_ttl.as_secs(),
        }),
    ))
}

/// Query of both connection routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConnectQuery {
    ticket: Option<String>,
    /// Resume after this id.
    last_event_id: Option<String>,
    /// Alias of `lastEventId`.
    since: Option<String>,
}

impl HubState {
    /// Who connects, holding a connection slot: refused (429) while the client's address is
    /// throttled for failed handshakes or a cap is full, 401 on bad credentials (counted
    /// against the address).
    async fn admit(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        ticket: Option<&str>,
    ) -> Result<(Subscriber, Slot), HubError> {
        let address = self.inner.addresses.client_address(peer, headers);
        self.inner.admission.check_failures(address)?;
        let subscriber = match self.authenticate(headers, ticket).await {
            Err(error @ HubError::Unauthorized(_)) => {
                self.inner.admission.record_failure(address);
                return Err(error);
            }
            other => other?,
        };
        if self
            .inner
            .revocations
            .is_revoked(subscriber.user, subscriber.issued_at)
            .await?
        {
            return Err(HubError::Unauthorized("Session revoked: log in again"));
        }
        let slot = self.inner.admission.admit(subscriber.user, address)?;
        Ok((subscriber, slot))
    }

    /// Authenticates by ticket (consumed) or bearer token; 401 otherwise.
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        ticket: Option<&str>,
    ) -> Result<Subscriber, HubError> {
        if let Some(ticket) = ticket {
            let value = self
                .inner
                .store
                .take_ticket(ticket)
                .await?
                .ok_or(HubError::Unauthorized("Invalid, expired or used ticket"))?;
            let subscriber =
                parse_ticket(&value).ok_or(HubError::Unauthorized("Invalid ticket"))?;
            if subscriber.expires_at <= chrono::Utc::now().timestamp() {
                return Err(HubError::Unauthorized("Token has expired"));
            }
            return Ok(subscriber);
        }
        let token = bearer_token(headers).ok_or(HubError::Unauthorized(
            "Missing credentials: a ticket or a bearer token",
        ))?;
        let claims = self
            .inner
            .verifier
            .verify(token, TokenKind::Access)
            .map_err(|error| {
                HubError::Unauthorized(match error {
                    instaclone_shared::auth::TokenError::Expired => "Token has expired",
                    _ => "Invalid token",
                })
            })?;
        Ok(Subscriber {
            user: claims.sub,
            expires_at: claims.exp,
            issued_at: claims.iat,
        })
    }

    /// Where the connection starts: after the client's id, or at the stream's current head.
    async fn resume_point(
        &self,
        user: Uuid,
        requested: Option<StreamId>,
    ) -> Result<Resume, HubError> {
        Ok(match requested {
            Some(id) => Resume::After(id),
            None => Resume::Fresh(self.inner.store.head(user).await?),
        })
    }

    fn refuse_when_stopping(&self) -> Result<(), HubError> {
        if self.inner.connections.shutdown.is_cancelled() {
            Err(HubError::ShuttingDown)
        } else {
            Ok(())
        }
    }
}

/// A ticket's stored value: `<user>:<expires at>:<issued at>` (Unix seconds).
fn parse_ticket(value: &str) -> Option<Subscriber> {
    let mut parts = value.split(':');
    let user = parts.next()?.parse().ok()?;
    let expires_at = parts.next()?.parse().ok()?;
    let issued_at = parts.next()?.parse().ok()?;
    Some(Subscriber {
        user,
        expires_at,
        issued_at,
    })
}

fn requested_id(candidates: &[Option<&str>]) -> Result<Option<StreamId>, HubError> {
    candidates
        .iter()
        .flatten()
        .map(|text| text.trim())
        .find(|text| !text.is_empty())
        .map(str::parse)
        .transpose()
        .map_err(HubError::from)
}

/// `GET /realtime/ws`: the WebSocket transport.
#[tracing::instrument(skip_all)]
async fn websocket(
    State(hub): State<HubState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiQuery(query): ApiQuery<ConnectQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HubError> {
    hub.refuse_when_stopping()?;
    // Before the credentials: a request that cannot become a WebSocket must not use up a ticket.
    let upgrade = upgrade
        .map_err(|rejection| HubError::NotAnUpgrade(rejection.body_text(), rejection.status()))?;
    let requested = requested_id(&[query.last_event_id.as_deref(), query.since.as_deref()])?;
    let (subscriber, slot) = hub.admit(peer, &headers, query.ticket.as_deref()).await?;
    let resume = hub.resume_point(subscriber.user, requested).await?;
    let context = hub.inner.connections.clone();
    let tracker = hub.inner.tracker.clone();
    Ok(upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
        .max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                connection::serve_websocket(context, socket, subscriber, resume).await;
                drop(slot);
            })
        }))
}

/// `GET /realtime/sse`: the Server-Sent Events transport. `Last-Event-ID` (sent by browsers on
/// reconnect) takes precedence over the query.
#[tracing::instrument(skip_all)]
async fn server_sent_events(
    State(hub): State<HubState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiQuery(query): ApiQuery<ConnectQuery>,
    headers: HeaderMap,
) -> Result<Response, HubError> {
    hub.refuse_when_stopping()?;
    let header = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok());
    let requested = requested_id(&[
        header,
        query.last_event_id.as_deref(),
        query.since.as_deref(),
    ])?;
    let (subscriber, slot) = hub.admit(peer, &headers, query.ticket.as_deref()).await?;
    let resume = hub.resume_point(subscriber.user, requested).await?;
    // One event in flight: the connection's own bounded queue does the buffering; this only
    // hands events to the response body as the socket accepts them.
    let (events, body) = futures_channel::mpsc::channel(0);
    let context = hub.inner.connections.clone();
    hub.inner.tracker.spawn(async move {
        connection::serve_sse(context, events, subscriber, resume).await;
        drop(slot);
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body.map(Ok::<_, Infallible>)),
    )
        .into_response())
}
