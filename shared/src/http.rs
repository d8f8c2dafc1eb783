//! The HTTP contract every service shares with the NestJS original: the success envelope
//! `{"statusCode", "data"}`, the error body `{"statusCode", "message", "error"}`, extractors whose
//! rejections use that error body, and the common middleware (request id, tracing, body limit).
//!
//! Each service keeps its own `thiserror` enum and converts it into [`ApiError`]; 5xx details are
//! logged here and never sent to the client.

use axum::{
    Json, Router,
    extract::{FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::{HeaderName, HeaderValue, StatusCode, header::RETRY_AFTER, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tower_http::{
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// What a 503 tells the client to wait (`Retry-After`, seconds) before trying again: about as
/// long as a dropped connection to a backing store takes to be re-established.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

/// An error as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Sent as `Retry-After` (seconds).
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After: secs` to the response.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 503 with `Retry-After`: the failure is temporary and the request may be repeated as is.
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
            .with_retry_after(UNAVAILABLE_RETRY_AFTER_SECS)
    }

    /// A backing store (`store`: "PostgreSQL", "MongoDB", "Redis") could not be reached (see
    /// [`crate::unreachable`]): `cause` is logged, the client gets a 503 with `Retry-After` that
    /// names no internals. Nothing was written, so repeating the request is safe.
    pub fn unavailable(store: &'static str, cause: impl std::fmt::Display) -> Self {
        tracing::warn!(%store, error = %cause, "backing store unreachable");
        Self::service_unavailable("Service temporarily unavailable, try again later")
    }

    /// A server-side failure: `cause` is logged with the request's span, the client only learns
    /// that something went wrong.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = error_response(self.status, &self.message);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The original's error body, which every failure carries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// The response's status code.
    pub status_code: u16,
    /// What is wrong, for a person to read.
    pub message: &'a str,
    /// The status's reason phrase.
    pub error: &'a str,
}

/// The original's error body: `{"statusCode", "message", "error"}` with `error` the reason phrase.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let body = ErrorBody {
        status_code: status.as_u16(),
        message,
        error: status.canonical_reason().unwrap_or("Error"),
    };
    (status, Json(body)).into_response()
}

/// The success envelope: `{"statusCode": <code>, "data": <payload>}`.
#[derive(Debug)]
pub struct Envelope<T> {
    status: StatusCode,
    data: T,
}

impl<T> Envelope<T> {
    pub fn ok(data: T) -> Self {
        Self {
            status: StatusCode::OK,
            data,
        }
    }

    pub fn created(data: T) -> Self {
        Self {
            status: StatusCode::CREATED,
            data,
        }
    }
}

impl<T: Serialize> IntoResponse for Envelope<T> {
    fn into_response(self) -> Response {
        let body = json!({ "statusCode": self.status.as_u16(), "data": self.data });
        (self.status, Json(body)).into_response()
    }
}

/// `Json<T>` whose rejections (malformed JSON, unknown fields, wrong types, too large, wrong
/// content type) come back in the error envelope. Give request bodies
/// `#[serde(deny_unknown_fields)]` so unknown fields are rejected as the original did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Expected request with `Content-Type: application/json`",
            ));
        }
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        // serde reads a struct from a JSON array too (`[null, null]` as its fields in order);
        // every body of this API is an object, as the OpenAPI document says.
        let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
        if first.is_some_and(|&byte| byte != b'{') {
            return Err(ApiError::bad_request(
                "The request body must be a JSON object",
            ));
        }
        match Json::<T>::from_bytes(&body) {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// `application/json` or any `application/*+json`, as axum's `Json` accepts.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = match rejection.status() {
        // axum answers 422 for well-formed JSON of the wrong shape; the original answered 400.
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        other => other,
    };
    ApiError::new(status, rejection.body_text())
}

/// `Query<T>` with 400 rejections in the error envelope.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// `Path<T>` with 400 rejections in the error envelope (a malformed id is the client's fault).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Fallback for unknown routes: 404 in the error envelope.
pub async fn not_found_fallback(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("Cannot find {}", uri.path()))
}

/// Wraps a service's router with what every service has: 404 fallback in the envelope, 405 in the
/// envelope, a body limit answered with 413, request ids (kept from the caller or made here, and
/// echoed back), and a tracing span per request carrying that id.
pub fn with_common_layers(router: Router, body_limit_bytes: usize) -> Router {
    router
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
        })
        .layer(RequestBodyLimitLayer::new(body_limit_bytes))
        // Outside the body limit, so its bare 413 (announced Content-Length) gets the envelope.
        .layer(axum::middleware::map_response(envelope_bare_errors))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
                let request_id = request
                    .headers()
                    .get(REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id = %request_id,
                )
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
}

/// Middleware and extractors outside our control (the body limit, WebSocket upgrade checks)
/// answer errors with an empty or plain-text body; give them the error envelope.
async fn envelope_bare_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json && (status.is_client_error() || status.is_server_error()) {
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "Request body is too large",
            _ => status.canonical_reason().unwrap_or("Error"),
        };
        let mut enveloped = error_response(status, message);
        for (name, value) in response.headers() {
            if name == axum::http::header::CONTENT_LENGTH {
                continue;
            }
            enveloped.headers_mut().entry(name).or_insert(value.clone());
        }
        return enveloped;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, routing::post};
    use tower::ServiceExt;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body1 {
        name: String,
    }

    async fn echo(ApiJson(body): ApiJson<Body1>) -> Envelope<String> {
        Envelope::created(body.name)
    }

    fn app() -> Router {
        with_common_layers(Router::new().route("/echo", post(echo)), 64)
    }

    async fn send(request: axum::http::Request<Body>) -> (StatusCode, serde_json::Value, Response) {
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json, Response::from_parts(parts, Body::empty()))
    }

    fn post_json(body: &str) -> axum::http::Request<Body> {
        axum::http::Request::post("/echo")
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn success_is_wrapped_in_the_envelope() {
        let (status, json, response) = send(post_json(r#"{"name":"ada"}"#)).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(json, json!({"statusCode": 201, "data": "ada"}));
        assert!(response.headers().contains_key("x-request-id"));
    }

    #[tokio::test]
    async fn unknown_fields_are_a_400_in_the_error_envelope() {
        let (status, json, _) = send(post_json(r#"{"name":"ada","admin":true}"#)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["statusCode"], 400);
        assert_eq!(json["error"], "Bad Request");
        assert!(
            json["message"].as_str().unwrap().contains("admin"),
            "{json}"
        );
    }

    #[tokio::test]
    async fn a_body_that_is_not_an_object_is_a_400() {
        for body in ["[\"ada\"]", "\"ada\"", "null", "3"] {
            let (status, json, _) = send(post_json(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(json["statusCode"], 400, "{body}");
        }
    }

    #[tokio::test]
    async fn a_body_without_the_json_content_type_is_a_415() {
        let request = axum::http::Request::post("/echo")
            .header("content-type", "text/plain")
            .body(Body::from("{\"name\":\"ada\"}"))
            .unwrap();
        let (status, json, _) = send(request).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(json["statusCode"], 415);
    }

    #[tokio::test]
    async fn malformed_json_is_a_400() {
        let (status, json, _) = send(post_json("{nope")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["statusCode"], 400);
    }

    #[tokio::test]
    async fn oversized_body_is_a_413_in_the_envelope() {
        let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(200));
        // Once found while reading the body, once refused up front from Content-Length.
        let mut announced = post_json(&big);
        announced
            .headers_mut()
            .insert("content-length", big.len().to_string().parse().unwrap());
        for request in [post_json(&big), announced] {
            let (status, json, _) = send(request).await;
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(json["statusCode"], 413);
            assert_eq!(json["error"], "Payload Too Large");
        }
    }

    #[tokio::test]
    async fn unknown_route_is_a_404_and_wrong_method_a_405() {
        let get = |uri: &str| axum::http::Request::get(uri).body(Body::empty()).unwrap();
        let (status, json, _) = send(get("/nowhere")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(json["message"], "Cannot find /nowhere");
        let (status, json, _) = send(get("/echo")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(json["statusCode"], 405);
    }

    #[tokio::test]
    async fn caller_request_id_is_kept() {
        let mut request = post_json(r#"{"name":"ada"}"#);
        request
            .headers_mut()
            .insert("x-request-id", "abc-123".parse().unwrap());
        let (_, _, response) = send(request).await;
        assert_eq!(response.headers()["x-request-id"], "abc-123");
    }

    #[test]
    fn unavailable_is_a_503_with_retry_after_naming_no_internals() {
        let response = ApiError::unavailable("MongoDB", "connection refused (127.0.0.1:27017)")
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()[RETRY_AFTER],
            UNAVAILABLE_RETRY_AFTER_SECS.to_string()
        );
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let error = ApiError::internal("relation \"users\" does not exist");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.message(), "Internal server error");
    }
}
