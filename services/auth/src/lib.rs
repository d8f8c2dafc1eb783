//! Auth service: register, login, refresh and logout; sessions in Redis.
//!
//! - Passwords are hashed with argon2id here ([`password`]) and stored by the users service,
//!   which auth calls over its internal API ([`UsersClient`]); auth itself keeps no user data.
//! - A login opens a session (one per device) with a short-lived access JWT and a rotating
//!   refresh token; reuse of a spent refresh token revokes the session ([`sessions`]).
//! - Failed logins are limited per account and per client address ([`rate_limit`],
//!   [`instaclone_shared::client_address`]).
//!
//! A library (`build` returns a bound [`ServiceApp`]) with a thin `main.rs`, so the all-in-one
//! binary and the tests start it in-process. `docs/auth.md` describes the design and its figures.

pub mod config;
pub mod domain;
pub mod error;
pub mod password;
pub mod rate_limit;
pub mod routes;
pub mod sessions;

use std::sync::Arc;

use instaclone_shared::{
    auth::{TokenIssuer, TokenVerifier},
    client_address::ClientAddressPolicy,
    config::Settings,
    db,
    health::Dependency,
    revocation::Revocations,
    server::{ServiceApp, StartupError, service_router},
    users_internal::UsersClient,
};
use tokio_util::sync::CancellationToken;

pub use crate::config::AuthOptions;
use crate::{
    password::PasswordHasherPool, rate_limit::LoginRateLimiter, routes::AppState,
    sessions::SessionStore,
};

pub const SERVICE_NAME: &str = "auth";

/// Connects to the backing services and binds the listener, with [`AuthOptions`] read from the
/// environment; serve with [`ServiceApp::run_until_stopped`].
pub async fn build(
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<ServiceApp, StartupError> {
    let options = AuthOptions::from_env()?;
    build_with_options(settings, options, shutdown).await
}

/// [`build`] with explicit auth options (tests and benchmarks use it to pick limits).
pub async fn build_with_options(
    settings: &Settings,
    options: AuthOptions,
    shutdown: CancellationToken,
) -> Result<ServiceApp, StartupError> {
    // Fail at startup, not on the first request, when keys or credentials are missing.
    let verifier = TokenVerifier::from_settings(&settings.jwt)?;
    let issuer = TokenIssuer::from_settings(&settings.jwt)?;
    let users = UsersClient::from_settings(settings, "auth needs it to call the users service")?;
    let passwords = PasswordHasherPool::new(options.argon2, options.max_concurrent_hashes)
        .await
        .map_err(|e| StartupError::Config(format!("argon2: {e}")))?;
    let redis = db::connect_redis(&settings.redis, settings.startup_wait).await?;
    let state = AppState {
        verifier,
        sessions: SessionStore::new(redis.clone(), settings.redis.clone(), issuer.refresh_ttl()),
        revocations: Revocations::new(redis.clone(), settings.redis.clone()),
        issuer,
        users,
        limiter: LoginRateLimiter::new(redis.clone(), settings.redis.clone(), options.login_limits),
        passwords,
        addresses: Arc::new(ClientAddressPolicy::new(options.trusted_proxies)),
    };
    let router = service_router(
        SERVICE_NAME,
        routes::router().with_state(state),
        vec![Dependency::Redis(redis)],
        settings,
    );
    ServiceApp::bind(
        SERVICE_NAME,
        settings.http.host,
        settings.http.auth_port,
        router,
        shutdown,
    )
    .await
    .map_err(StartupError::from)
}
