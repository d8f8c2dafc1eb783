//! The public API: profiles, the follow graph and search. Every route needs a valid access token
//! ([`AuthUser`]); the caller's id comes from the token, never from the body.

use axum::{
    Router,
    extract::State,
    routing::{get, post},
};
use instaclone_shared::{
    auth::AuthUser,
    http::{ApiError, ApiJson, ApiPath, ApiQuery, Envelope},
};
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use crate::{
    AppState,
    domain::{
        BIO_MAX, DISPLAY_NAME_MAX, SearchQuery, Username, optional_avatar_url, optional_text,
        page_limit,
    },
    error::UsersError,
    store::{Direction, ProfileChanges},
    views::{FollowView, Profile},
};

/// Page size of user lists when the client does not ask for one.
pub const DEFAULT_PAGE: u32 = 20;
/// Hard maximum page size of user lists and search.
pub const MAX_PAGE: u32 = 100;

pub fn router() -> Router<AppState> {
    // Static segments (`me`, `search`, `following`, `followers`) take precedence over `{id}`
    // in axum's router; the tests check each of them.
    Router::new()
        .route("/users/me", get(get_me).patch(update_me))
        .route("/users/search", get(search))
        .route("/users/follow", post(follow))
        .route("/users/unfollow", post(unfollow))
        .route("/users/following", get(my_following))
        .route("/users/followers", get(my_followers))
        .route("/users/{id}", get(get_profile))
        .route("/users/{id}/followers", get(followers_of))
        .route("/users/{id}/following", get(following_of))
}

#[tracing::instrument(skip(state, caller), fields(user_id = %caller.id))]
async fn get_me(
    caller: AuthUser,
    State(state): State<AppState>,
) -> Result<Envelope<Profile>, ApiError> {
    let user = state
        .store
        .get_user(caller.id)
        .await?
        .ok_or(UsersError::UserNotFound)?;
    Ok(Envelope::ok(user.into_profile(Some(caller.id))))
}

/// `PATCH /users/me`: absent fields stay, `null` or `""` clears an optional field.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfilePatch {
    username: Option<String>,
    #[serde(default, deserialize_with = "present")]
    display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    bio: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    avatar_url: Option<Option<String>>,
}

/// A field that is present (possibly `null`) becomes `Some(..)`; an absent one stays `None`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

impl ProfilePatch {
    fn validate(self) -> Result<ProfileChanges, UsersError> {
        Ok(ProfileChanges {
            username: self.username.as_deref().map(Username::parse).transpose()?,
            display_name: self
                .display_name
                .map(|v| optional_text("displayName", v.as_deref(), DISPLAY_NAME_MAX))
                .transpose()?,
            bio: self
                .bio
                .map(|v| optional_text("bio", v.as_deref(), BIO_MAX))
                .transpose()?,
            avatar_url: self
                .avatar_url
                .map(|v| optional_avatar_url(v.as_deref()))
                .transpose()?,
        })
    }
}

#[tracing::instrument(skip(state, caller, patch), fields(user_id = %caller.id))]
async fn update_me(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiJson(patch): ApiJson<ProfilePatch>,
) -> Result<Envelope<Profile>, ApiError> {
    let changes = patch.validate()?;
    let user = state
        .store
        .update_profile(caller.id, &changes)
        .await?
        .ok_or(UsersError::UserNotFound)?;
    Ok(Envelope::ok(user.into_profile(Some(caller.id))))
}

#[tracing::instrument(skip(state, caller), fields(user_id = %caller.id))]
async fn get_profile(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Envelope<Profile>, ApiError> {
    let user = state
        .store
        .get_user(id)
        .await?
        .ok_or(UsersError::UserNotFound)?;
    Ok(Envelope::ok(user.into_profile(Some(caller.id))))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FollowBody {
    user_id_to_follow: Uuid,
}

#[tracing::instrument(skip(state, caller, body), fields(user_id = %caller.id))]
async fn follow(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<FollowBody>,
) -> Result<Envelope<FollowView>, ApiError> {
    let edge = state
        .store
        .follow(caller.id, body.user_id_to_follow)
        .await?;
    state.relay_waker.wake();
    invalidate_follow_set(&state, caller.id).await;
    Ok(Envelope::created(edge.into()))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UnfollowBody {
    user_id_to_unfollow: Uuid,
}

#[tracing::instrument(skip(state, caller, body), fields(user_id = %caller.id))]
async fn unfollow(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<UnfollowBody>,
) -> Result<Envelope<FollowView>, ApiError> {
    let edge = state
        .store
        .unfollow(caller.id, body.user_id_to_unfollow)
        .await?;
    state.relay_waker.wake();
    invalidate_follow_set(&state, caller.id).await;
    Ok(Envelope::ok(edge.into()))
}

/// Drops the caller's cached follow set now that the change is committed, so their next feed
/// read sees it. Should Redis not answer, the change still stands (it is committed) and the
/// consumers of its event invalidate again; the failure is logged and counted.
async fn invalidate_follow_set(state: &AppState, follower: Uuid) {
    if let Err(error) = state.follow_cache.invalidate(follower).await {
        metrics::counter!("users_follow_cache_invalidation_failures_total").increment(1);
        tracing::warn!(%follower, %error, "could not invalidate the cached follow set");
    }
}

/// `?limit=&cursor=`: `cursor` is the id of the last user of the previous page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<u32>,
    cursor: Option<Uuid>,
}

async fn user_list(
    state: &AppState,
    viewer: Uuid,
    subject: Uuid,
    direction: Direction,
    query: PageQuery,
) -> Result<Envelope<Vec<Profile>>, ApiError> {
    let limit = page_limit(query.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let users = state
        .store
        .user_page(subject, direction, query.cursor, limit)
        .await?
        .ok_or(UsersError::UserNotFound)?;
    Ok(Envelope::ok(
        users
            .into_iter()
            .map(|user| user.into_profile(Some(viewer)))
            .collect(),
    ))
}

#[tracing::instrument(skip(state, caller), fields(user_id = %caller.id))]
async fn my_followers(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<Profile>>, ApiError> {
    user_list(&state, caller.id, caller.id, Direction::Followers, query).await
}

#[tracing::instrument(skip(state, caller), fields(user_id = %caller.id))]
async fn my_following(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<Profile>>, ApiError> {
    user_list(&state, caller.id, caller.id, Direction::Following, query).await
}

#[tracing::instrument(skip(state, caller), fields(user_id = %caller.id))]
async fn followers_of(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<Profile>>, ApiError> {
    user_list(&state, caller.id, id, Direction::Followers, query).await
}

#[tracing::instrument(skip(state, caller), fields(user_id = %caller.id))]
async fn following_of(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<Profile>>, ApiError> {
    user_list(&state, caller.id, id, Direction::Following, query).await
}

/// `?q=&limit=&cursor=`: `cursor` is the id of the last user of the previous page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    q: Option<String>,
    limit: Option<u32>,
    cursor: Option<Uuid>,
}

#[tracing::instrument(skip(state, caller, params), fields(user_id = %caller.id))]
async fn search(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Envelope<Vec<Profile>>, ApiError> {
    let query = SearchQuery::parse(params.q.as_deref().unwrap_or_default())?;
    let limit = page_limit(params.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let users = state.store.search(&query, params.cursor, limit).await?;
    Ok(Envelope::ok(
        users
            .into_iter()
            .map(|user| user.into_profile(Some(caller.id)))
            .collect(),
    ))
}
