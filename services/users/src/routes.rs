//! The public API: profiles, the follow graph and search. Every route needs a valid access token
//! ([`AuthUser`]); the caller's id comes from the token, never from the body.

use axum::{
    Router,
    extract::{FromRef, State},
};
use instaclone_shared::{
    auth::{AuthUser, InternalToken, TokenVerifier},
    follow_cache::FollowCache,
    http::{ApiJson, ApiPath, ApiQuery, Envelope},
    outbox::RelayWaker,
};
use serde::{Deserialize, Deserializer};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    domain::{
        BIO_MAX, DISPLAY_NAME_MAX, SearchQuery, Username, optional_avatar_url, optional_text,
        page_limit,
    },
    error::UsersError,
    store::{Direction, ProfileChanges, Store},
    views::{FollowView, Profile},
};

/// Page size of user lists when the client does not ask for one.
pub const DEFAULT_PAGE: u32 = 20;
/// Hard maximum page size of user lists and search.
pub const MAX_PAGE: u32 = 100;

/// What every handler can reach, public and internal. Cheap to clone (every field is a handle).
#[derive(Clone, FromRef)]
pub struct AppState {
    pub store: Store,
    pub verifier: TokenVerifier,
    pub internal_token: InternalToken,
    /// Woken after a follow change commits, so its event goes out at once.
    pub relay_waker: RelayWaker,
    /// The follow sets other services read; invalidated after each follow change commits.
    pub follow_cache: FollowCache,
}

/// The service's public routes; the crate root merges [`crate::internal::router`] and gives
/// both their state.
pub fn router() -> Router<AppState> {
    api().split_for_parts().0
}

/// The routes and their description, from the same declarations.
fn api() -> OpenApiRouter<AppState> {
    // Static segments (`me`, `search`, `following`, `followers`) take precedence over `{id}`
    // in axum's router; the tests check each of them.
    OpenApiRouter::new()
        .routes(routes!(get_me, update_me))
        .routes(routes!(search))
        .routes(routes!(follow))
        .routes(routes!(unfollow))
        .routes(routes!(my_following))
        .routes(routes!(my_followers))
        .routes(routes!(get_profile))
        .routes(routes!(followers_of))
        .routes(routes!(following_of))
}

/// The service's finished OpenAPI document (see [`instaclone_shared::openapi`]).
pub fn openapi() -> serde_json::Value {
    instaclone_shared::openapi::finish("users", api().into_openapi())
}

/// The caller's own profile, with counts and email.
#[utoipa::path(get, path = "/users/me", tag = "users", security(("accessToken" = [])),
    responses(
        (status = 200, description = "The caller's profile", body = Profile),
        (status = 404, description = "The caller's account no longer exists"),
    ))]
#[tracing::instrument(skip(state, caller), fields(user_id = %caller.id))]
async fn get_me(
    caller: AuthUser,
    State(state): State<AppState>,
) -> Result<Envelope<Profile>, UsersError> {
    let user = state
        .store
        .get_user(caller.id)
        .await?
        .ok_or(UsersError::UserNotFound)?;
    Ok(Envelope::ok(user.into_profile(Some(caller.id))))
}

/// `PATCH /users/me`: absent fields stay, `null` or `""` clears an optional field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = UpdateProfileRequest)]
struct ProfilePatch {
    /// Lower-cased when stored.
    #[schema(min_length = 3, max_length = 30, pattern = "^[A-Za-z0-9._]*$")]
    username: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 50, pattern = r"^[^\u0000-\u0009\u000b-\u001f\u007f-\u009f]*$")]
    display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 150, pattern = r"^[^\u0000-\u0009\u000b-\u001f\u007f-\u009f]*$")]
    bio: Option<Option<String>>,
    /// An absolute `http` or `https` URL (see `instaclone_shared::web_url`); `""` or `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2048, pattern = r"^$|^https?://([A-Za-z0-9]+(-[A-Za-z0-9]+)*\.)*[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*(:[0-9]{1,4})?(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?(\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?(#[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$")]
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

/// Update the caller's profile.
#[utoipa::path(patch, path = "/users/me", tag = "users", security(("accessToken" = [])),
    request_body = ProfilePatch,
    responses(
        (status = 200, description = "The updated profile", body = Profile),
        (status = 404, description = "The caller's account no longer exists"),
        (status = 409, description = "The username is taken"),
    ))]
#[tracing::instrument(skip(state, caller, patch), fields(user_id = %caller.id))]
async fn update_me(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiJson(patch): ApiJson<ProfilePatch>,
) -> Result<Envelope<Profile>, UsersError> {
    let changes = patch.validate()?;
    let user = state
        .store
        .update_profile(caller.id, &changes)
        .await?
        .ok_or(UsersError::UserNotFound)?;
    Ok(Envelope::ok(user.into_profile(Some(caller.id))))
}

/// A user's public profile with follower, following and post counts.
#[utoipa::path(get, path = "/users/{id}", tag = "users", security(("accessToken" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The profile", body = Profile),
        (status = 404, description = "No such user"),
    ))]
#[tracing::instrument(skip(state, caller), fields(user_id = %caller.id))]
async fn get_profile(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Envelope<Profile>, UsersError> {
    let user = state
        .store
        .get_user(id)
        .await?
        .ok_or(UsersError::UserNotFound)?;
    Ok(Envelope::ok(user.into_profile(Some(caller.id))))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = FollowRequest)]
struct FollowBody {
    user_id_to_follow: Uuid,
}

/// Follow a user.
#[utoipa::path(post, path = "/users/follow", tag = "users", security(("accessToken" = [])),
    request_body = FollowBody,
    responses(
        (status = 201, description = "The new follow", body = FollowView),
        (status = 400, description = "The caller cannot follow themself"),
        (status = 404, description = "No such user"),
        (status = 409, description = "The caller already follows this user"),
    ))]
#[tracing::instrument(skip(state, caller, body), fields(user_id = %caller.id))]
async fn follow(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<FollowBody>,
) -> Result<Envelope<FollowView>, UsersError> {
    let edge = state
        .store
        .follow(caller.id, body.user_id_to_follow)
        .await?;
    state.relay_waker.wake();
    invalidate_follow_set(&state, caller.id).await;
    Ok(Envelope::created(edge.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = UnfollowRequest)]
struct UnfollowBody {
    user_id_to_unfollow: Uuid,
}

/// Stop following a user.
#[utoipa::path(post, path = "/users/unfollow", tag = "users", security(("accessToken" = [])),
    request_body = UnfollowBody,
    responses(
        (status = 200, description = "The follow that ended", body = FollowView),
        (status = 400, description = "The caller cannot unfollow themself"),
        (status = 404, description = "No such user, or the caller does not follow them"),
    ))]
#[tracing::instrument(skip(state, caller, body), fields(user_id = %caller.id))]
async fn unfollow(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<UnfollowBody>,
) -> Result<Envelope<FollowView>, UsersError> {
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
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Page size (20 when absent, at most 100: more is cut to 100).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 4294967295.0)]
    limit: Option<u32>,
    /// Id of the last user of the previous page.
    cursor: Option<Uuid>,
}

async fn user_list(
    state: &AppState,
    viewer: Uuid,
    subject: Uuid,
    direction: Direction,
    query: PageQuery,
) -> Result<Envelope<Vec<Profile>>, UsersError> {
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

/// Users following the caller.
#[utoipa::path(get, path = "/users/followers", tag = "users", security(("accessToken" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the caller's followers", body = Vec<Profile>),
        (status = 404, description = "The caller's account no longer exists, or the cursor is not in the list"),
    ))]
#[tracing::instrument(skip(state, caller), fields(user_id = %caller.id))]
async fn my_followers(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<Profile>>, UsersError> {
    user_list(&state, caller.id, caller.id, Direction::Followers, query).await
}

/// Users the caller follows.
#[utoipa::path(get, path = "/users/following", tag = "users", security(("accessToken" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the users the caller follows", body = Vec<Profile>),
        (status = 404, description = "The caller's account no longer exists, or the cursor is not in the list"),
    ))]
#[tracing::instrument(skip(state, caller), fields(user_id = %caller.id))]
async fn my_following(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<Profile>>, UsersError> {
    user_list(&state, caller.id, caller.id, Direction::Following, query).await
}

/// Users following this user.
#[utoipa::path(get, path = "/users/{id}/followers", tag = "users", security(("accessToken" = [])),
    params(("id" = Uuid, Path, description = "The user's id"), PageQuery),
    responses(
        (status = 200, description = "A page of the user's followers", body = Vec<Profile>),
        (status = 404, description = "No such user, or the cursor is not in the list"),
    ))]
#[tracing::instrument(skip(state, caller), fields(user_id = %caller.id))]
async fn followers_of(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<Profile>>, UsersError> {
    user_list(&state, caller.id, id, Direction::Followers, query).await
}

/// Users this user follows.
#[utoipa::path(get, path = "/users/{id}/following", tag = "users", security(("accessToken" = [])),
    params(("id" = Uuid, Path, description = "The user's id"), PageQuery),
    responses(
        (status = 200, description = "A page of the users this user follows", body = Vec<Profile>),
        (status = 404, description = "No such user, or the cursor is not in the list"),
    ))]
#[tracing::instrument(skip(state, caller), fields(user_id = %caller.id))]
async fn following_of(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<Profile>>, UsersError> {
    user_list(&state, caller.id, id, Direction::Following, query).await
}

/// `?q=&limit=&cursor=`: `cursor` is the id of the last user of the previous page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SearchParams {
    /// Username or display-name prefix (trimmed, case-insensitive); no control characters.
    #[param(
        required = true,
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    q: Option<String>,
    /// Page size (20 when absent, at most 100: more is cut to 100).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 4294967295.0)]
    limit: Option<u32>,
    /// Id of the last user of the previous page.
    cursor: Option<Uuid>,
}

/// Users by username or display-name prefix and similarity.
#[utoipa::path(get, path = "/users/search", tag = "users", security(("accessToken" = [])),
    params(SearchParams),
    responses((status = 200, description = "A page of matching users", body = Vec<Profile>)))]
#[tracing::instrument(skip(state, caller, params), fields(user_id = %caller.id))]
async fn search(
    caller: AuthUser,
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Envelope<Vec<Profile>>, UsersError> {
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_gateways_copy_of_the_openapi_document_is_current() {
        instaclone_shared::openapi::assert_gateway_copy_is_current("users", &super::openapi());
    }

    /// Attribute values must be literals: the document states the domain's limits.
    #[test]
    fn the_documented_limits_are_the_domains() {
        use crate::domain::{
            AVATAR_URL_MAX, BIO_MAX, DISPLAY_NAME_MAX, SEARCH_QUERY_MAX, USERNAME_MAX, USERNAME_MIN,
        };
        let document = super::openapi();
        let patch = &document["components"]["schemas"]["UpdateProfileRequest"]["properties"];
        assert_eq!(patch["username"]["minLength"], USERNAME_MIN);
        assert_eq!(patch["username"]["maxLength"], USERNAME_MAX);
        assert_eq!(patch["displayName"]["maxLength"], DISPLAY_NAME_MAX);
        assert_eq!(patch["bio"]["maxLength"], BIO_MAX);
        assert_eq!(patch["avatarUrl"]["maxLength"], AVATAR_URL_MAX);
        assert_eq!(
            patch["avatarUrl"]["pattern"],
            format!("^$|{}", instaclone_shared::web_url::PATTERN)
        );
        let q = &document["paths"]["/users/search"]["get"]["parameters"][0];
        assert_eq!(q["name"], "q");
        assert_eq!(q["schema"]["maxLength"], SEARCH_QUERY_MAX);
    }
}
