//! Sessions (one per logged-in device) and refresh-token rotation, in Redis.
//!
//! # Token model
//!
//! - **Access token**: an EdDSA JWT (`typ: access`, 15 minutes) minted by
//!   [`TokenIssuer`](instaclone_shared::auth::TokenIssuer) and verified by every service with the
//!   public key alone. It carries the session id (`sid`).
//! - **Refresh token**: also an EdDSA JWT, `typ: refresh`, carrying `sub`, `sid` and a unique
//!   `jti`, valid for the refresh lifetime (7 days). A JWT rather than an opaque random string
//!   because (1) the signature makes it unforgeable, so the server stores no token material at
//!   all, only the `jti` it expects next — a Redis dump leaks nothing presentable; (2) `sid` in
//!   the token is what makes reuse detection work: a spent token still names its session, so
//!   presenting it can revoke that session, where an opaque token would need a lookup table of
//!   every spent token; (3) expiry and kind are checked before Redis is touched, and the shared
//!   verifier already rejects wrong keys, `alg: none` and access-for-refresh confusion. The cost
//!   is a longer token (~300 bytes), which no client minds.
//!
//! # Session record
//!
//! `{prefix}auth:session:{sid}` is a hash `{uid, jti, createdAt, rotatedAt}` whose TTL is the
//! refresh lifetime, renewed on each rotation: a device that refreshes at least once a week stays
//! logged in, one that does not is forgotten by Redis itself. Several devices are several
//! sessions and never interfere with each other.
//!
//! # Rotation and reuse detection
//!
//! Each refresh runs one Lua script (atomic in Redis): if the presented `jti` is the session's
//! current one, the session moves to the new token's `jti` and the refresh succeeds; if it is an
//! older one, the token was already spent — a copy is in someone else's hands — so the whole
//! session is deleted, which also kills the newest token of whoever refreshed first; if the
//! session is gone (logged out, revoked, expired), the refresh fails. Because the
//! compare-and-swap is one script, two concurrent refreshes with the same token cannot both
//! succeed: the second sees a spent `jti` and revokes the session. That is the strict behaviour
//! of the OAuth 2.0 Security BCP (no grace window): a client that double-fires a refresh is
//! logged out, which is the price of catching a stolen token on its first use.
//!
//! Access tokens stay stateless: after logout or revocation an already-issued access token keeps
//! working at other services until it expires (at most 15 minutes). Logout's guarantee is that
//! the session can no longer be refreshed.

use std::time::Duration;

use instaclone_shared::redis_conn::RedisConnection;
use instaclone_shared::{auth::Claims, config::RedisSettings};
use redis::Script;
use uuid::Uuid;

/// The current `jti` moves to the new one, or a spent `jti` deletes the session.
/// KEYS[1] session; ARGV: user id, presented jti, new jti, ttl seconds, now (unix seconds).
/// Returns 1 rotated, 0 reuse detected (session deleted), -1 no such session.
const ROTATE_SCRIPT: &str = r"
local session = redis.call('HMGET', KEYS[1], 'uid', 'jti')
if not session[1] or session[1] ~= ARGV[1] then
  return -1
end
if session[2] ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('HSET', KEYS[1], 'jti', ARGV[3], 'rotatedAt', ARGV[5])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
";

/// Deletes the session only if it belongs to the user. KEYS[1] session; ARGV[1] user id.
/// Returns 1 when a session was deleted.
const REVOKE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'uid') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What happened to a presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// It was the session's current token; the session now expects the new one.
    Rotated,
    /// It had been used before: the session is revoked.
    ReuseDetected,
    /// The session no longer exists (logged out, revoked or expired).
    NoSession,
}

/// The Redis side of sessions. Cheap to clone.
#[derive(Clone)]
pub struct SessionStore {
    redis: RedisConnection,
    keys: RedisSettings,
    ttl: Duration,
    rotate: Script,
    revoke: Script,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SessionStore {
    /// Sessions live `ttl` after their last refresh (the refresh-token lifetime).
    pub fn new(redis: RedisConnection, keys: RedisSettings, ttl: Duration) -> Self {
        Self {
            redis,
            keys,
            ttl,
            rotate: Script::new(ROTATE_SCRIPT),
            revoke: Script::new(REVOKE_SCRIPT),
        }
    }

    /// The Redis key of session `sid`.
    pub fn key(&self, sid: Uuid) -> String {
        self.keys.key(&format!("auth:session:{sid}"))
    }

    fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs().max(1)
    }

    /// Starts a session whose current refresh token has `refresh_jti`.
    pub async fn create(
        &self,
        user: Uuid,
        sid: Uuid,
        refresh_jti: Uuid,
    ) -> Result<(), redis::RedisError> {
        let now = chrono::Utc::now().timestamp();
        let key = self.key(sid);
        let mut redis = self.redis.clone();
        redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("uid", user.to_string()),
                    ("jti", refresh_jti.to_string()),
                    ("createdAt", now.to_string()),
                ],
            )
            .ignore()
            .expire(&key, i64::try_from(self.ttl_secs()).unwrap_or(i64::MAX))
            .ignore()
            .query_async::<()>(&mut redis)
            .await
    }

    /// Spends the refresh token described by `presented` and, if it was current, makes
    /// `new_jti` the session's next expected token.
    pub async fn rotate(
        &self,
        presented: &Claims,
        new_jti: Uuid,
    ) -> Result<Rotation, redis::RedisError> {
        let mut redis = self.redis.clone();
        let outcome: i64 = self
            .rotate
            .key(self.key(presented.sid))
            .arg(presented.sub.to_string())
            .arg(presented.jti.to_string())
            .arg(new_jti.to_string())
            .arg(self.ttl_secs())
            .arg(chrono::Utc::now().timestamp())
            .invoke_async(&mut redis)
            .await?;
        Ok(match outcome {
            1 => Rotation::Rotated,
            0 => Rotation::ReuseDetected,
            _ => Rotation::NoSession,
        })
    }

    /// Ends `user`'s session `sid`. Returns whether it existed.
    pub async fn revoke(&self, user: Uuid, sid: Uuid) -> Result<bool, redis::RedisError> {
        let mut redis = self.redis.clone();
        let deleted: i64 = self
            .revoke
            .key(self.key(sid))
            .arg(user.to_string())
            .invoke_async(&mut redis)
            .await?;
        Ok(deleted == 1)
    }

    /// Fails when the store cannot be reached: asked before an account is created, so that an
    /// outage already under way refuses the registration whole (503) instead of leaving an
    /// account without a session, which a repeated registration would find taken.
    pub async fn ensure_reachable(&self) -> Result<(), redis::RedisError> {
        let mut redis = self.redis.clone();
        redis::cmd("PING").query_async(&mut redis).await
    }

    /// Whether session `sid` exists (for tests and diagnostics).
    pub async fn exists(&self, sid: Uuid) -> Result<bool, redis::RedisError> {
        let mut redis = self.redis.clone();
        redis::cmd("EXISTS")
            .arg(self.key(sid))
            .query_async(&mut redis)
            .await
    }
}
