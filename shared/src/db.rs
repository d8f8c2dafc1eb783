//! Connections to PostgreSQL, MongoDB and Redis that wait for their server at startup.
//!
//! In a compose file or after a reboot the backing services come up in any order. Instead of
//! crashing on the first refused connection, each helper retries with backoff, logging one line
//! per attempt that names the server, until the configured startup wait (`STARTUP_WAIT_SECS`)
//! has passed; then the error names the server that never answered.

use std::{future::Future, time::Duration};

#[cfg(feature = "postgres")]
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::backoff::{Backoff, RetryPolicy, Retrying, any_error, retry_notify};
#[cfg(any(feature = "postgres", feature = "mongo"))]
use crate::config::Secret;
#[cfg(feature = "redis")]
use crate::{
    config::RedisSettings,
    redis_conn::{self, RedisConnection},
};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{server} at {address} did not answer within {waited:?}: {last_error}")]
    GaveUp {
        server: &'static str,
        address: String,
        waited: Duration,
        last_error: String,
    },
    #[error("invalid {server} URL: {reason}")]
    BadUrl {
        server: &'static str,
        reason: String,
    },
}

/// `scheme://user:password@host:port/path?options` without the credentials, for log lines: the
/// user info goes, and so does the value of any option that can carry a secret
/// (`?password=`, `sslpassword=`, `authToken=`, `secret=`, `key=`).
pub fn redact_url(url: &str) -> String {
    let without_user = match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    };
    let Some((base, query)) = without_user.split_once('?') else {
        return without_user;
    };
    let options: Vec<String> = query
        .split('&')
        .map(|option| match option.split_once('=') {
            Some((name, _)) if is_secret_option(name) => format!("{name}=[redacted]"),
            _ => option.to_owned(),
        })
        .collect();
    format!("{base}?{}", options.join("&"))
}

fn is_secret_option(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "key"]
        .iter()
        .any(|word| name.contains(word))
}

/// Runs `attempt` until it succeeds or `max_wait` has passed, logging each failure.
pub async fn retry_startup<T, E, F, Fut>(
    server: &'static str,
    address: &str,
    max_wait: Duration,
    mut attempt: F,
) -> Result<T, ConnectError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let policy = RetryPolicy::within(backoff, started, max_wait);
    let bounded_attempt = || {
        // Bound each attempt too: some clients retry internally for a long time.
        let remaining = max_wait
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(100));
        let attempt = attempt();
        async move {
            match tokio::time::timeout(remaining, attempt).await {
                Ok(outcome) => outcome.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {remaining:?}")),
            }
        }
    };
    let log_retry = |retrying: &Retrying<'_, String>| {
        let (error, delay) = (retrying.error, retrying.delay);
        tracing::warn!(%server, %address, %error, retry_in = ?delay, "waiting for {server}");
    };
    retry_notify(policy, any_error, log_retry, bounded_attempt)
        .await
        .map_err(|error| ConnectError::GaveUp {
            server,
            address: address.to_owned(),
            waited: started.elapsed(),
            last_error: error,
        })
}

/// A pool on the database named in `url`, creating that database first if it does not exist.
#[cfg(feature = "postgres")]
pub async fn connect_postgres(
    url: &Secret<String>,
    max_connections: u32,
    max_wait: Duration,
) -> Result<PgPool, ConnectError> {
    let options: PgConnectOptions =
        url.expose()
            .parse()
            .map_err(|e: sqlx::Error| ConnectError::BadUrl {
                server: "PostgreSQL",
                reason: e.to_string(),
            })?;
    let address = redact_url(url.expose());
    let database = options.get_database().unwrap_or("postgres").to_owned();
    retry_startup("PostgreSQL", &address, max_wait, || {
        create_database_if_missing(&options, &database)
    })
    .await?;
    retry_startup("PostgreSQL", &address, max_wait, || {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
    })
    .await
}

#[cfg(feature = "postgres")]
async fn create_database_if_missing(
    options: &PgConnectOptions,
    database: &str,
) -> Result<(), sqlx::Error> {
    use sqlx::{Connection, Executor};
    let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = database.replace('"', "\"\"");
        match admin
            .execute(format!(r#"CREATE DATABASE "{quoted}""#).as_str())
            .await
        {
            Ok(_) => tracing::info!(%database, "created PostgreSQL database"),
            // Another process created it between our check and our CREATE.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The named database on the MongoDB-protocol server at `url`, once the server answers a ping.
#[cfg(feature = "mongo")]
pub async fn connect_mongo(
    url: &Secret<String>,
    database: &str,
    max_wait: Duration,
) -> Result<mongodb::Database, ConnectError> {
    let address = redact_url(url.expose());
    let mut options = mongodb::options::ClientOptions::parse(url.expose())
        .await
        .map_err(|e| ConnectError::BadUrl {
            server: "MongoDB",
            reason: e.to_string(),
        })?;
    options
        .server_selection_timeout
        .get_or_insert(Duration::from_secs(5));
    options
        .app_name
        .get_or_insert_with(|| "instaclone".to_owned());
    let client = mongodb::Client::with_options(options).map_err(|e| ConnectError::BadUrl {
        server: "MongoDB",
        reason: e.to_string(),
    })?;
    let db = client.database(database);
    retry_startup("MongoDB", &address, max_wait, || async {
        db.run_command(mongodb::bson::doc! { "ping": 1 }).await
    })
    .await?;
    Ok(db)
}

/// A self-reconnecting connection to Redis (a single server, or a cluster when
/// `settings.cluster`), once it answers.
#[cfg(feature = "redis")]
pub async fn connect_redis(
    settings: &RedisSettings,
    max_wait: Duration,
) -> Result<RedisConnection, ConnectError> {
    let address = (settings.url.expose().split(','))
        .map(|url| redact_url(url.trim()))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = redis_conn::nodes(settings.url.expose()).map_err(|e| ConnectError::BadUrl {
        server: "Redis",
        reason: e.to_string(),
    })?;
    retry_startup("Redis", &address, max_wait, || {
        redis_conn::open(&nodes, settings.cluster)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_credentials_only() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("postgres://db:5432/users?user=app&password=hunter2&sslmode=require"),
            "postgres://db:5432/users?user=app&password=[redacted]&sslmode=require"
        );
        assert_eq!(
            redact_url("mongodb://u:p@m:27017/?authSource=admin&tlsCertificateKeyFilePassword=x"),
            "mongodb://m:27017/?authSource=admin&tlsCertificateKeyFilePassword=[redacted]"
        );
    }

    #[tokio::test]
    async fn retry_gives_up_with_the_server_name_and_last_error() {
        let mut calls = 0;
        let result: Result<(), _> =
            retry_startup("Nothing", "127.0.0.1:1", Duration::from_millis(500), || {
                calls += 1;
                async { Err::<(), _>("connection refused") }
            })
            .await;
        let message = result.unwrap_err().to_string();
        assert!(message.contains("Nothing at 127.0.0.1:1"), "{message}");
        assert!(message.contains("connection refused"), "{message}");
        assert!(calls >= 2, "retried {calls} times");
    }
}
