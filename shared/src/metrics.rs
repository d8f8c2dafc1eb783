//! Prometheus metrics: one process-wide recorder, a `/metrics` route, and request metrics for
//! every HTTP route (count by route template and status, latency histogram).
//!
//! In the all-in-one binary every part shares the recorder; the `service` label tells them apart.

use std::{sync::OnceLock, time::Instant};

use axum::{
    Router,
    extract::{MatchedPath, Request},
    http::{HeaderMap, header::CONTENT_TYPE},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{
    auth::{INTERNAL_TOKEN_HEADER, InternalToken, bearer_token},
    http::ApiError,
};

/// Latency buckets (seconds) for every `*_seconds` histogram: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed already; then ours just stays empty.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed");
        }
        spawn_upkeep(handle.clone());
        handle
    })
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Histograms keep every recorded sample until upkeep folds them into buckets; without it they
/// grow by every request and delivery until someone scrapes `/metrics`. A plain thread, so it
/// runs whichever runtime (or none) first asked for the recorder.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the metrics upkeep thread");
    }
}

/// `GET /metrics` in the Prometheus text format. With `guard` (the service credential, `None`
/// inside when none is configured), a scrape must present it, as `Authorization: Bearer` (what
/// Prometheus' `authorization` setting sends) or as the `x-internal-token` header: the counters
/// of every part in the process are not for the public. Without `guard`, anyone may scrape.
pub fn router(guard: Option<Option<InternalToken>>) -> Router {
    Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| async move {
            if let Some(expected) = &guard {
                let presented = bearer_token(&headers).or_else(|| {
                    headers
                        .get(INTERNAL_TOKEN_HEADER)
                        .and_then(|value| value.to_str().ok())
                });
                let allowed = expected
                    .as_ref()
                    .zip(presented)
                    .is_some_and(|(expected, presented)| expected.matches(presented));
                if !allowed {
                    return ApiError::unauthorized("Metrics need the service credential")
                        .into_response();
                }
            }
            (
                [(CONTENT_TYPE, "text/plain; version=0.0.4")],
                handle().render(),
            )
                .into_response()
        }),
    )
}

/// Adds request metrics labelled with `service` to every route of `router`.
pub fn with_request_metrics(router: Router, service: &'static str) -> Router {
    handle();
    router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| track(service, request, next),
    ))
}

async fn track(service: &'static str, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // The route template, not the raw path, so ids do not explode the label space.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await.into_response();
    let labels = [
        ("service", service.to_owned()),
        ("route", route),
        ("method", method),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
