//! `/health` (the process is alive) and `/ready` (its backing services answer), on every part.
//!
//! Liveness never touches a dependency, so an orchestrator does not restart a healthy process
//! because its database is slow. Readiness checks each dependency with a short timeout and
//! answers 503 naming the ones that failed, so traffic is held back until they are reachable.

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::json;

#[cfg(feature = "amqp")]
use crate::{amqp::BrokerStatus, config::AmqpSettings};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A backing service a part needs in order to serve.
#[derive(Clone)]
pub enum Dependency {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mongo")]
    Mongo(mongodb::Database),
    #[cfg(feature = "redis")]
    Redis(crate::redis_conn::RedisConnection),
    /// The broker, as the part's own consumers see it (`status`); checked with a connection of
    /// its own only when the part has no consumer yet.
    #[cfg(feature = "amqp")]
    RabbitMq {
        settings: AmqpSettings,
        status: BrokerStatus,
    },
}

impl Dependency {
    fn name(&self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => "postgres",
            #[cfg(feature = "mongo")]
            Self::Mongo(_) => "mongodb",
            #[cfg(feature = "redis")]
            Self::Redis(_) => "redis",
            #[cfg(feature = "amqp")]
            Self::RabbitMq { .. } => "rabbitmq",
            // Without any backing-service feature there is no variant at all.
            #[allow(unreachable_patterns)]
            _ => "none",
        }
    }

    async fn check(&self) -> Result<(), String> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(pool) => sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            #[cfg(feature = "mongo")]
            Self::Mongo(db) => db
                .run_command(mongodb::bson::doc! { "ping": 1 })
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            #[cfg(feature = "redis")]
            Self::Redis(connection) => {
                let mut connection = connection.clone();
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            #[cfg(feature = "amqp")]
            Self::RabbitMq { status, .. } if status.all_up() == Some(true) => Ok(()),
            #[cfg(feature = "amqp")]
            Self::RabbitMq { status, .. } if status.all_up() == Some(false) => {
                Err("a consumer's RabbitMQ link is down".to_owned())
            }
            #[cfg(feature = "amqp")]
            Self::RabbitMq { settings, .. } => {
                let connection = crate::amqp::connect(settings)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = connection.close(200, "readiness check").await;
                Ok(())
            }
            #[allow(unreachable_patterns)]
            _ => Ok(()),
        }
    }
}

/// The two routes, checking `dependencies` on `/ready`.
pub fn router(dependencies: Vec<Dependency>) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/ready", get(ready))
        .with_state(dependencies)
}

async fn ready(State(dependencies): State<Vec<Dependency>>) -> impl IntoResponse {
    let results =
        futures_util::future::join_all(dependencies.iter().map(|dependency| async move {
            let outcome = tokio::time::timeout(CHECK_TIMEOUT, dependency.check())
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()));
            (dependency.name(), outcome)
        }))
        .await;
    let mut checks = serde_json::Map::new();
    let mut all_up = true;
    for (name, outcome) in results {
        if let Err(error) = &outcome {
            all_up = false;
            tracing::warn!(dependency = name, %error, "readiness check failed");
        }
        // The reason stays in the log: it may carry addresses or server messages.
        checks.insert(
            name.to_owned(),
            json!(if outcome.is_ok() { "up" } else { "down" }),
        );
    }
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "status": if all_up { "ready" } else { "unavailable" }, "checks": checks })),
    )
}
