//! The public auth API: register, login, refresh, logout.
//!
//! Bodies and responses keep the NestJS original's names (`{email, password}`, `accessToken`,
//! `refreshToken`) inside the success envelope. See the crate docs for the token model.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{ConnectInfo, FromRef, State},
    http::HeaderMap,
};
use instaclone_shared::{
    auth::{AuthUser, TokenIssuer, TokenKind, TokenVerifier, bearer_token},
    client_address::ClientAddressPolicy,
    http::{ApiJson, Envelope},
    revocation::Revocations,
    users_internal::{NewUser, UserRecord, UsersClient},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    domain::{Email, LoginPassword, NewPassword, Username},
    error::AuthError,
    password::PasswordHasherPool,
    rate_limit::{Admission, AttemptTicket, LoginRateLimiter, retry_after_secs},
    sessions::{Rotation, SessionStore},
};

/// Everything a handler needs. Cheap to clone (every field is a handle).
#[derive(Clone, FromRef)]
pub struct AppState {
    pub verifier: TokenVerifier,
    pub issuer: TokenIssuer,
    pub users: UsersClient,
    pub sessions: SessionStore,
    /// "Every session of this user ends now" (logout everywhere, password change).
    pub revocations: Revocations,
    pub limiter: LoginRateLimiter,
    pub passwords: PasswordHasherPool,
    pub addresses: Arc<ClientAddressPolicy>,
}

/// The service's public routes; the crate root gives them their state.
pub fn router() -> Router<AppState> {
    api().split_for_parts().0
}

/// The routes and their description, from the same declarations.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(change_password))
        .routes(routes!(delete_account))
}

/// The service's finished OpenAPI document (see [`instaclone_shared::openapi`]).
pub fn openapi() -> serde_json::Value {
    instaclone_shared::openapi::finish("auth", api().into_openapi())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(min_length = 8, max_length = 256)]
    password: String,
    /// Made from the email when absent.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._]{3,30}$")]
    username: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(min_length = 1, max_length = 256)]
    password: String,
}

/// A fresh token pair of one session.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenPair {
    access_token: String,
    refresh_token: String,
}

/// Register and login answers: the user and the new session's tokens.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AuthResult)]
pub struct SignedIn {
    user: UserRecord,
    #[serde(flatten)]
    tokens: TokenPair,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoggedOut {
    message: &'static str,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAccountRequest {
    #[schema(min_length = 1, max_length = 256)]
    password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangePasswordRequest {
    #[schema(min_length = 1, max_length = 256)]
    current_password: String,
    #[schema(min_length = 8, max_length = 256)]
    new_password: String,
}

/// Every validation problem of a request in one 400, so a client fixes them all at once.
fn invalid(problems: impl IntoIterator<Item = Option<String>>) -> AuthError {
    let problems: Vec<String> = problems.into_iter().flatten().collect();
    AuthError::Invalid(problems.join("; "))
}

/// Create an account and log in.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "The new user and session", body = SignedIn),
        (status = 409, description = "The email or username is taken"),
    ))]
#[tracing::instrument(skip_all, fields(user_id))]
async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<Envelope<SignedIn>, AuthError> {
    let (email, password, username) = match (
        Email::parse(&body.email),
        NewPassword::parse(body.password),
        body.username.as_deref().map(Username::parse).transpose(),
    ) {
        (Ok(email), Ok(password), Ok(username)) => (email, password, username),
        (email, password, username) => {
            return Err(invalid([email.err(), password.err(), username.err()]));
        }
    };

    let password_hash = state.passwords.hash(password.into_secret()).await?;
    state.sessions.ensure_reachable().await?;
    let user = state
        .users
        .create_user(&NewUser {
            email: email.as_str().to_owned(),
            username: username.map(Username::into_inner),
            password_hash,
        })
        .await?;
    tracing::Span::current().record("user_id", tracing::field::display(user.id));
    let tokens = start_session(&state, user.id).await?;
    tracing::info!("registered");
    Ok(Envelope::created(SignedIn { user, tokens }))
}

/// Log in with email and password.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "The user and the new session", body = SignedIn),
        (status = 401, description = "Unknown email or wrong password (one message for both)"),
        (status = 429, description = "Too many failed attempts for this account or address"),
    ))]
#[tracing::instrument(skip_all, fields(user_id))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Envelope<SignedIn>, AuthError> {
    let (email, password) = match (
        Email::parse(&body.email),
        LoginPassword::parse(body.password),
    ) {
        (Ok(email), Ok(password)) => (email, password),
        (email, password) => return Err(invalid([email.err(), password.err()])),
    };

    let address = state.addresses.client_address(peer, &headers);
    let ticket = admit_attempt(&state, &email, address)
        .await
        .inspect_err(|error| {
            if matches!(error, AuthError::RateLimited { .. }) {
                count_login("rate_limited");
                tracing::info!(%address, "login rate limited");
            }
        })?;

    match check_credentials(&state, &email, password).await {
        Ok(Some(user)) => {
            count_login("success");
            state.limiter.succeeded(ticket).await?;
            tracing::Span::current().record("user_id", tracing::field::display(user.id));
            let tokens = start_session(&state, user.id).await?;
            Ok(Envelope::ok(SignedIn { user, tokens }))
        }
        // The ticket stays in the limiter: this failure counts.
        Ok(None) => {
            count_login("invalid_credentials");
            tracing::info!(%address, "login failed");
            Err(AuthError::InvalidCredentials)
        }
        // Our failure, not the client's: do not count it against them.
        Err(error) => {
            if let Err(release) = state.limiter.succeeded(ticket).await {
                tracing::warn!(error = %release, "could not release a login attempt");
            }
            Err(error)
        }
    }
}

/// `auth_logins_total{outcome}`: a rise of `invalid_credentials` or `rate_limited` is guessing.
fn count_login(outcome: &'static str) {
    ::metrics::counter!("auth_logins_total", "outcome" => outcome).increment(1);
}

/// The user if `password` is theirs. Unknown emails take the same time as wrong passwords.
async fn check_credentials(
    state: &AppState,
    email: &Email,
    password: LoginPassword,
) -> Result<Option<UserRecord>, AuthError> {
    let credentials = state.users.find_by_email(email.as_str()).await?;
    let (user, stored_hash) = match credentials {
        Some(c) => (Some(c.user), Some(c.password_hash)),
        None => (None, None),
    };
    let matches = state
        .passwords
        .verify(password.into_secret(), stored_hash)
        .await?;
    Ok(user.filter(|_| matches))
}

/// A new session (device) for `user` and its first token pair.
async fn start_session(state: &AppState, user: Uuid) -> Result<TokenPair, AuthError> {
    let session = Uuid::new_v4();
    let (refresh_token, refresh_claims) = state.issuer.issue(user, session, TokenKind::Refresh)?;
    let (access_token, _) = state.issuer.issue(user, session, TokenKind::Access)?;
    state
        .sessions
        .create(user, session, refresh_claims.jti)
        .await?;
    Ok(TokenPair {
        access_token,
        refresh_token,
    })
}

/// Exchange the refresh token (as bearer) for a new pair; each refresh token works once.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", security(("refreshToken" = [])),
    responses((status = 200, description = "The session's new token pair", body = TokenPair)))]
#[tracing::instrument(skip_all, fields(user_id, session_id))]
async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Envelope<TokenPair>, AuthError> {
    let presented = bearer_token(&headers).ok_or(AuthError::MissingToken)?;
    let claims = state.verifier.verify(presented, TokenKind::Refresh)?;
    let span = tracing::Span::current();
    span.record("user_id", tracing::field::display(claims.sub));
    span.record("session_id", tracing::field::display(claims.sid));
    if state.revocations.is_revoked(claims.sub, claims.iat).await? {
        state.sessions.revoke(claims.sub, claims.sid).await?;
        return Err(AuthError::SessionEnded);
    }

    // Sign first: once the session has moved on, the client must get the new pair.
    let (refresh_token, next) = state
        .issuer
        .issue(claims.sub, claims.sid, TokenKind::Refresh)?;
    let (access_token, _) = state
        .issuer
        .issue(claims.sub, claims.sid, TokenKind::Access)?;
    match state.sessions.rotate(&claims, next.jti).await? {
        Rotation::Rotated => Ok(Envelope::ok(TokenPair {
            access_token,
            refresh_token,
        })),
        Rotation::ReuseDetected => {
            ::metrics::counter!("auth_refresh_reuse_detected_total").increment(1);
            tracing::warn!("refresh token reuse detected, session revoked");
            Err(AuthError::RefreshTokenReused)
        }
        Rotation::NoSession => Err(AuthError::SessionEnded),
    }
}

/// End this session: its refresh token stops working.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(("accessToken" = [])),
    responses((status = 200, description = "The session has ended", body = LoggedOut)))]
#[tracing::instrument(skip_all, fields(user_id = %user.id, session_id = %user.session_id))]
async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Envelope<LoggedOut>, AuthError> {
    let ended = state.sessions.revoke(user.id, user.session_id).await?;
    tracing::info!(ended, "logged out");
    Ok(Envelope::ok(LoggedOut {
        message: "Logged out",
    }))
}

/// End every session of the caller: no refresh token works any more and live realtime connections close (4004).
///
/// Every device, this one included; access tokens already issued stop counting at the hub at
/// once and elsewhere when they expire.
#[utoipa::path(post, path = "/auth/logout-all", tag = "auth", security(("accessToken" = [])),
    responses((status = 200, description = "Every session has ended", body = LoggedOut)))]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn logout_all(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Envelope<LoggedOut>, AuthError> {
    end_every_session(&state, &user, chrono::Utc::now().timestamp()).await?;
    tracing::info!("logged out of every session");
    Ok(Envelope::ok(LoggedOut {
        message: "Logged out of every session",
    }))
}

/// Every session of `user` ends: tokens issued before `at` (Unix seconds) stop counting
/// everywhere, and the caller's own session record goes at once.
async fn end_every_session(state: &AppState, user: &AuthUser, at: i64) -> Result<(), AuthError> {
    state
        .revocations
        .revoke_all(user.id, at, state.issuer.refresh_ttl())
        .await?;
    state.sessions.revoke(user.id, user.session_id).await?;
    ::metrics::counter!("auth_sessions_revoked_total").increment(1);
    Ok(())
}

/// Change the password (the current one is required): every session ends, the caller gets a new one.
///
/// Failures count against the account's login limit, so a stolen access token cannot guess it.
#[utoipa::path(post, path = "/auth/password", tag = "auth", security(("accessToken" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 200, description = "The caller's new session", body = TokenPair),
        (status = 403, description = "The current password is wrong"),
        (status = 429, description = "Too many failed attempts for this account or address"),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn change_password(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    user: AuthUser,
    ApiJson(body): ApiJson<ChangePasswordRequest>,
) -> Result<Envelope<TokenPair>, AuthError> {
    let (current, new) = match (
        LoginPassword::parse(body.current_password),
        NewPassword::parse(body.new_password),
    ) {
        (Ok(current), Ok(new)) => (current, new),
        (current, new) => return Err(invalid([current.err(), new.err()])),
    };
    confirm_password(&state, &user, peer, &headers, current).await?;
    let password_hash = state.passwords.hash(new.into_secret()).await?;
    state
        .users
        .set_password_hash(user.id, &password_hash)
        .await?;
    end_every_session(&state, &user, chrono::Utc::now().timestamp()).await?;
    tracing::info!("password changed; every session ended");
    Ok(Envelope::ok(start_session(&state, user.id).await?))
}

/// A password attempt for `email` from `address`, under the login limits: the ticket to report
/// its outcome with, or 429.
async fn admit_attempt(
    state: &AppState,
    email: &Email,
    address: std::net::IpAddr,
) -> Result<AttemptTicket, AuthError> {
    match state.limiter.admit(email, address).await? {
        Admission::Admitted(ticket) => Ok(ticket),
        Admission::Limited { retry_after } => Err(AuthError::RateLimited {
            retry_after_secs: retry_after_secs(retry_after),
        }),
    }
}

/// Checks that `password` is the caller's, under the account's login limit (failures count, so
/// a stolen access token cannot be used to guess it): 403 when it is not, 429 when limited.
async fn confirm_password(
    state: &AppState,
    user: &AuthUser,
    peer: SocketAddr,
    headers: &HeaderMap,
    password: LoginPassword,
) -> Result<(), AuthError> {
    let record = state
        .users
        .get_user(user.id)
        .await?
        .ok_or(AuthError::SessionEnded)?;
    let email = Email::parse(&record.email).map_err(AuthError::Invalid)?;
    let address = state.addresses.client_address(peer, headers);
    let ticket = admit_attempt(state, &email, address).await?;
    if check_credentials(state, &email, password).await?.is_none() {
        return Err(AuthError::WrongPassword);
    }
    state.limiter.succeeded(ticket).await?;
    Ok(())
}

/// Delete the caller's account (the password is required): its follows, posts and notifications go, every session ends and live connections close.
///
/// The follows and the account go in the users service, which announces `user.deleted` for the
/// posts and notifications.
#[utoipa::path(delete, path = "/auth/account", tag = "auth", security(("accessToken" = [])),
    request_body = DeleteAccountRequest,
    responses(
        (status = 200, description = "The account is gone", body = LoggedOut),
        (status = 403, description = "The password is wrong"),
        (status = 429, description = "Too many failed attempts for this account or address"),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn delete_account(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    user: AuthUser,
    ApiJson(body): ApiJson<DeleteAccountRequest>,
) -> Result<Envelope<LoggedOut>, AuthError> {
    let password = LoginPassword::parse(body.password).map_err(AuthError::Invalid)?;
    confirm_password(&state, &user, peer, &headers, password).await?;
    state.users.delete_user(user.id).await?;
    // Tokens of this very second die too: nothing of the account may outlive it.
    end_every_session(&state, &user, chrono::Utc::now().timestamp() + 1).await?;
    tracing::info!("account deleted");
    Ok(Envelope::ok(LoggedOut {
        message: "Account deleted",
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_gateways_copy_of_the_openapi_document_is_current() {
        instaclone_shared::openapi::assert_gateway_copy_is_current("auth", &super::openapi());
    }

    /// Attribute values must be literals: the document states the domain's limits.
    #[test]
    fn the_documented_limits_are_the_domains() {
        use crate::domain::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};
        let document = super::openapi();
        let schemas = &document["components"]["schemas"];
        for (schema, field, min) in [
            ("RegisterRequest", "password", MIN_PASSWORD_CHARS),
            ("LoginRequest", "password", 1),
            ("ChangePasswordRequest", "newPassword", MIN_PASSWORD_CHARS),
            ("ChangePasswordRequest", "currentPassword", 1),
            ("DeleteAccountRequest", "password", 1),
        ] {
            let property = &schemas[schema]["properties"][field];
            assert_eq!(property["minLength"], min, "{schema}.{field}");
            assert_eq!(
                property["maxLength"], MAX_PASSWORD_CHARS,
                "{schema}.{field}"
            );
        }
    }
}
