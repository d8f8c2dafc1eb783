//! The hub's HTTP surface: the state every handler shares, `POST /realtime/ticket`, and the two
//! connection routes (`/realtime/ws`, `/realtime/sse`), each of which checks the credential and
//! admission before it upgrades, then hands the connection to [`crate::connection`].

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{
        ConnectInfo, FromRef, State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use futures_util::StreamExt;
use instaclone_shared::{
    auth::{AuthUser, TokenKind, TokenVerifier, bearer_token},
    client_address::ClientAddressPolicy,
    http::{ApiQuery, Envelope},
    revocation::Revocations,
};
use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    admission::{Admission, Slot},
    connection::{ConnectionContext, Resume, Subscriber},
    error::HubError,
    protocol::StreamId,
    store::Store,
};

/// Per-socket WebSocket buffers. Clients only send pongs and the occasional token refresh, so
/// the read side needs little; tungstenite's defaults (128 KiB read buffer, unbounded write
/// buffer, 64 MiB messages) would cost far more memory than the connection itself.
const WS_READ_BUFFER: usize = 256;
const WS_MAX_WRITE_BUFFER: usize = 256 * 1024;
const WS_MAX_MESSAGE: usize = 16 * 1024;

#[derive(Clone)]
pub struct HubState {
    pub(crate) inner: Arc<HubInner>,
}

pub(crate) struct HubInner {
    pub(crate) verifier: TokenVerifier,
    pub(crate) store: Store,
    pub(crate) admission: Admission,
    pub(crate) addresses: ClientAddressPolicy,
    pub(crate) revocations: Revocations,
    pub(crate) connections: Arc<ConnectionContext>,
    pub(crate) ticket_ttl: Duration,
    pub(crate) tracker: TaskTracker,
}

// Written out rather than derived: the hub's state is one `Arc`, so a clone per connection is one
// reference count, and the verifier sits inside it.
impl FromRef<HubState> for TokenVerifier {
    fn from_ref(state: &HubState) -> Self {
        state.inner.verifier.clone()
    }
}

/// The hub's routes; the OpenAPI document describes the ticket route, the one the gateway
/// forwards (clients open the WebSocket and SSE routes on the hub directly, with a ticket).
/// The routes and their description, from the same declarations.
pub(crate) fn api() -> OpenApiRouter<HubState> {
    OpenApiRouter::new()
        .routes(routes!(issue_ticket))
        .route("/realtime/ws", get(websocket))
        .route("/realtime/sse", get(server_sent_events))
}

/// The hub's finished OpenAPI document (see [`instaclone_shared::openapi`]).
pub fn openapi() -> serde_json::Value {
    instaclone_shared::openapi::finish("realtime hub", api().into_openapi())
}

/// A one-time credential for `/realtime/ws?ticket=` or `/realtime/sse?ticket=` on the hub.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = RealtimeTicket)]
struct Ticket {
    ticket: String,
    /// Seconds the ticket stays valid.
    expires_in: u64,
}

/// A one-time, short-lived ticket for the realtime hub's WebSocket or SSE URL.
///
/// Browsers cannot set headers there. The ticket carries the access token's expiry, so the
/// connection it opens ends when the token would have.
#[utoipa::path(post, path = "/realtime/ticket", tag = "realtime", security(("accessToken" = [])),
    responses((status = 201, description = "The ticket", body = Ticket)))]
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
                crate::connection::serve_websocket(context, socket, subscriber, resume).await;
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
        crate::connection::serve_sse(context, events, subscriber, resume).await;
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_gateways_copy_of_the_openapi_document_is_current() {
        instaclone_shared::openapi::assert_gateway_copy_is_current(
            "realtime-hub",
            &super::openapi(),
        );
    }
}
