//! The users service's one error type and how each case reaches the client.
//!
//! Domain failures become 4xx with a message saying what is wrong; an unreachable database is a
//! 503 with `Retry-After` (the transaction never committed, so repeating is safe); other database
//! and serialisation failures become an opaque 500 whose cause is only logged.

use axum::response::{IntoResponse, Response};
use instaclone_shared::{events::EventError, http::ApiError, unreachable::Unreachable};

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Bad input; the message says which field and why.
    #[error("{0}")]
    Invalid(String),
    #[error("User not found")]
    UserNotFound,
    #[error("Email is already registered")]
    EmailTaken,
    #[error("Username is already taken")]
    UsernameTaken,
    #[error("You cannot follow yourself")]
    SelfFollow,
    #[error("You cannot unfollow yourself")]
    SelfUnfollow,
    #[error("You already follow this user")]
    AlreadyFollowing,
    #[error("You do not follow this user")]
    NotFollowing,
    /// The cursor names a user who is not (or no longer) in the list: the position it stood
    /// for is not found, so a 404 (start again without a cursor).
    #[error("cursor is not a position in this list (start again without a cursor)")]
    StaleCursor,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event: {0}")]
    Event(#[from] EventError),
}

impl From<UsersError> for ApiError {
    fn from(error: UsersError) -> Self {
        match error {
            UsersError::Invalid(_) | UsersError::SelfFollow | UsersError::SelfUnfollow => {
                ApiError::bad_request(error.to_string())
            }
            UsersError::UserNotFound | UsersError::NotFollowing | UsersError::StaleCursor => {
                ApiError::not_found(error.to_string())
            }
            UsersError::EmailTaken | UsersError::UsernameTaken | UsersError::AlreadyFollowing => {
                ApiError::conflict(error.to_string())
            }
            UsersError::Database(cause) if cause.is_unreachable() => {
                ApiError::unavailable("PostgreSQL", cause)
            }
            UsersError::Database(_) | UsersError::Event(_) => ApiError::internal(error),
        }
    }
}

impl IntoResponse for UsersError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// The name of the unique constraint a statement violated, if that is why it failed.
pub fn unique_violation(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) if db.is_unique_violation() => db.constraint(),
        _ => None,
    }
}

/// Maps a unique violation on one of the account's unique indexes to its 409.
pub fn conflict_from(error: sqlx::Error) -> UsersError {
    match unique_violation(&error) {
        Some("users_email_key") => UsersError::EmailTaken,
        Some("users_username_key") => UsersError::UsernameTaken,
        _ => UsersError::Database(error),
    }
}
