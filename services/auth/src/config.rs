//! The auth service's own settings, beyond the shared [`Settings`](instaclone_shared::config::Settings).
//!
//! Read from environment variables like the rest (every one has a default):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT` | 10 | failed logins per account per window before 429 |
//! | `AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS` | 30 | failed logins per client address per window |
//! | `AUTH_LOGIN_WINDOW_SECS` | 900 | the sliding window of both limits |
//! | `AUTH_TRUSTED_PROXIES` | `127.0.0.0/8,::1` | comma-separated addresses/CIDRs whose `X-Forwarded-For` is believed; `none` for none |
//! | `AUTH_MAX_CONCURRENT_HASHES` | CPU count | argon2 hashes running at once |

use instaclone_shared::{
    client_address::ClientAddressPolicy,
    config::{ConfigError, Env},
};
use ipnet::IpNet;

use crate::{
    password::Argon2Params,
    rate_limit::{Limit, LoginLimits},
};

#[derive(Debug, Clone)]
pub struct AuthOptions {
    pub argon2: Argon2Params,
    pub max_concurrent_hashes: usize,
    pub login_limits: LoginLimits,
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            argon2: Argon2Params::OWASP,
            max_concurrent_hashes: default_concurrent_hashes(),
            login_limits: LoginLimits::default(),
            trusted_proxies: default_trusted_proxies(),
        }
    }
}

/// Loopback: the gateway of the all-in-one binary (and of a single-host deployment) connects
/// from there, and appends the real client to `X-Forwarded-For`. Only a process on this host can
/// be a loopback peer, so no remote client can use this to pick its own address.
fn default_trusted_proxies() -> Vec<IpNet> {
    ClientAddressPolicy::parse_list("127.0.0.0/8, ::1").unwrap_or_default()
}

fn default_concurrent_hashes() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

impl AuthOptions {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup` (the shared [`Env`] reader); absent or empty ones take
    /// their defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env::new(lookup);
        let defaults = Self::default();
        const WINDOW: &str = "AUTH_LOGIN_WINDOW_SECS";
        let window = env.seconds(WINDOW, defaults.login_limits.per_account.window.as_secs())?;
        if window.is_zero() {
            return Err(ConfigError::invalid(WINDOW, "0", "must be at least 1"));
        }
        let limit = |name: &'static str, default: Limit| -> Result<Limit, ConfigError> {
            Ok(Limit {
                max_failures: env.parse(name, default.max_failures)?,
                window,
            })
        };
        let login_limits = LoginLimits {
            per_account: limit(
                "AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT",
                defaults.login_limits.per_account,
            )?,
            per_address: limit(
                "AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS",
                defaults.login_limits.per_address,
            )?,
        };
        let trusted_proxies = match env.optional("AUTH_TRUSTED_PROXIES") {
            None => defaults.trusted_proxies,
            Some(_) => env.networks("AUTH_TRUSTED_PROXIES")?,
        };
        Ok(Self {
            argon2: defaults.argon2,
            max_concurrent_hashes: env
                .parse("AUTH_MAX_CONCURRENT_HASHES", defaults.max_concurrent_hashes)?
                .max(1),
            login_limits,
            trusted_proxies,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn options(vars: &[(&str, &str)]) -> Result<AuthOptions, String> {
        AuthOptions::from_lookup(instaclone_shared::config::lookup_in(vars))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_without_variables() {
        let o = options(&[]).unwrap();
        assert_eq!(o.login_limits, LoginLimits::default());
        assert_eq!(o.trusted_proxies, default_trusted_proxies());
        let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert!(o.trusted_proxies[0].contains(&loopback));
        let none = options(&[("AUTH_TRUSTED_PROXIES", "none")]).unwrap();
        assert!(none.trusted_proxies.is_empty());
        assert_eq!(o.argon2, Argon2Params::OWASP);
    }

    #[test]
    fn variables_are_read_and_bad_ones_named() {
        let o = options(&[
            ("AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT", "3"),
            ("AUTH_LOGIN_WINDOW_SECS", "60"),
            ("AUTH_TRUSTED_PROXIES", "10.0.0.0/8"),
        ])
        .unwrap();
        assert_eq!(o.login_limits.per_account.max_failures, 3);
        assert_eq!(o.login_limits.per_address.window, Duration::from_secs(60));
        assert_eq!(o.trusted_proxies.len(), 1);
        let err = options(&[("AUTH_LOGIN_WINDOW_SECS", "soon")]).unwrap_err();
        assert!(err.contains("AUTH_LOGIN_WINDOW_SECS"), "{err}");
        let err = options(&[("AUTH_TRUSTED_PROXIES", "gateway")]).unwrap_err();
        assert!(err.contains("AUTH_TRUSTED_PROXIES"), "{err}");
    }
}
