//! The home feed, cached per user in Redis for a few seconds.
//!
//! The feed is the hottest read and the most expensive one (a fan-in over everyone the caller
//! follows). Each user's pages live in one Redis hash, `feedcache:<user id>`, one field per query
//! string, so a user's whole cache is dropped with one `DEL`. Keys carry the user id taken from
//! the verified access token, so one user's feed can never be served to another.
//!
//! Freshness: entries are stamped and ignored once older than the TTL (Redis 7.0 has no
//! per-field expiry; the hash itself expires a TTL after its last write). The caller's own writes
//! that change their feed (post, delete, follow, unfollow) drop their entries before the write's
//! response is returned, so a user always sees their own changes. A new or deleted post drops the
//! cached feeds of the author's followers when its event arrives (`crate::feed_invalidation`);
//! the TTL bounds whatever slips between the two.
//!
//! Redis trouble never fails a request: reads fall through to the posts service, writes are
//! skipped, both with a log line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use redis::aio::ConnectionManager;
use uuid::Uuid;

/// How long a cache read may take before the request goes to the service instead.
const CACHE_TIMEOUT: Duration = Duration::from_millis(250);
/// Query strings longer than this are not cached (they are not what clients send).
const MAX_CACHED_QUERY_LEN: usize = 256;
/// Responses larger than this are not cached.
pub const MAX_CACHED_BODY: usize = 512 * 1024;

#[derive(Clone)]
pub struct FeedCache {
    redis: ConnectionManager,
    key_prefix: String,
    ttl: Duration,
}

impl FeedCache {
    pub fn new(redis: ConnectionManager, key_prefix: String, ttl: Duration) -> Self {
        Self {
            redis,
            key_prefix,
            ttl,
        }
    }

    fn key(&self, user: Uuid) -> String {
        format!("{}{user}", self.key_prefix)
    }

    /// Whether a page for this query string may be cached at all.
    pub fn accepts(query: &str) -> bool {
        query.len() <= MAX_CACHED_QUERY_LEN
    }

    /// The cached body of `user`'s feed page for `query`, when fresh.
    pub async fn get(&self, user: Uuid, query: &str) -> Option<Bytes> {
        let mut redis = self.redis.clone();
        let mut command = redis::cmd("HGET");
        command.arg(self.key(user)).arg(query);
        let read = command.query_async::<Option<Vec<u8>>>(&mut redis);
        let stored = match tokio::time::timeout(CACHE_TIMEOUT, read).await {
            Ok(Ok(stored)) => stored?,
            Ok(Err(error)) => {
                tracing::warn!(%error, "feed cache read failed");
                return None;
            }
            Err(_) => {
                tracing::warn!("feed cache read timed out");
                return None;
            }
        };
        let (stamp, body) = split_stamp(&stored)?;
        let age = now_millis().saturating_sub(stamp);
        (u128::from(age) < self.ttl.as_millis()).then(|| Bytes::copy_from_slice(body))
    }

    /// Stores `body` as `user`'s feed page for `query`.
    pub async fn put(&self, user: Uuid, query: &str, body: &[u8]) {
        let mut value = now_millis().to_be_bytes().to_vec();
        value.extend_from_slice(body);
        let key = self.key(user);
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut redis = self.redis.clone();
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("HSET")
            .arg(&key)
            .arg(query)
            .arg(value)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .ignore();
        let write = pipeline.query_async::<()>(&mut redis);
        match tokio::time::timeout(CACHE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "feed cache write failed"),
            Err(_) => tracing::warn!("feed cache write timed out"),
        }
    }

    /// Drops every cached page of each of `users`; failures are logged.
    pub async fn invalidate(&self, users: &[Uuid]) {
        if let Err(error) = self.try_invalidate(users).await {
            tracing::warn!(%error, "feed cache invalidation failed");
        }
    }

    /// Drops every cached page of each of `users`.
    pub async fn try_invalidate(&self, users: &[Uuid]) -> Result<(), String> {
        if users.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = users.iter().map(|u| self.key(*u)).collect();
        let mut redis = self.redis.clone();
        let mut command = redis::cmd("DEL");
        command.arg(keys);
        let delete = command.query_async::<i64>(&mut redis);
        match tokio::time::timeout(CACHE_TIMEOUT, delete).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("Redis timed out".to_owned()),
        }
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn split_stamp(stored: &[u8]) -> Option<(u64, &[u8])> {
    let (stamp, body) = stored.split_at_checked(8)?;
    Some((u64::from_be_bytes(stamp.try_into().ok()?), body))
}
