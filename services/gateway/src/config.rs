//! Settings only the gateway reads, from the same environment as [`Settings`].
//!
//! They live here rather than in `shared::config` because no other part needs them; `build` reads
//! them from the process environment and tests pass them to `build_with` directly. Every variable
//! has a default that works locally (documented in `docs/gateway.md`).
//!
//! [`Settings`]: instaclone_shared::config::Settings

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use instaclone_shared::{
    client_address::ClientAddressPolicy,
    config::{ConfigError, Env},
};

/// Who may call the API from a browser (`CORS_ALLOWED_ORIGINS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No CORS headers: browsers only allow same-origin calls (unset or empty).
    Disabled,
    /// Any origin (`*`). Safe for this API: it uses bearer tokens, never cookies.
    Any,
    /// Exactly these origins (comma-separated list).
    List(Vec<HeaderValue>),
}

/// At most `requests` per `window` for one caller; `requests == 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
}

impl RateLimit {
    pub fn is_enabled(&self) -> bool {
        self.requests > 0 && !self.window.is_zero()
    }
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub cors: CorsOrigins,
    /// Per client address, on routes that need no token (register, login, refresh, docs).
    pub anonymous_limit: RateLimit,
    /// Per user, on every route that needs an access token.
    pub user_limit: RateLimit,
    /// How the client address is found: the TCP peer, or behind one of `GATEWAY_TRUSTED_PROXIES`
    /// the rightmost untrusted entry of `RATE_LIMIT_CLIENT_IP_HEADER` (`X-Forwarded-For` by
    /// default). A header is never believed from a peer that is not a trusted proxy.
    pub client_addresses: ClientAddressPolicy,
    /// How long a home-feed page stays cached per user; zero turns the cache off.
    pub feed_cache_ttl: Duration,
    /// Upstream connections kept idle per service, for reuse.
    pub pool_max_idle_per_service: usize,
    /// Where browsers reach the realtime hub (`PUBLIC_HUB_URL`), told to the web app; unset, it
    /// uses the page's host on port 3005.
    pub public_hub_url: Option<String>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        Self {
            cors: CorsOrigins::Disabled,
            anonymous_limit: RateLimit {
                requests: 60,
                window: minute,
            },
            user_limit: RateLimit {
                requests: 600,
                window: minute,
            },
            client_addresses: ClientAddressPolicy::default(),
            feed_cache_ttl: Duration::from_secs(10),
            pool_max_idle_per_service: 256,
            public_hub_url: None,
        }
    }
}

/// The proxies whose client-address header is believed, and that header's name. A header
/// without proxies to trust it from is refused: it used to be believed from anyone.
fn client_addresses<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<ClientAddressPolicy, ConfigError> {
    const HEADER: &str = "RATE_LIMIT_CLIENT_IP_HEADER";
    let policy = ClientAddressPolicy::new(env.networks("GATEWAY_TRUSTED_PROXIES")?);
    match env.optional(HEADER) {
        None => Ok(policy),
        Some(raw) if !policy.trusts_any() => Err(ConfigError::invalid(
            HEADER,
            raw,
            "set GATEWAY_TRUSTED_PROXIES to the proxies that write it",
        )),
        Some(_) => {
            Ok(policy.with_header(env.parse(HEADER, HeaderName::from_static("x-forwarded-for"))?))
        }
    }
}

impl GatewaySettings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup` (the shared [`Env`] reader); absent or empty values
    /// take their defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env::new(lookup);
        let defaults = Self::default();
        let window = env.seconds(
            "RATE_LIMIT_WINDOW_SECS",
            defaults.anonymous_limit.window.as_secs(),
        )?;
        let limit = |name: &'static str, default: RateLimit| -> Result<RateLimit, ConfigError> {
            Ok(RateLimit {
                requests: env.parse(name, default.requests)?,
                window,
            })
        };
        Ok(Self {
            cors: match env.optional("CORS_ALLOWED_ORIGINS") {
                None => CorsOrigins::Disabled,
                Some(v) => parse_origins(&v)?,
            },
            anonymous_limit: limit("RATE_LIMIT_ANONYMOUS", defaults.anonymous_limit)?,
            user_limit: limit("RATE_LIMIT_USER", defaults.user_limit)?,
            client_addresses: client_addresses(&env)?,
            feed_cache_ttl: env
                .seconds("FEED_CACHE_TTL_SECS", defaults.feed_cache_ttl.as_secs())?,
            public_hub_url: env
                .optional("PUBLIC_HUB_URL")
                .map(|url| url.trim().to_owned()),
            pool_max_idle_per_service: env
                .parse("GATEWAY_POOL_MAX_IDLE", defaults.pool_max_idle_per_service)?,
        })
    }
}

fn parse_origins(value: &str) -> Result<CorsOrigins, ConfigError> {
    if value.trim() == "*" {
        return Ok(CorsOrigins::Any);
    }
    let invalid = |reason: &str| ConfigError::invalid("CORS_ALLOWED_ORIGINS", value, reason);
    let mut origins = Vec::new();
    for origin in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let well_formed = (origin.starts_with("http://") || origin.starts_with("https://"))
            && !origin.ends_with('/');
        if !well_formed {
            return Err(invalid(
                "expected `*` or comma-separated origins like `https://app.example.com` \
                 (scheme, host, optional port, no trailing slash)",
            ));
        }
        origins.push(HeaderValue::from_str(origin).map_err(|e| invalid(&e.to_string()))?);
    }
    Ok(CorsOrigins::List(origins))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<GatewaySettings, ConfigError> {
        GatewaySettings::from_lookup(instaclone_shared::config::lookup_in(vars))
    }

    #[test]
    fn defaults_are_sane() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.cors, CorsOrigins::Disabled);
        assert_eq!(s.anonymous_limit.requests, 60);
        assert_eq!(s.user_limit.requests, 600);
        assert_eq!(s.user_limit.window, Duration::from_secs(60));
        assert!(!s.client_addresses.trusts_any());
    }

    #[test]
    fn a_client_address_header_needs_proxies_to_trust() {
        let err = settings(&[("RATE_LIMIT_CLIENT_IP_HEADER", "x-real-ip")]).unwrap_err();
        assert!(err.to_string().contains("GATEWAY_TRUSTED_PROXIES"), "{err}");
        let s = settings(&[
            ("RATE_LIMIT_CLIENT_IP_HEADER", "x-real-ip"),
            ("GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8"),
        ])
        .unwrap();
        assert!(s.client_addresses.trusts_any());
        assert!(settings(&[("GATEWAY_TRUSTED_PROXIES", "lb.internal")]).is_err());
    }

    #[test]
    fn origins_are_parsed_and_checked() {
        let s = settings(&[(
            "CORS_ALLOWED_ORIGINS",
            "https://a.example, http://localhost:5173",
        )])
        .unwrap();
        assert_eq!(
            s.cors,
            CorsOrigins::List(vec![
                HeaderValue::from_static("https://a.example"),
                HeaderValue::from_static("http://localhost:5173"),
            ])
        );
        assert_eq!(
            settings(&[("CORS_ALLOWED_ORIGINS", "*")]).unwrap().cors,
            CorsOrigins::Any
        );
        let err = settings(&[("CORS_ALLOWED_ORIGINS", "a.example/")]).unwrap_err();
        assert!(err.to_string().contains("CORS_ALLOWED_ORIGINS"), "{err}");
    }

    #[test]
    fn limits_share_the_window_and_zero_disables() {
        let s = settings(&[
            ("RATE_LIMIT_WINDOW_SECS", "10"),
            ("RATE_LIMIT_ANONYMOUS", "0"),
            ("RATE_LIMIT_USER", "5"),
        ])
        .unwrap();
        assert!(!s.anonymous_limit.is_enabled());
        assert_eq!(
            s.user_limit,
            RateLimit {
                requests: 5,
                window: Duration::from_secs(10)
            }
        );
        let err = settings(&[("RATE_LIMIT_USER", "lots")]).unwrap_err();
        assert!(err.to_string().contains("RATE_LIMIT_USER"), "{err}");
    }
}
