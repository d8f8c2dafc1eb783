//! The REST API: a user's notification history, its unread count, and marking read.
//!
//! Every route acts on the caller's own notifications only (the recipient is the token's
//! subject). Someone else's notification id is answered exactly like an unknown one, 404, so ids
//! cannot be probed, and nothing is changed.

use axum::{
    Router,
    extract::{FromRef, State},
    routing::{get, post},
};
use instaclone_shared::{
    amqp::EventPublisher,
    auth::{AuthUser, TokenVerifier},
    events::{EventEnvelope, NotificationView, NotificationsRead},
    http::{ApiError, ApiPath, ApiQuery, Envelope},
};
use serde::{Deserialize, Serialize};

use crate::{
    domain::{NotificationId, PageLimit},
    store::{ListFilter, NotificationDocument, NotificationStore},
};

#[derive(Clone)]
pub struct AppState {
    pub store: NotificationStore,
    pub verifier: TokenVerifier,
    /// Tells the hub the new unread count after a mark-read, for the user's other tabs.
    pub publisher: EventPublisher,
}

impl FromRef<AppState> for TokenVerifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

pub fn router(state: AppState) -> Router {
    // Static segments (`my`, `unread-count`, `read-all`) are matched before the `{id}`
    // capture, and `{id}` only appears as `/notifications/{id}/read`.
    Router::new()
        .route("/notifications/my", get(list_mine))
        .route("/notifications/unread-count", get(unread_count))
        .route("/notifications/read-all", post(mark_all_read))
        .route("/notifications/{id}/read", post(mark_read))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<u32>,
    /// The id of the last notification of the previous page.
    before: Option<String>,
    /// `true`: unread ones only.
    unread: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct UnreadCount {
    count: u64,
}

#[derive(Debug, Serialize)]
pub struct MarkedRead {
    /// How many notifications changed from unread to read.
    updated: u64,
}

fn views(notifications: &[NotificationDocument]) -> Result<Vec<NotificationView>, ApiError> {
    notifications
        .iter()
        .map(|n| n.view().map_err(ApiError::from))
        .collect()
}

/// `GET /notifications/my?limit=&before=&unread=`: newest first, keyset-paginated.
#[tracing::instrument(skip(state, user), fields(user_id = %user.id))]
async fn list_mine(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Envelope<Vec<NotificationView>>, ApiError> {
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

/// `GET /notifications/unread-count`: `{count}`.
#[tracing::instrument(skip(state, user), fields(user_id = %user.id))]
async fn unread_count(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Envelope<UnreadCount>, ApiError> {
    let count = state.store.unread_count(user.id).await?;
    Ok(Envelope::ok(UnreadCount { count }))
}

/// `POST /notifications/{id}/read`: the notification, now read; 404 unless it is the caller's.
#[tracing::instrument(skip(state, user), fields(user_id = %user.id))]
async fn mark_read(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Envelope<NotificationView>, ApiError> {
    let id = NotificationId::parse(&id)?;
    let notification = state.store.mark_read(user.id, id).await?;
    announce_unread(&state, user.id).await;
    Ok(Envelope::ok(notification.view()?))
}

/// `POST /notifications/read-all`: `{updated}`, how many changed.
#[tracing::instrument(skip(state, user), fields(user_id = %user.id))]
async fn mark_all_read(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Envelope<MarkedRead>, ApiError> {
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
