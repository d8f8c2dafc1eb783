//! Login rate limiting against password guessing, per account and per client address.
//!
//! # Algorithm: sliding-window log of failed attempts
//!
//! Each limited subject (an account, a client address) has a Redis sorted set of its recent
//! attempts, scored by time (Redis's own clock, so every auth replica agrees). A login is
//! admitted only if, in both sets, fewer than `max_failures` attempts fall inside the window;
//! otherwise it is answered 429 with `Retry-After` = the time until the oldest counted attempt
//! leaves the window. A sliding log rather than a fixed window because a fixed window lets an
//! attacker spend twice the budget around a window boundary, and the log gives an exact
//! `Retry-After`. The sets hold at most `max_failures` members each, so memory stays tiny.
//!
//! Admission **reserves** the attempt: the check and the insert are one Lua script, so a
//! thousand concurrent guesses cannot all pass the check before any failure is counted. A
//! login that then succeeds removes its reservation (successes do not count against anyone);
//! a failed one leaves it there as a counted failure. While an account is limited, even the
//! correct password gets 429 — otherwise the limit would be an oracle telling a guesser which
//! guess was right.
//!
//! Limits (defaults, see [`LoginLimits`]): 10 failures per account and 30 per client address in
//! 15 minutes. The per-account limit is what stops guessing one victim's password from many
//! addresses; the per-address limit stops one client from spraying guesses over many accounts.
//! The per-account limit also lets a stranger lock an account for up to 15 minutes by failing
//! on purpose — the usual trade-off, kept mild by a short window and no permanent lockout.
//! IPv6 clients are limited per /64, the block a single subscriber usually holds.
//!
//! Keys: `{prefix}auth:login:account:{sha256(lowercased email)}` (no addresses in clear text in
//! Redis) and `{prefix}auth:login:address:{ip or v6 /64}`, each expiring one window after its
//! last attempt.

use std::{net::IpAddr, time::Duration};

use instaclone_shared::redis_conn::RedisConnection;
use instaclone_shared::{client_address::limit_key, config::RedisSettings};
use redis::Script;
use uuid::Uuid;

use crate::domain::Email;

/// Checks each subject and, if all are under their limit, records the attempt in each.
/// KEYS: the subjects' sets (account, address). ARGV[1] attempt id, then per key its max and
/// window ms. Returns 0 when admitted, else the milliseconds until an attempt would be admitted.
/// On a Redis Cluster the two sets live in different slots, so it runs once per subject (see
/// [`LoginRateLimiter::admit`]).
const ADMIT_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local wait = 0
for i = 1, #KEYS do
  local max = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  if count >= max then
    -- Admitted again once enough of the oldest attempts have left the window.
    local oldest = redis.call('ZRANGE', KEYS[i], count - max, count - max, 'WITHSCORES')
    local until_free = tonumber(oldest[2]) + window - now
    if until_free > wait then
      wait = until_free
    end
  end
end
if wait > 0 then
  return wait
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 * i + 1]))
end
return 0
";

/// How many failed logins a subject may have within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max_failures: u32,
    pub window: Duration,
}

/// The two limits a login must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub per_account: Limit,
    pub per_address: Limit,
}

impl Default for LoginLimits {
    fn default() -> Self {
        let window = Duration::from_secs(15 * 60);
        Self {
            per_account: Limit {
                max_failures: 10,
                window,
            },
            per_address: Limit {
                max_failures: 30,
                window,
            },
        }
    }
}

/// A login attempt that was let through. Report success with
/// [`LoginRateLimiter::succeeded`]; a dropped ticket stays counted as a failure.
#[derive(Debug)]
pub struct AttemptTicket {
    keys: [String; 2],
    id: String,
}

/// Whether a login may be tried now.
#[derive(Debug)]
pub enum Admission {
    Admitted(AttemptTicket),
    /// Too many recent failures; try again after this long.
    Limited {
        retry_after: Duration,
    },
}

/// Cheap to clone.
#[derive(Clone)]
pub struct LoginRateLimiter {
    redis: RedisConnection,
    keys: RedisSettings,
    limits: LoginLimits,
    admit: Script,
}

impl std::fmt::Debug for LoginRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRateLimiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl LoginRateLimiter {
    pub fn new(redis: RedisConnection, keys: RedisSettings, limits: LoginLimits) -> Self {
        Self {
            redis,
            keys,
            limits,
            admit: Script::new(ADMIT_SCRIPT),
        }
    }

    pub fn limits(&self) -> LoginLimits {
        self.limits
    }

    /// Admits (and reserves) one login attempt for `email` from `address`, or says how long to
    /// wait.
    pub async fn admit(
        &self,
        email: &Email,
        address: IpAddr,
    ) -> Result<Admission, redis::RedisError> {
        let keys = [
            self.keys
                .key(&format!("auth:login:account:{}", account_digest(email))),
            self.keys
                .key(&format!("auth:login:address:{}", limit_key(address))),
        ];
        let id = Uuid::new_v4().simple().to_string();
        let limits = [self.limits.per_account, self.limits.per_address];
        let wait_ms = if self.redis.is_cluster() {
            self.admit_one_subject_at_a_time(&keys, &id, &limits)
                .await?
        } else {
            self.try_admit(&keys, &id, &limits).await?
        };
        Ok(if wait_ms == 0 {
            Admission::Admitted(AttemptTicket { keys, id })
        } else {
            Admission::Limited {
                retry_after: Duration::from_millis(wait_ms),
            }
        })
    }

    /// On a cluster, where the two sets live in different slots: the address first (the subject
    /// an attacker controls, so a blocked address reserves nothing on the account), then the
    /// account; an attempt admitted for the address but refused for the account, or whose
    /// account check failed, is taken back from the address.
    async fn admit_one_subject_at_a_time(
        &self,
        keys: &[String; 2],
        id: &str,
        limits: &[Limit; 2],
    ) -> Result<u64, redis::RedisError> {
        let wait_ms = self.try_admit(&keys[1..], id, &limits[1..]).await?;
        if wait_ms > 0 {
            return Ok(wait_ms);
        }
        let account = self.try_admit(&keys[..1], id, &limits[..1]).await;
        if !matches!(account, Ok(0)) {
            self.release(&keys[1..], id).await?;
        }
        account
    }

    /// One run of the admit script over `keys` with their `limits`.
    async fn try_admit(
        &self,
        keys: &[String],
        id: &str,
        limits: &[Limit],
    ) -> Result<u64, redis::RedisError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut call = self.admit.prepare_invoke();
        call.arg(id);
        for (key, limit) in keys.iter().zip(limits) {
            call.key(key)
                .arg(limit.max_failures)
                .arg(millis(limit.window));
        }
        call.invoke_async(&mut self.redis.clone()).await
    }

    /// Takes attempt `id` out of `keys` (a pipeline per slot).
    async fn release(&self, keys: &[String], id: &str) -> Result<(), redis::RedisError> {
        let batches = self
            .redis
            .batch_by_slot(keys.iter().collect(), usize::MAX, |key| (*key).clone());
        self.redis
            .run_batches(batches, |mut redis, batch| {
                let mut pipe = redis::pipe();
                for key in batch {
                    pipe.zrem(key, id).ignore();
                }
                async move { pipe.exec_async(&mut redis).await }
            })
            .await
            .into_result()
            .map(drop)
    }

    /// The attempt succeeded: it no longer counts against the account or the address.
    pub async fn succeeded(&self, ticket: AttemptTicket) -> Result<(), redis::RedisError> {
        self.release(&ticket.keys, &ticket.id).await
    }
}

/// Whole seconds a client should wait, rounded up and at least 1 (the `Retry-After` value).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

fn account_digest(email: &Email) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, email.canonical().as_bytes());
    digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(900)), 900);
    }

    #[test]
    fn account_keys_ignore_case_and_hide_the_address() {
        let lower = account_digest(&Email::parse("ada@example.com").unwrap());
        let upper = account_digest(&Email::parse("ADA@Example.com").unwrap());
        assert_eq!(lower, upper);
        assert_eq!(lower.len(), 64);
        assert!(!lower.contains("ada"));
    }
}
