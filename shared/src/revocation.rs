//! "Every session of this user ends now": logout everywhere and a password change.
//!
//! Access tokens are stateless JWTs, so revoking them means remembering, per user, the moment
//! before which their tokens no longer count: `{prefix}revoked:{<user>}` holds that Unix second
//! for as long as a refresh token could live. Auth refuses to refresh a token issued before it
//! (and deletes its session); the realtime hub refuses a handshake with such a token and, told
//! over the `{prefix}revocations` pub/sub channel (every replica listens: revocations are rare),
//! closes the user's live connections opened with one. Other services keep honouring an already
//! issued access token until it expires (15 minutes at most).
//!
//! Seconds are the token's own resolution (`iat`): a token issued in the same second as the
//! revocation still counts. That is what lets a password change revoke everything and hand out
//! a new session in one request.

use std::time::Duration;

use crate::redis_conn::RedisConnection;
use uuid::Uuid;

use crate::config::RedisSettings;

/// Per-user revocation times, and the channel that announces them. Cheap to clone.
#[derive(Clone)]
pub struct Revocations {
    redis: RedisConnection,
    keys: RedisSettings,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").finish_non_exhaustive()
    }
}

/// The pub/sub channel revocations are announced on: `<user> <unix seconds>`.
pub fn channel(keys: &RedisSettings) -> String {
    keys.key("revocations")
}

/// Parses an announcement from [`channel`].
pub fn parse_announcement(payload: &str) -> Option<(Uuid, i64)> {
    let (user, at) = payload.split_once(' ')?;
    Some((user.parse().ok()?, at.parse().ok()?))
}

impl Revocations {
    pub fn new(redis: RedisConnection, keys: RedisSettings) -> Self {
        Self { redis, keys }
    }

    fn key(&self, user: Uuid) -> String {
        self.keys.key(&format!("revoked:{{{user}}}"))
    }

    /// Tokens of `user` issued before `at` (Unix seconds) no longer count; remembered for
    /// `keep` (the refresh-token lifetime), and announced to the hub replicas.
    pub async fn revoke_all(&self, user: Uuid, at: i64, keep: Duration) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        redis::cmd("SET")
            .arg(self.key(user))
            .arg(at)
            .arg("EX")
            .arg(keep.as_secs().max(1))
            .exec_async(&mut redis)
            .await?;
        // Recorded first, then announced (two commands: on a cluster the key and the channel
        // live in different slots). `PUBLISH`, not the sharded kind: every replica must hear it.
        redis::cmd("PUBLISH")
            .arg(channel(&self.keys))
            .arg(format!("{user} {at}"))
            .exec_async(&mut redis)
            .await
    }

    /// The moment before which `user`'s tokens no longer count, if any.
    pub async fn revoked_before(&self, user: Uuid) -> redis::RedisResult<Option<i64>> {
        let mut redis = self.redis.clone();
        redis::cmd("GET")
            .arg(self.key(user))
            .query_async(&mut redis)
            .await
    }

    /// Whether a token of `user` issued at `issued_at` has been revoked.
    pub async fn is_revoked(&self, user: Uuid, issued_at: i64) -> redis::RedisResult<bool> {
        Ok(self
            .revoked_before(user)
            .await?
            .is_some_and(|at| issued_at < at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip() {
        let user = Uuid::now_v7();
        assert_eq!(
            parse_announcement(&format!("{user} 1764150000")),
            Some((user, 1_764_150_000))
        );
        assert_eq!(parse_announcement("garbage"), None);
    }
}
