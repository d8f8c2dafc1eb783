//! Rate limiting in Redis, shared by every gateway replica.
//!
//! GCRA (the generic cell rate algorithm, a leaky bucket kept as one timestamp): each caller has
//! a "theoretical arrival time" in one Redis key; a request is allowed when it would not push
//! that time more than one window ahead of now. It allows a burst of the whole limit, then
//! spaces requests evenly, has no window-boundary double burst, and costs one key and one round
//! trip per request. The script reads the clock from Redis (`TIME`), so replicas with skewed
//! clocks still agree.
//!
//! When Redis is down or slow the limiter lets requests through (and logs): rate limiting
//! protects the services, it must not take the whole API down with it.

use std::time::Duration;

use instaclone_shared::client_address::limit_key;
use instaclone_shared::redis_conn::RedisConnection;
use redis::Script;

use crate::config::RateLimit;

/// How long a rate-limit check may take before the request is let through unchecked.
const CHECK_TIMEOUT: Duration = Duration::from_millis(250);

const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allowed_at = new_tat - window
if allowed_at > now then
  return {0, math.ceil(allowed_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, 0}
";

/// Whose budget a request spends.
#[derive(Debug, Clone)]
pub enum Subject {
    User(uuid::Uuid),
    Address(std::net::IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Limited { retry_after: Duration },
}

#[derive(Clone)]
pub struct RateLimiter {
    redis: RedisConnection,
    script: Script,
    key_prefix: String,
}

impl RateLimiter {
    /// `key_prefix` is the deployment's Redis prefix plus the limiter's namespace.
    pub fn new(redis: RedisConnection, key_prefix: String) -> Self {
        Self {
            redis,
            script: Script::new(GCRA),
            key_prefix,
        }
    }

    /// Spends one request of `subject`'s budget under `limit`.
    pub async fn check(&self, subject: &Subject, limit: RateLimit) -> Decision {
        if !limit.is_enabled() {
            return Decision::Allowed;
        }
        let key = match subject {
            Subject::User(id) => format!("{}user:{id}", self.key_prefix),
            Subject::Address(ip) => format!("{}ip:{}", self.key_prefix, limit_key(*ip)),
        };
        let window_us = u64::try_from(limit.window.as_micros()).unwrap_or(u64::MAX / 2);
        let interval_us = (window_us / u64::from(limit.requests)).max(1);
        let mut redis = self.redis.clone();
        let mut invocation = self.script.key(&key);
        invocation.arg(interval_us).arg(window_us);
        let call = invocation.invoke_async::<(i64, i64)>(&mut redis);
        match tokio::time::timeout(CHECK_TIMEOUT, call).await {
            Ok(Ok((1, _))) => Decision::Allowed,
            Ok(Ok((_, wait_us))) => Decision::Limited {
                retry_after: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
            },
            Ok(Err(error)) => {
                tracing::warn!(%error, "rate limit check failed; letting the request through");
                Decision::Allowed
            }
            Err(_) => {
                tracing::warn!("rate limit check timed out; letting the request through");
                Decision::Allowed
            }
        }
    }
}
