//! Running a part: bind its listener, serve its router and background tasks, stop gracefully.
//!
//! Every part (service or hub) builds a [`ServiceApp`]: the listener is bound in `build`, so the
//! real port is known before serving (tests bind port 0), and [`ServiceApp::run_until_stopped`]
//! serves until the shutdown token is cancelled, then lets in-flight requests and background
//! tasks (relays, consumers) finish.

use std::{net::SocketAddr, time::Duration};

use axum::Router;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// How long background tasks get to finish after the listener has stopped.
const TASK_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A part's complete router: its own routes plus `/health`, `/ready` (checking `dependencies`)
/// and `/metrics` (behind the service credential unless `METRICS_ACCESS=public`), with request
/// metrics and the common layers of [`crate::http`].
pub fn service_router(
    name: &'static str,
    routes: Router,
    dependencies: Vec<crate::health::Dependency>,
    settings: &crate::config::Settings,
) -> Router {
    let metrics = match settings.metrics_access {
        crate::config::MetricsAccess::Public => crate::metrics::router(None),
        crate::config::MetricsAccess::Credential => {
            let token = settings
                .internal
                .token
                .clone()
                .map(crate::auth::InternalToken::new);
            if token.is_none() {
                tracing::warn!(
                    part = name,
                    "INTERNAL_TOKEN is not set: /metrics refuses every scrape (set it, or METRICS_ACCESS=public)"
                );
            }
            crate::metrics::router(Some(token))
        }
    };
    let router = routes
        .merge(crate::health::router(dependencies))
        .merge(metrics);
    crate::http::with_common_layers(
        crate::metrics::with_request_metrics(router, name),
        settings.http.body_limit_bytes,
    )
}

/// A bound, not yet serving, part of the platform.
pub struct ServiceApp {
    name: &'static str,
    listener: TcpListener,
    address: SocketAddr,
    router: Router,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
    event_stream_paths: &'static [&'static str],
}

impl ServiceApp {
    /// Binds `host:port` (port 0 picks a free one). `shutdown` stops the app when cancelled.
    pub async fn bind(
        name: &'static str,
        host: std::net::IpAddr,
        port: u16,
        router: Router,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind((host, port)).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{name} cannot listen on {host}:{port}: {e}"),
            )
        })?;
        let address = listener.local_addr()?;
        Ok(Self {
            name,
            listener,
            address,
            router,
            tasks: Vec::new(),
            shutdown,
            event_stream_paths: &[],
        })
    }

    /// Serves bodiless `GET`s to these paths (long-lived event streams) without hyper's
    /// per-connection buffers; see [`crate::serving`].
    pub fn serve_event_streams_on(&mut self, paths: &'static [&'static str]) {
        self.event_stream_paths = paths;
    }

    /// Runs `task` beside the server; it must return once the shutdown token is cancelled.
    pub fn spawn_task(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The part's complete router (cheap to clone), for calling it in-process.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The token that stops this app.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self {
            name,
            listener,
            address,
            router,
            tasks,
            shutdown,
            event_stream_paths,
        } = self;
        tracing::info!(service = name, %address, "listening");
        crate::serving::serve(listener, router, event_stream_paths, shutdown.clone()).await;
        let drain = futures_util::future::join_all(tasks);
        if tokio::time::timeout(TASK_DRAIN_TIMEOUT, drain)
            .await
            .is_err()
        {
            tracing::warn!(service = name, "background tasks did not stop in time");
        }
        tracing::info!(service = name, "stopped");
        Ok(())
    }
}

/// A token cancelled on SIGINT (Ctrl-C) or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {}
            () = terminate => {}
        }
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

/// Why a part could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Connect(#[from] crate::db::ConnectError),
    #[error(transparent)]
    Keys(#[from] crate::auth::KeyError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("database migration failed: {0}")]
    Migrate(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Settings(#[from] crate::config::ConfigError),
}
