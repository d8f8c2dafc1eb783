//! The internal API other services call (through `instaclone_shared::users_internal::UsersClient`; the
//! routes and shapes are documented there). Every route needs the service credential
//! ([`InternalCaller`]); the gateway never routes `/internal/*`.

use axum::{
    Router,
    extract::State,
    routing::{get, post, put},
};
use instaclone_shared::{
    auth::InternalCaller,
    http::{ApiJson, ApiPath, ApiQuery, Envelope},
    users_internal::{IdPage, MAX_ID_PAGE, UserCredentials, UserRecord},
};
use serde::Deserialize;
use uuid::Uuid;

use crate::{
    domain::{Email, PasswordHash, Username, page_limit},
    error::UsersError,
    routes::AppState,
    store::Direction,
};

/// Id page size when the caller does not ask for one.
const DEFAULT_ID_PAGE: u32 = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/internal/users", post(create_user))
        .route("/internal/users/by-email", get(find_by_email))
        .route("/internal/users/{id}", get(get_user).delete(delete_user))
        .route("/internal/users/{id}/password", put(set_password))
        .route("/internal/users/{id}/followers", get(followers_page))
        .route("/internal/users/{id}/following", get(following_page))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateUserBody {
    email: String,
    username: Option<String>,
    password_hash: String,
}

#[tracing::instrument(skip(state, body))]
async fn create_user(
    _caller: InternalCaller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateUserBody>,
) -> Result<Envelope<UserRecord>, UsersError> {
    let email = Email::parse(&body.email)?;
    let username = body.username.as_deref().map(Username::parse).transpose()?;
    let password_hash = PasswordHash::parse(&body.password_hash)?;
    let user = state
        .store
        .create_user(&email, username.as_ref(), &password_hash)
        .await?;
    tracing::info!(user_id = %user.id, "user created");
    Ok(Envelope::created(user.into_record()))
}

/// `DELETE /internal/users/{id}`: the account and its follows (auth has checked the password
/// and ends the sessions); 404 when there is no such user.
#[tracing::instrument(skip(state))]
async fn delete_user(
    _caller: InternalCaller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Envelope<DeletedUser>, UsersError> {
    if !state.store.delete_user(id).await? {
        return Err(UsersError::UserNotFound);
    }
    state.relay_waker.wake();
    tracing::info!(user_id = %id, "account deleted");
    Ok(Envelope::ok(DeletedUser { id }))
}

#[derive(Debug, serde::Serialize)]
struct DeletedUser {
    id: Uuid,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SetPasswordBody {
    password_hash: String,
}

/// `PUT /internal/users/{id}/password`: a new password hash (auth has verified the old password
/// and revokes the sessions).
#[tracing::instrument(skip(state, body))]
async fn set_password(
    _caller: InternalCaller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<SetPasswordBody>,
) -> Result<Envelope<UserRecord>, UsersError> {
    let password_hash = PasswordHash::parse(&body.password_hash)?;
    if !state.store.set_password_hash(id, &password_hash).await? {
        return Err(UsersError::UserNotFound);
    }
    let user = state
        .store
        .get_user(id)
        .await?
        .ok_or(UsersError::UserNotFound)?;
    tracing::info!(user_id = %id, "password changed");
    Ok(Envelope::ok(user.into_record()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ByEmailQuery {
    email: String,
}

#[tracing::instrument(skip(state, query))]
async fn find_by_email(
    _caller: InternalCaller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ByEmailQuery>,
) -> Result<Envelope<UserCredentials>, UsersError> {
    let email = Email::parse(&query.email)?;
    let user = state
        .store
        .find_by_email(&email)
        .await?
        .ok_or(UsersError::UserNotFound)?;
    Ok(Envelope::ok(user.into_credentials()))
}

#[tracing::instrument(skip(state))]
async fn get_user(
    _caller: InternalCaller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Envelope<UserRecord>, UsersError> {
    let user = state
        .store
        .get_user(id)
        .await?
        .ok_or(UsersError::UserNotFound)?;
    Ok(Envelope::ok(user.into_record()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdPageQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

#[tracing::instrument(skip(state))]
async fn followers_page(
    _caller: InternalCaller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<IdPageQuery>,
) -> Result<Envelope<IdPage>, UsersError> {
    id_page(&state, id, Direction::Followers, query).await
}

#[tracing::instrument(skip(state))]
async fn following_page(
    _caller: InternalCaller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<IdPageQuery>,
) -> Result<Envelope<IdPage>, UsersError> {
    id_page(&state, id, Direction::Following, query).await
}

/// One keyset page of ids. The cursor is opaque to callers: it is the id of the last follow row
/// of the page, so the next page starts right after it whatever changed since.
async fn id_page(
    state: &AppState,
    subject: Uuid,
    direction: Direction,
    query: IdPageQuery,
) -> Result<Envelope<IdPage>, UsersError> {
    let limit = page_limit(query.limit, DEFAULT_ID_PAGE, MAX_ID_PAGE)?;
    let after = query
        .cursor
        .as_deref()
        .map(|c| {
            Uuid::parse_str(c).map_err(|_| UsersError::Invalid("cursor is not valid".to_owned()))
        })
        .transpose()?;
    // One extra row tells whether another page exists, so the last page says so.
    let mut edges = state
        .store
        .edge_page(subject, direction, after, limit + 1)
        .await?
        .ok_or(UsersError::UserNotFound)?;
    let has_more = edges.len() as i64 > limit;
    edges.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if has_more {
        edges.last().map(|edge| edge.follow_id.to_string())
    } else {
        None
    };
    Ok(Envelope::ok(IdPage {
        ids: edges.into_iter().map(|edge| edge.user_id).collect(),
        next_cursor,
    }))
}
