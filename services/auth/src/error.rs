//! Everything that can go wrong in the auth service, and what the client sees of it.
//!
//! Client mistakes map to 400/401/409/429 with a message that says what to fix. A session store
//! (Redis) or users service that does not answer is a 503 with `Retry-After`, since retrying later
//! helps; other failures on our side (signing, hashing) become a 500 whose cause is logged, never
//! sent.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use instaclone_shared::{
    auth::{KeyError, TokenError},
    http::ApiError,
    unreachable::Unreachable,
    users_internal::ClientError,
};

use crate::password::HashError;

/// The one message for an unknown email and a wrong password, so a response never tells which.
pub const INVALID_CREDENTIALS: &str = "Invalid email or password";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Bad input; the message says what is wrong.
    #[error("{0}")]
    Invalid(String),
    #[error("invalid credentials")]
    InvalidCredentials,
    /// A password change with the wrong current password.
    #[error("wrong current password")]
    WrongPassword,
    #[error("too many failed login attempts")]
    RateLimited { retry_after_secs: u64 },
    #[error("missing bearer token")]
    MissingToken,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("session has ended")]
    SessionEnded,
    #[error("refresh token reuse detected")]
    RefreshTokenReused,
    /// Email or username taken; the message says which.
    #[error("{0}")]
    Conflict(String),
    #[error("users service unavailable: {0}")]
    UsersUnavailable(String),
    #[error("session store: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("password hashing: {0}")]
    Hashing(#[from] HashError),
    #[error("token signing: {0}")]
    Signing(#[from] KeyError),
}

impl From<ClientError> for AuthError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::BadRequest(message) => Self::Invalid(message),
            ClientError::Conflict(message) => Self::Conflict(message),
            ClientError::NotFound => Self::UsersUnavailable("unexpected 404".to_owned()),
            unavailable @ ClientError::Unavailable { .. } => {
                Self::UsersUnavailable(unavailable.to_string())
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Invalid(message) => ApiError::bad_request(message),
            AuthError::InvalidCredentials => ApiError::unauthorized(INVALID_CREDENTIALS),
            AuthError::WrongPassword => ApiError::forbidden("Current password is incorrect"),
            AuthError::RateLimited { retry_after_secs } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed login attempts, try again later",
            )
            .with_retry_after(retry_after_secs),
            AuthError::MissingToken => ApiError::unauthorized("Missing bearer token"),
            AuthError::Token(error) => error.into(),
            AuthError::SessionEnded => {
                ApiError::unauthorized("Refresh token has been revoked or has expired")
            }
            AuthError::RefreshTokenReused => ApiError::unauthorized(
                "Refresh token was already used; the session has been revoked",
            ),
            AuthError::Conflict(message) => ApiError::conflict(message),
            AuthError::UsersUnavailable(cause) => {
                tracing::warn!(%cause, "users service unavailable");
                ApiError::service_unavailable("Users service is unavailable, try again later")
            }
            AuthError::Redis(cause) if cause.is_unreachable() => {
                ApiError::unavailable("Redis", cause)
            }
            internal @ (AuthError::Redis(_) | AuthError::Hashing(_) | AuthError::Signing(_)) => {
                ApiError::internal(internal)
            }
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_responses_carry_retry_after() {
        let response = AuthError::RateLimited {
            retry_after_secs: 42,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "42");
    }

    #[test]
    fn internal_failures_hide_their_cause() {
        let error = AuthError::Hashing(HashError::Closed);
        let api = ApiError::from(error);
        assert_eq!(api.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(api.message(), "Internal server error");
    }
}
