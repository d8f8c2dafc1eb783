//! Forged, expired and unsigned tokens are refused by logout and refresh.

use base64::Engine;
use instaclone_shared::{
    auth::{Claims, TokenIssuer, TokenKind, generate_key_pair},
    config::Secret,
};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

/// An issuer with a key pair the service has never seen.
fn foreign_issuer(app: &TestApp) -> TokenIssuer {
    let keys = generate_key_pair().unwrap();
    let mut jwt = app.env.settings.jwt.clone();
    jwt.private_key_pem = Some(Secret::new(keys.private_key_pem));
    TokenIssuer::from_settings(&jwt).unwrap()
}

fn claims(kind: TokenKind, user: Uuid, session: Uuid, expires_in: i64) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: user,
        sid: session,
        jti: Uuid::now_v7(),
        typ: kind,
        iat: now - 60,
        exp: now + expires_in,
    }
}

/// `alg: none` with the signature stripped.
fn unsigned(claims: &Claims) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = engine.encode(serde_json::to_vec(claims).unwrap());
    format!("{header}.{payload}.")
}

/// The ids of a real session, so only the token's own flaw can be why it is refused.
async fn real_session(app: &TestApp) -> (Uuid, Uuid, String) {
    let data = app.registered("ada@example.com").await;
    let refresh = app.claims(&data["refreshToken"], TokenKind::Refresh);
    let token = data["refreshToken"].as_str().unwrap().to_owned();
    (refresh.sub, refresh.sid, token)
}

#[tokio::test]
async fn logout_rejects_forged_expired_and_unsigned_access_tokens() {
    let app = spawn_app().await;
    let (user, session, refresh_token) = real_session(&app).await;
    let valid = claims(TokenKind::Access, user, session, 600);

    let wrong_key = foreign_issuer(&app).sign(&valid).unwrap();
    let expired = app
        .env
        .issuer
        .sign(&claims(TokenKind::Access, user, session, -1))
        .unwrap();
    let none = unsigned(&valid);
    let refresh_as_access = refresh_token.clone();

    for (name, token, message) in [
        ("wrong key", wrong_key, "Invalid token"),
        ("expired", expired, "Token has expired"),
        ("alg none", none, "Invalid token"),
        ("refresh token", refresh_as_access, "Invalid token"),
    ] {
        let reply = app.logout(&token).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {}",
            reply.body
        );
        assert_eq!(reply.message(), message, "{name}");
    }
    let missing = app.post("/auth/logout").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);

    // None of them ended the session.
    assert!(app.session_exists(session).await);
    assert_eq!(app.refresh(&refresh_token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn refresh_rejects_forged_expired_and_unsigned_refresh_tokens() {
    let app = spawn_app().await;
    let (user, session, refresh_token) = real_session(&app).await;
    let valid = claims(TokenKind::Refresh, user, session, 600);

    let wrong_key = foreign_issuer(&app).sign(&valid).unwrap();
    let expired = app
        .env
        .issuer
        .sign(&claims(TokenKind::Refresh, user, session, -1))
        .unwrap();
    let none = unsigned(&valid);
    for (name, token) in [
        ("wrong key", wrong_key),
        ("expired", expired),
        ("alg none", none),
    ] {
        let reply = app.refresh(&token).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {}",
            reply.body
        );
    }

    // A tampered payload under the real signature is refused too.
    let mut parts: Vec<String> = refresh_token.split('.').map(str::to_owned).collect();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: serde_json::Value =
        serde_json::from_slice(&engine.decode(&parts[1]).unwrap()).unwrap();
    payload["sub"] = json!(Uuid::now_v7());
    parts[1] = engine.encode(serde_json::to_vec(&payload).unwrap());
    let tampered = app.refresh(&parts.join(".")).await;
    assert_eq!(tampered.status, StatusCode::UNAUTHORIZED);

    // Forged tokens never count as reuse: the real session is intact.
    assert!(app.session_exists(session).await);
    assert_eq!(app.refresh(&refresh_token).await.status, StatusCode::OK);
}
