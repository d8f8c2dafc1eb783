//! Why the gateway answered instead of a service, and how each case looks to the client: no or
//! a bad token is a 401 and nothing is forwarded, a spent budget a 429 with `Retry-After`, a
//! service down or failing a 502 naming it, a slow one a 504, an oversized body a 413.

use std::time::Duration;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use instaclone_shared::{auth::TokenError, http::ApiError};

use crate::routes::Upstream;

/// Why the gateway answered instead of a service.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("missing bearer token")]
    MissingToken,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration },
    #[error("the {} service is unreachable", .0.name())]
    UpstreamUnreachable(Upstream),
    #[error("the {} service did not answer in time", .0.name())]
    UpstreamTimeout(Upstream),
    #[error("the {} service failed to answer", .0.name())]
    UpstreamFailed(Upstream),
    #[error("request body is too large")]
    BodyTooLarge,
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingToken | Self::Token(_) => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
            Self::UpstreamUnreachable(_) => "unreachable",
            Self::UpstreamTimeout(_) => "timeout",
            Self::UpstreamFailed(_) => "failed",
            Self::BodyTooLarge => "body_too_large",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<GatewayError> for ApiError {
    fn from(error: GatewayError) -> Self {
        let message = error.to_string();
        match error {
            GatewayError::MissingToken => ApiError::unauthorized("Missing bearer token"),
            GatewayError::Token(token) => token.into(),
            GatewayError::RateLimited { retry_after } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Too many requests")
                    .with_retry_after(retry_after.as_secs().max(1))
            }
            GatewayError::UpstreamUnreachable(_) | GatewayError::UpstreamFailed(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, capitalise(&message))
            }
            GatewayError::UpstreamTimeout(_) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, capitalise(&message))
            }
            GatewayError::BodyTooLarge => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body is too large")
            }
            GatewayError::Internal(cause) => ApiError::internal(cause),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

fn capitalise(message: &str) -> String {
    let mut chars = message.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}
