//! The hub's one error type for its HTTP surface (tickets and the two connection routes), and
//! what a client sees of each case: a missing or bad credential is a 401, a refused admission a
//! 429 with `Retry-After` naming the cap, a replica draining or Redis out of reach a 503 with
//! `Retry-After`, anything else a 500 whose cause is only logged.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use instaclone_shared::{http::ApiError, unreachable::Unreachable};

use crate::{admission::Refusal, protocol::InvalidStreamId};

/// One error type for the hub's HTTP surface.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error(transparent)]
    BadResumeId(#[from] InvalidStreamId),
    #[error("{0}")]
    NotAnUpgrade(String, StatusCode),
    #[error("this replica is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl From<HubError> for ApiError {
    fn from(error: HubError) -> Self {
        match error {
            HubError::Unauthorized(message) => ApiError::unauthorized(message),
            HubError::BadResumeId(error) => ApiError::bad_request(error.to_string()),
            HubError::NotAnUpgrade(message, status) => ApiError::new(status, message),
            HubError::ShuttingDown => {
                ApiError::service_unavailable("This replica is shutting down; connect to another")
            }
            HubError::Refused(refusal) => {
                ::metrics::counter!("hub_connections_refused_total", "reason" => refusal.kind())
                    .increment(1);
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, refusal.to_string())
                    .with_retry_after(refusal.retry_after().as_secs().max(1))
            }
            HubError::Redis(error) if error.is_unreachable() => {
                ApiError::unavailable("Redis", error)
            }
            HubError::Redis(error) => ApiError::internal(error),
        }
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
