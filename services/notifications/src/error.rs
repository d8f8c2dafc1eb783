//! The service's one error type and how each case reaches a client: bad input is a 400 that says
//! what is wrong, a notification that is not the caller's is a 404 (indistinguishable from one
//! that does not exist), an unreachable MongoDB is a 503 with `Retry-After`, and anything else on
//! the server side is a 500 whose cause is only logged.

use axum::response::{IntoResponse, Response};
use instaclone_shared::{http::ApiError, unreachable::Unreachable};

#[derive(Debug, thiserror::Error)]
pub enum NotificationsError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("notification not found")]
    NotFound,
    #[error("MongoDB: {0}")]
    Database(#[from] mongodb::error::Error),
    /// A stored document this code cannot read back (should never happen).
    #[error("stored notification is unreadable: {0}")]
    Corrupt(String),
}

impl From<NotificationsError> for ApiError {
    fn from(error: NotificationsError) -> Self {
        match error {
            NotificationsError::InvalidInput(message) => ApiError::bad_request(message),
            NotificationsError::NotFound => ApiError::not_found("Notification not found"),
            NotificationsError::Database(cause) if cause.is_unreachable() => {
                ApiError::unavailable("MongoDB", cause)
            }
            NotificationsError::Database(_) | NotificationsError::Corrupt(_) => {
                ApiError::internal(error)
            }
        }
    }
}

impl IntoResponse for NotificationsError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// Whether a MongoDB error is a unique-index violation (E11000), i.e. "already stored".
pub fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write_error)) => {
            write_error.code == DUPLICATE_KEY
        }
        ErrorKind::InsertMany(insert_many) => {
            insert_many.write_concern_error.is_none()
                && insert_many
                    .write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|e| e.code == DUPLICATE_KEY))
        }
        ErrorKind::Command(command_error) => command_error.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// MongoDB's error code for a unique-index violation.
pub const DUPLICATE_KEY: i32 = 11000;
