//! The posts service's errors and how each one looks to a client.
//!
//! Client mistakes become 4xx with a message saying what is wrong. MongoDB, Redis (where the feed
//! cannot fall back) or the users service out of reach is a 503 with `Retry-After`: a post and
//! its outbox entry are one write, so a refused write left nothing behind. Other failures are a
//! 500 whose cause is logged and never shown.

use axum::response::{IntoResponse, Response};
use instaclone_shared::{http::ApiError, unreachable::Unreachable, users_internal::ClientError};

use crate::domain::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum PostsError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("Post not found")]
    NotFound,
    #[error("Only the author can delete this post")]
    NotAuthor,
    #[error("post store: {0}")]
    Store(#[from] StoreError),
    #[error("follow graph: {0}")]
    FollowGraph(#[from] ClientError),
    #[error("home timelines (Redis): {0}")]
    Timeline(#[from] redis::RedisError),
}

/// A failure talking to MongoDB, or a stored document that does not have the expected shape.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("cannot encode a document: {0}")]
    Encode(#[from] mongodb::bson::ser::Error),
    #[error("malformed stored document: {0}")]
    Decode(String),
    #[error("cannot build an event: {0}")]
    Event(#[from] instaclone_shared::events::EventError),
    #[error("MongoDB refused the write: {0}")]
    Write(String),
}

impl From<PostsError> for ApiError {
    fn from(error: PostsError) -> Self {
        match error {
            PostsError::Invalid(invalid) => ApiError::bad_request(invalid.0),
            PostsError::NotFound => ApiError::not_found(error.to_string()),
            PostsError::NotAuthor => ApiError::forbidden(error.to_string()),
            PostsError::FollowGraph(ClientError::Unavailable { .. }) => {
                tracing::error!(%error, "cannot read the follow graph");
                ApiError::service_unavailable("The feed is temporarily unavailable")
            }
            PostsError::Store(StoreError::Mongo(cause)) if cause.is_unreachable() => {
                ApiError::unavailable("MongoDB", cause)
            }
            PostsError::Timeline(cause) if cause.is_unreachable() => {
                ApiError::unavailable("Redis", cause)
            }
            PostsError::Store(_) | PostsError::FollowGraph(_) | PostsError::Timeline(_) => {
                ApiError::internal(error)
            }
        }
    }
}

impl IntoResponse for PostsError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
