//! Tracing setup: human-readable lines in a terminal, JSON lines for collectors.
//!
//! Logs go to stderr, so commands that print results (`instaclone replay`) keep stdout clean.
//! The filter comes from `RUST_LOG` (default `info`). Request ids (`x-request-id`) are recorded on
//! each request's span by [`crate::http::with_common_layers`], so they appear on every line logged
//! while the request is handled.

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing),
/// which lets tests and the all-in-one binary share one code path.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Human => registry
            .with(fmt::layer().with_target(true).with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}

/// For tests: logs only when `TEST_LOG` is set, so a failing test can be rerun with its logs.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init(LogFormat::Human);
    }
}
