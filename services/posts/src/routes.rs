//! HTTP handlers of the public posts API.
//!
//! Every route needs a valid access token: the author of a new post is always the caller, never a
//! field of the body. Input is parsed into domain types first, so a bad request is refused before
//! the store is touched.
//!
//! `/posts/me` and `/posts/feed` are static routes; the router prefers them over `/posts/{id}`, so
//! they are never read as a post id.

use axum::{
    Router,
    extract::{FromRef, State},
};
use instaclone_shared::{
    auth::{AuthUser, TokenVerifier},
    http::{ApiJson, ApiPath, ApiQuery, Envelope},
    outbox::RelayWaker,
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    domain::{Caption, MediaUrl, PageRequest, PostId, ValidationError},
    error::PostsError,
    feed::{FeedPost, HomeFeed},
    store::{DeleteOutcome, PostStore, PostView},
    timeline::{self, HomeTimelines},
};

/// What every handler shares. Cheap to clone (every field is a handle).
#[derive(Clone, FromRef)]
pub struct AppState {
    pub store: PostStore,
    pub feed: HomeFeed,
    pub verifier: TokenVerifier,
    /// Wakes the outbox relay right after a write, so events do not wait for its next poll.
    pub relay_waker: RelayWaker,
}

/// The service's public routes; the crate root gives them their state.
pub fn router() -> Router<AppState> {
    api().split_for_parts().0
}

/// The routes and their description, from the same declarations.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_post))
        .routes(routes!(my_posts))
        .routes(routes!(home_feed))
        .routes(routes!(get_post, delete_post))
        .routes(routes!(user_posts))
}

/// The service's finished OpenAPI document (see [`instaclone_shared::openapi`]).
pub fn openapi() -> serde_json::Value {
    instaclone_shared::openapi::finish("posts", api().into_openapi())
}

/// A new post; its author is the caller.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = CreatePostRequest)]
pub struct CreatePostBody {
    #[serde(default)]
    #[schema(max_length = 2200)]
    caption: Option<String>,
    /// An absolute `http` or `https` URL (see `instaclone_shared::web_url`).
    #[schema(
        max_length = 2048,
        pattern = r"^https?://([A-Za-z0-9]+(-[A-Za-z0-9]+)*\.)*[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*(:[0-9]{1,4})?(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?(\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?(#[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$"
    )]
    media_url: String,
}

/// One page of a post list, newest first.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size (20 when absent).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// Id of the last post of the previous page.
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    before: Option<String>,
}

impl PageQuery {
    fn parse(&self) -> Result<PageRequest, ValidationError> {
        PageRequest::parse(self.limit, self.before.as_deref())
    }
}

/// Publish a post.
#[utoipa::path(post, path = "/posts", tag = "posts", security(("accessToken" = [])),
    request_body = CreatePostBody,
    responses((status = 201, description = "The new post", body = PostView)))]
#[tracing::instrument(skip(state, body), fields(user = %user.id))]
async fn create_post(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<CreatePostBody>,
) -> Result<Envelope<PostView>, PostsError> {
    let caption = body.caption.map(Caption::parse).transpose()?;
    let media_url = MediaUrl::parse(body.media_url)?;
    let created = state.store.create(user.id, caption, media_url).await?;
    state.relay_waker.wake();
    remember_created(&state.feed.timelines, &created).await;
    Ok(Envelope::created(created))
}

/// Caches the new post's body for feed pages and puts it in its author's own timeline at once
/// (`post.created` adds it again, a no-op, and to every follower's). Both are caches: if Redis
/// misses them, the feed reads MongoDB instead, so a failure is only logged.
async fn remember_created(timelines: &HomeTimelines, created: &PostView) {
    let entry = timeline::entry(&created.id, created.user_id);
    let cache = async {
        let body = serde_json::to_string(created).unwrap_or_default();
        timelines.cache_posts(&[(&created.id, body)], true).await
    };
    let author = [created.user_id];
    let add = timelines.add(&author, std::slice::from_ref(&entry));
    let (cached, added) = tokio::join!(cache, add);
    if let Err(error) = cached.and(added) {
        tracing::warn!(%error, "could not cache the new post or add it to its author's timeline");
    }
}

/// One post.
#[utoipa::path(get, path = "/posts/{id}", tag = "posts", security(("accessToken" = [])),
    params(("id" = String, Path, description = "The post's id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 200, description = "The post", body = PostView),
        (status = 404, description = "No such post"),
    ))]
#[tracing::instrument(skip(state), fields(user = %user.id))]
async fn get_post(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Envelope<PostView>, PostsError> {
    let id = PostId::parse(&id)?;
    match state.store.get(id).await? {
        Some(post) => Ok(Envelope::ok(post)),
        None => Err(PostsError::NotFound),
    }
}

/// Delete a post (its author only).
#[utoipa::path(delete, path = "/posts/{id}", tag = "posts", security(("accessToken" = [])),
    params(("id" = String, Path, description = "The post's id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 200, description = "The deleted post", body = PostView),
        (status = 403, description = "The caller is not the post's author"),
        (status = 404, description = "No such post"),
    ))]
#[tracing::instrument(skip(state), fields(user = %user.id))]
async fn delete_post(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Envelope<PostView>, PostsError> {
    let id = PostId::parse(&id)?;
    match state.store.delete(id, user.id).await? {
        DeleteOutcome::Deleted(post) => {
            state.relay_waker.wake();
            // From now on no feed page serves it; `post.deleted` repeats this and cleans the
            // timelines up.
            if let Err(error) = state.feed.timelines.tombstone_posts(&[&post.id]).await {
                tracing::warn!(%error, "could not mark the deleted post in the post cache");
            }
            Ok(Envelope::ok(post))
        }
        DeleteOutcome::NotFound => Err(PostsError::NotFound),
        DeleteOutcome::NotAuthor => Err(PostsError::NotAuthor),
    }
}

/// The caller's posts, newest first.
#[utoipa::path(get, path = "/posts/me", tag = "posts", security(("accessToken" = [])),
    params(PageQuery),
    responses((status = 200, description = "A page of the caller's posts", body = Vec<PostView>)))]
#[tracing::instrument(skip(state), fields(user = %user.id))]
async fn my_posts(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<PostView>>, PostsError> {
    let page = query.parse()?;
    let posts = state.store.page_by_authors(&[user.id], page).await?;
    Ok(Envelope::ok(posts))
}

/// This user's posts, newest first.
#[utoipa::path(get, path = "/users/{id}/posts", tag = "posts", security(("accessToken" = [])),
    params(("id" = Uuid, Path, description = "The author's user id"), PageQuery),
    responses((status = 200, description = "A page of the user's posts", body = Vec<PostView>)))]
#[tracing::instrument(skip(state), fields(user = %user.id))]
async fn user_posts(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(author): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<PostView>>, PostsError> {
    let author = Uuid::parse_str(&author).map_err(|_| {
        PostsError::from(ValidationError(format!(
            "`{author}` is not a valid user id (a UUID)"
        )))
    })?;
    let page = query.parse()?;
    let posts = state.store.page_by_authors(&[author], page).await?;
    Ok(Envelope::ok(posts))
}

/// Home feed: the caller's and followed users' posts, newest first.
#[utoipa::path(get, path = "/posts/feed", tag = "posts", security(("accessToken" = [])),
    params(PageQuery),
    responses((status = 200, description = "A page of the home feed", body = Vec<PostView>)))]
#[tracing::instrument(skip(state), fields(user = %user.id))]
async fn home_feed(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<FeedPost>>, PostsError> {
    let page = query.parse()?;
    let posts = state.feed.page(user.id, page).await?;
    Ok(Envelope::ok(posts))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_gateways_copy_of_the_openapi_document_is_current() {
        instaclone_shared::openapi::assert_gateway_copy_is_current("posts", &super::openapi());
    }

    /// Attribute values must be literals: the document states the domain's limits.
    #[test]
    fn the_documented_limits_are_the_domains() {
        use crate::domain::{MAX_CAPTION_CHARS, MAX_MEDIA_URL_CHARS, MAX_PAGE_SIZE};
        let document = super::openapi();
        let body = &document["components"]["schemas"]["CreatePostRequest"]["properties"];
        assert_eq!(body["caption"]["maxLength"], MAX_CAPTION_CHARS);
        assert_eq!(body["mediaUrl"]["maxLength"], MAX_MEDIA_URL_CHARS);
        assert_eq!(
            body["mediaUrl"]["pattern"],
            instaclone_shared::web_url::PATTERN
        );
        let limit = &document["paths"]["/posts/feed"]["get"]["parameters"][0];
        assert_eq!(limit["name"], "limit");
        assert_eq!(limit["schema"]["maximum"], MAX_PAGE_SIZE);
    }
}
