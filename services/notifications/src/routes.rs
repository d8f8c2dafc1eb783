//! The REST API: a user's notification history, its unread count, and marking read.
//!
//! Every route acts on the caller's own notifications only (the recipient is the token's
//! subject). Someone else's notification id is answered exactly like an unknown one, 404, so ids
//! cannot be probed, and nothing is changed.

use axum::{
    Router,
    extract::{FromRef, State},
};
use instaclone_shared::{
    amqp::EventPublisher,
    auth::{AuthUser, TokenVerifier},
    events::{EventEnvelope, NotificationView, NotificationsRead},
    http::{ApiPath, ApiQuery, Envelope},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    domain::{NotificationId, PageLimit},
    error::NotificationsError,
    store::{ListFilter, NotificationDocument, NotificationStore},
};

/// What every handler shares. Cheap to clone (every field is a handle).
#[derive(Clone, FromRef)]
pub struct AppState {
    pub store: NotificationStore,
    pub verifier: TokenVerifier,
    /// Tells the hub the new unread count after a mark-read, for the user's other tabs.
    pub publisher: EventPublisher,
}

/// The service's public routes; the crate root gives them their state.
pub fn router() -> Router<AppState> {
    api().split_for_parts().0
}

/// The routes and their description, from the same declarations.
fn api() -> OpenApiRouter<AppState> {
    // Static segments (`my`, `unread-count`, `read-all`) are matched before the `{id}`
    // capture, and `{id}` only appears as `/notifications/{id}/read`.
    OpenApiRouter::new()
        .routes(routes!(list_mine))
        .routes(routes!(unread_count))
        .routes(routes!(mark_all_read))
        .routes(routes!(mark_read))
}

/// The service's finished OpenAPI document (see [`instaclone_shared::openapi`]).
pub fn openapi() -> serde_json::Value {
    instaclone_shared::openapi::finish("notifications", api().into_openapi())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (20 when absent).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The id of the last notification of the previous page.
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    before: Option<String>,
    /// `true`: unread ones only.
    unread: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnreadCount {
    count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MarkedRead {
    /// How many notifications changed from unread to read.
    updated: u64,
}

fn views(
    notifications: &[NotificationDocument],
) -> Result<Vec<NotificationView>, NotificationsError> {
    notifications
        .iter()
        .map(NotificationDocument::view)
        .collect()
}

/// The caller's notifications, newest first.
#[utoipa::path(get, path = "/notifications/my", tag = "notifications",
    security(("accessToken" = [])), params(ListQuery),
    responses((status = 200, description = "A page of notifications", body = Vec<NotificationView>)))]
#[tracing::instrument(skip(state, user), fields(user_id = %user.id))]
async fn list_mine(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Envelope<Vec<NotificationView>>, NotificationsError> {
    let filter = ListFilter {
        limit: PageLimit::parse(query.limit)?,
        before: query
            .before
            .as_deref()
            .map(NotificationId::parse)
            .transpose()?,
        unread_only: query.unread.unwrap_or(false),
    };
    let notifications = state.store.list(user.id, filter).await?;
    Ok(Envelope::ok(views(&notifications)?))
}

/// How many of the caller's notifications are unread.
#[utoipa::path(get, path = "/notifications/unread-count", tag = "notifications",
    security(("accessToken" = [])),
    responses((status = 200, description = "The unread count", body = UnreadCount)))]
#[tracing::instrument(skip(state, user), fields(user_id = %user.id))]
async fn unread_count(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Envelope<UnreadCount>, NotificationsError> {
    let count = state.store.unread_count(user.id).await?;
    Ok(Envelope::ok(UnreadCount { count }))
}

/// Mark one notification read; 404 unless it is the caller's.
#[utoipa::path(post, path = "/notifications/{id}/read", tag = "notifications",
    security(("accessToken" = [])),
    params(("id" = String, Path, description = "The notification's id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 200, description = "The notification, now read", body = NotificationView),
        (status = 404, description = "The caller has no such notification"),
    ))]
#[tracing::instrument(skip(state, user), fields(user_id = %user.id))]
async fn mark_read(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Envelope<NotificationView>, NotificationsError> {
    let id = NotificationId::parse(&id)?;
    let notification = state.store.mark_read(user.id, id).await?;
    announce_unread(&state, user.id).await;
    Ok(Envelope::ok(notification.view()?))
}

/// Mark every notification of the caller's read.
#[utoipa::path(post, path = "/notifications/read-all", tag = "notifications",
    security(("accessToken" = [])),
    responses((status = 200, description = "How many changed", body = MarkedRead)))]
#[tracing::instrument(skip(state, user), fields(user_id = %user.id))]
async fn mark_all_read(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Envelope<MarkedRead>, NotificationsError> {
    let updated = state.store.mark_all_read(user.id).await?;
    announce_unread(&state, user.id).await;
    Ok(Envelope::ok(MarkedRead { updated }))
}

/// Publishes the user's unread count (`notifications.read`) so the hub updates every tab and
/// device of theirs. A hint, not a record: if it cannot go out, the write still stands and each
/// client's badge is corrected on its next count read; the failure is logged and counted.
async fn announce_unread(state: &AppState, user: uuid::Uuid) {
    let announced = async {
        let unread_count = state
            .store
            .unread_count(user)
            .await
            .map_err(|e| e.to_string())?;
        let event = EventEnvelope::new(
            crate::SERVICE_NAME,
            &NotificationsRead {
                user_id: user,
                unread_count,
            },
        )
        .map_err(|e| e.to_string())?;
        let publish = state.publisher.publish(&event);
        match tokio::time::timeout(std::time::Duration::from_secs(2), publish).await {
            Ok(published) => published.map_err(|e| e.to_string()),
            Err(_) => Err("RabbitMQ did not confirm within 2 s".to_owned()),
        }
    };
    if let Err(error) = announced.await {
        ::metrics::counter!("notifications_unread_announce_failures_total").increment(1);
        tracing::warn!(%user, %error, "could not announce the unread count");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_gateways_copy_of_the_openapi_document_is_current() {
        instaclone_shared::openapi::assert_gateway_copy_is_current(
            "notifications",
            &super::openapi(),
        );
    }

    /// Attribute values must be literals: the document states the domain's limits.
    #[test]
    fn the_documented_limits_are_the_domains() {
        let document = super::openapi();
        let limit = &document["paths"]["/notifications/my"]["get"]["parameters"][0];
        assert_eq!(limit["name"], "limit");
        assert_eq!(limit["schema"]["maximum"], crate::domain::PageLimit::MAX);
    }
}
