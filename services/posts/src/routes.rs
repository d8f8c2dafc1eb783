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
    routing::{get, post},
};
use instaclone_shared::{
    auth::{AuthUser, TokenVerifier},
    http::{ApiError, ApiJson, ApiPath, ApiQuery, Envelope},
    outbox::RelayWaker,
};
use serde::Deserialize;
use uuid::Uuid;

use crate::{
    domain::{Caption, MediaUrl, PageRequest, PostId, ValidationError},
    error::PostsError,
    feed::{FeedPost, HomeFeed},
    store::{DeleteOutcome, PostStore, PostView},
    timeline::{self, HomeTimelines},
};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: PostStore,
    pub feed: HomeFeed,
    pub verifier: TokenVerifier,
    /// Wakes the outbox relay right after a write, so events do not wait for its next poll.
    pub relay_waker: RelayWaker,
}

impl FromRef<AppState> for TokenVerifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/posts", post(create_post))
        .route("/posts/me", get(my_posts))
        .route("/posts/feed", get(home_feed))
        .route("/posts/{id}", get(get_post).delete(delete_post))
        .route("/users/{id}/posts", get(user_posts))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreatePostBody {
    #[serde(default)]
    caption: Option<String>,
    media_url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<u32>,
    before: Option<String>,
}

impl PageQuery {
    fn parse(&self) -> Result<PageRequest, ValidationError> {
        PageRequest::parse(self.limit, self.before.as_deref())
    }
}

#[tracing::instrument(skip(state, body), fields(user = %user.id))]
async fn create_post(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<CreatePostBody>,
) -> Result<Envelope<PostView>, ApiError> {
    let caption = body
        .caption
        .map(Caption::parse)
        .transpose()
        .map_err(PostsError::from)?;
    let media_url = MediaUrl::parse(body.media_url).map_err(PostsError::from)?;
    let created = state
        .store
        .create(user.id, caption, media_url)
        .await
        .map_err(PostsError::from)?;
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

#[tracing::instrument(skip(state), fields(user = %user.id))]
async fn get_post(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Envelope<PostView>, ApiError> {
    let id = PostId::parse(&id).map_err(PostsError::from)?;
    match state.store.get(id).await.map_err(PostsError::from)? {
        Some(post) => Ok(Envelope::ok(post)),
        None => Err(PostsError::NotFound.into()),
    }
}

#[tracing::instrument(skip(state), fields(user = %user.id))]
async fn delete_post(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Envelope<PostView>, ApiError> {
    let id = PostId::parse(&id).map_err(PostsError::from)?;
    match state
        .store
        .delete(id, user.id)
        .await
        .map_err(PostsError::from)?
    {
        DeleteOutcome::Deleted(post) => {
            state.relay_waker.wake();
            // From now on no feed page serves it; `post.deleted` repeats this and cleans the
            // timelines up.
            if let Err(error) = state.feed.timelines.tombstone_posts(&[&post.id]).await {
                tracing::warn!(%error, "could not mark the deleted post in the post cache");
            }
            Ok(Envelope::ok(post))
        }
        DeleteOutcome::NotFound => Err(PostsError::NotFound.into()),
        DeleteOutcome::NotAuthor => Err(PostsError::NotAuthor.into()),
    }
}

#[tracing::instrument(skip(state), fields(user = %user.id))]
async fn my_posts(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<PostView>>, ApiError> {
    let page = query.parse().map_err(PostsError::from)?;
    let posts = state
        .store
        .page_by_authors(&[user.id], page)
        .await
        .map_err(PostsError::from)?;
    Ok(Envelope::ok(posts))
}

#[tracing::instrument(skip(state), fields(user = %user.id))]
async fn user_posts(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(author): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<PostView>>, ApiError> {
    let author = Uuid::parse_str(&author).map_err(|_| {
        PostsError::from(ValidationError(format!(
            "`{author}` is not a valid user id (a UUID)"
        )))
    })?;
    let page = query.parse().map_err(PostsError::from)?;
    let posts = state
        .store
        .page_by_authors(&[author], page)
        .await
        .map_err(PostsError::from)?;
    Ok(Envelope::ok(posts))
}

#[tracing::instrument(skip(state), fields(user = %user.id))]
async fn home_feed(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Envelope<Vec<FeedPost>>, ApiError> {
    let page = query.parse().map_err(PostsError::from)?;
    let posts = state.feed.page(user.id, page).await?;
    Ok(Envelope::ok(posts))
}
