//! Access tokens (EdDSA JWTs) and the credentials services check on every request.
//!
//! Only the auth service holds the private key and mints tokens ([`TokenIssuer`]); every other
//! part verifies with the public key ([`TokenVerifier`]), so a compromised service cannot forge
//! identities. Handlers take [`AuthUser`] as an argument to require a valid access token, and
//! internal routes take [`InternalCaller`] to require the service credential.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderMap, header::AUTHORIZATION, request::Parts},
};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    config::{JwtSettings, Secret},
    http::ApiError,
};

/// Header carrying the service credential on `/internal/*` routes.
pub const INTERNAL_TOKEN_HEADER: &str = "x-internal-token";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no JWT public key configured (set JWT_PUBLIC_KEY_FILE or JWT_PUBLIC_KEY)")]
    MissingPublicKey,
    #[error("no JWT private key configured (set JWT_PRIVATE_KEY_FILE or JWT_PRIVATE_KEY)")]
    MissingPrivateKey,
    #[error("invalid JWT key: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("cannot generate a key pair")]
    Generate,
    /// The service credential is not configured; the text says why the part needs it.
    #[error("INTERNAL_TOKEN is not set; {0}")]
    MissingInternalToken(String),
}

/// What a token is for: an access token is refused where a refresh token is expected and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Access,
    Refresh,
}

/// The claims Instaclone puts in its tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user's id.
    pub sub: Uuid,
    /// The session (one per logged-in device).
    pub sid: Uuid,
    /// Unique token id; refresh-token rotation keys on it.
    pub jti: Uuid,
    pub typ: TokenKind,
    pub iat: i64,
    pub exp: i64,
}

/// An Ed25519 key pair in PEM form, as the config expects it.
pub struct GeneratedKeyPair {
    pub private_key_pem: String,
    pub public_key_pem: String,
}

/// Makes a fresh Ed25519 key pair (for `instaclone keygen`, the all-in-one binary without
/// configured keys, and tests).
pub fn generate_key_pair() -> Result<GeneratedKeyPair, KeyError> {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| KeyError::Generate)?;
    // SubjectPublicKeyInfo for Ed25519 is a fixed 12-byte prefix followed by the 32-byte key.
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    Ok(GeneratedKeyPair {
        private_key_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
        public_key_pem: pem("PUBLIC KEY", &spki),
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Checks signatures, expiry and token kind. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    key: DecodingKey,
    validation: Validation,
    /// Access tokens whose signature was checked, with their claims: a client sends the same
    /// token with every request for its whole life (15 minutes), and checking an Ed25519
    /// signature costs more than the rest of a typical request's CPU here. Expiry is checked on
    /// every use; the cache is bounded and starts afresh when full. Keyed by the token's
    /// SHA-256, a tenth of the token's own size.
    verified: RwLock<HashMap<TokenDigest, Claims>>,
}

type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    let mut out = [0_u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// Verified access tokens remembered at most (about 100 bytes each).
const VERIFIED_CACHE_MAX: usize = 16_384;

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token has expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("wrong kind of token")]
    WrongKind,
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        ApiError::unauthorized(match error {
            TokenError::Expired => "Token has expired",
            TokenError::Invalid | TokenError::WrongKind => "Invalid token",
        })
    }
}

impl TokenVerifier {
    pub fn from_settings(settings: &JwtSettings) -> Result<Self, KeyError> {
        let pem = settings
            .public_key_pem
            .as_deref()
            .ok_or(KeyError::MissingPublicKey)?;
        Self::from_public_pem(pem)
    }

    pub fn from_public_pem(pem: &str) -> Result<Self, KeyError> {
        let key = DecodingKey::from_ed_pem(pem.as_bytes())?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Services of one deployment share a clock closely enough; expiry means expiry.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            inner: Arc::new(VerifierInner {
                key,
                validation,
                verified: RwLock::new(HashMap::new()),
            }),
        })
    }

    /// Verifies `token` and that it is of `kind`.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, TokenError> {
        let key = (kind == TokenKind::Access).then(|| digest(token));
        if let Some(claims) = key.as_ref().and_then(|key| self.remembered(key)) {
            // Exactly the check `decode` makes (leeway 0).
            if claims.exp < chrono::Utc::now().timestamp() {
                return Err(TokenError::Expired);
            }
            return Ok(claims);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.inner.key, &self.inner.validation)
            .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })?;
        if data.claims.typ != kind {
            return Err(TokenError::WrongKind);
        }
        if let Some(key) = key {
            self.remember(key, &data.claims);
        }
        Ok(data.claims)
    }

    fn remembered(&self, key: &TokenDigest) -> Option<Claims> {
        let verified = self
            .inner
            .verified
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        verified.get(key).cloned()
    }

    fn remember(&self, key: TokenDigest, claims: &Claims) {
        let mut verified = self
            .inner
            .verified
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified.len() >= VERIFIED_CACHE_MAX {
            verified.clear();
        }
        verified.insert(key, claims.clone());
    }
}

/// Mints tokens. Only the auth service (and tests) construct one.
#[derive(Clone)]
pub struct TokenIssuer {
    key: Arc<EncodingKey>,
    access_ttl: std::time::Duration,
    refresh_ttl: std::time::Duration,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenIssuer")
    }
}

impl TokenIssuer {
    pub fn from_settings(settings: &JwtSettings) -> Result<Self, KeyError> {
        let pem = settings
            .private_key_pem
            .as_ref()
            .ok_or(KeyError::MissingPrivateKey)?;
        Ok(Self {
            key: Arc::new(EncodingKey::from_ed_pem(pem.expose().as_bytes())?),
            access_ttl: settings.access_ttl,
            refresh_ttl: settings.refresh_ttl,
        })
    }

    pub fn access_ttl(&self) -> std::time::Duration {
        self.access_ttl
    }

    pub fn refresh_ttl(&self) -> std::time::Duration {
        self.refresh_ttl
    }

    /// Signs a token of `kind` for `user` in `session`, valid for the configured lifetime.
    pub fn issue(
        &self,
        user: Uuid,
        session: Uuid,
        kind: TokenKind,
    ) -> Result<(String, Claims), KeyError> {
        let ttl = match kind {
            TokenKind::Access => self.access_ttl,
            TokenKind::Refresh => self.refresh_ttl,
        };
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user,
            sid: session,
            jti: Uuid::now_v7(),
            typ: kind,
            iat: now,
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        };
        self.sign(&claims).map(|token| (token, claims))
    }

    /// Signs arbitrary claims (tests use it for expired tokens).
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            claims,
            &self.key,
        )?)
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The caller, proven by a valid access token in `Authorization: Bearer`.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub session_id: Uuid,
    /// Unix time at which the token stops being valid.
    pub expires_at: i64,
    /// Unix time at which the token was issued.
    pub issued_at: i64,
}

impl<S> FromRequestParts<S> for AuthUser
where
    TokenVerifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)
            .ok_or_else(|| ApiError::unauthorized("Missing bearer token"))?;
        let claims = TokenVerifier::from_ref(state).verify(token, TokenKind::Access)?;
        Ok(Self {
            id: claims.sub,
            session_id: claims.sid,
            expires_at: claims.exp,
            issued_at: claims.iat,
        })
    }
}

/// The service-to-service credential.
#[derive(Clone)]
pub struct InternalToken(Arc<Secret<String>>);

impl InternalToken {
    pub fn new(token: Secret<String>) -> Self {
        Self(Arc::new(token))
    }

    /// The configured credential; `needed_for` says in the startup error why a part needs it.
    pub fn from_settings(
        settings: &crate::config::InternalSettings,
        needed_for: &str,
    ) -> Result<Self, KeyError> {
        settings
            .token
            .clone()
            .map(Self::new)
            .ok_or_else(|| KeyError::MissingInternalToken(needed_for.to_owned()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// Whether `presented` is this credential (compared in constant time).
    pub fn matches(&self, presented: &str) -> bool {
        let expected = self.0.expose().as_bytes();
        let presented = presented.as_bytes();
        // Constant time in the content, so the credential cannot be guessed byte by byte.
        expected.len() == presented.len()
            && expected
                .iter()
                .zip(presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for InternalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalToken([redacted])")
    }
}

/// Proof that the caller is another Instaclone service.
#[derive(Debug, Clone, Copy)]
pub struct InternalCaller;

impl<S> FromRequestParts<S> for InternalCaller
where
    InternalToken: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(INTERNAL_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if InternalToken::from_ref(state).matches(presented) {
            Ok(Self)
        } else {
            Err(ApiError::unauthorized(
                "Missing or invalid service credential",
            ))
        }
    }
}

/// A random credential, for the all-in-one binary and tests.
pub fn generate_internal_token() -> Secret<String> {
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().r#gen();
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(pair: &GeneratedKeyPair) -> JwtSettings {
        JwtSettings {
            private_key_pem: Some(Secret::new(pair.private_key_pem.clone())),
            public_key_pem: Some(pair.public_key_pem.clone()),
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn issued_tokens_verify_with_the_matching_public_key() {
        let pair = generate_key_pair().unwrap();
        let issuer = TokenIssuer::from_settings(&settings(&pair)).unwrap();
        let verifier = TokenVerifier::from_settings(&settings(&pair)).unwrap();
        let user = Uuid::now_v7();
        let (token, _) = issuer
            .issue(user, Uuid::now_v7(), TokenKind::Access)
            .unwrap();
        let claims = verifier.verify(&token, TokenKind::Access).unwrap();
        assert_eq!(claims.sub, user);
        assert!(matches!(
            verifier.verify(&token, TokenKind::Refresh),
            Err(TokenError::WrongKind)
        ));
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_tampered_one_is_checked_afresh() {
        let pair = generate_key_pair().unwrap();
        let issuer = TokenIssuer::from_settings(&settings(&pair)).unwrap();
        let verifier = TokenVerifier::from_settings(&settings(&pair)).unwrap();
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::now_v7(),
            sid: Uuid::now_v7(),
            jti: Uuid::now_v7(),
            typ: TokenKind::Access,
            iat: now,
            exp: now + 1,
        };
        let token = issuer.sign(&claims).unwrap();
        assert_eq!(verifier.verify(&token, TokenKind::Access).unwrap(), claims);
        assert_eq!(verifier.verify(&token, TokenKind::Access).unwrap(), claims);
        // Same header and claims, another signature: not the remembered token.
        let (signed, _) = token.rsplit_once('.').unwrap();
        let tampered = format!("{signed}.{}", "A".repeat(86));
        assert!(matches!(
            verifier.verify(&tampered, TokenKind::Access),
            Err(TokenError::Invalid)
        ));
        std::thread::sleep(Duration::from_millis(2100));
        assert!(matches!(
            verifier.verify(&token, TokenKind::Access),
            Err(TokenError::Expired)
        ));
    }

    #[test]
    fn a_token_signed_by_another_key_is_rejected() {
        let ours = generate_key_pair().unwrap();
        let theirs = generate_key_pair().unwrap();
        let forger = TokenIssuer::from_settings(&settings(&theirs)).unwrap();
        let verifier = TokenVerifier::from_settings(&settings(&ours)).unwrap();
        let (token, _) = forger
            .issue(Uuid::now_v7(), Uuid::now_v7(), TokenKind::Access)
            .unwrap();
        assert!(matches!(
            verifier.verify(&token, TokenKind::Access),
            Err(TokenError::Invalid)
        ));
    }

    #[test]
    fn expired_and_unsigned_tokens_are_rejected() {
        let pair = generate_key_pair().unwrap();
        let issuer = TokenIssuer::from_settings(&settings(&pair)).unwrap();
        let verifier = TokenVerifier::from_settings(&settings(&pair)).unwrap();
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::now_v7(),
            sid: Uuid::now_v7(),
            jti: Uuid::now_v7(),
            typ: TokenKind::Access,
            iat: now - 100,
            exp: now - 1,
        };
        let expired = issuer.sign(&claims).unwrap();
        assert!(matches!(
            verifier.verify(&expired, TokenKind::Access),
            Err(TokenError::Expired)
        ));

        // `alg: none` with the signature stripped.
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let mut fresh = claims;
        fresh.exp = now + 600;
        let payload = engine.encode(serde_json::to_vec(&fresh).unwrap());
        let unsigned = format!("{header}.{payload}.");
        assert!(matches!(
            verifier.verify(&unsigned, TokenKind::Access),
            Err(TokenError::Invalid)
        ));
    }

    #[test]
    fn bearer_token_parsing() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
        headers.insert(AUTHORIZATION, "bearer ".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
    }

    #[test]
    fn internal_token_comparison() {
        let token = InternalToken::new(Secret::new("s3cret".to_owned()));
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cres"));
        assert!(!token.matches(""));
        assert!(!token.matches("s3cret-and-more"));
    }
}
