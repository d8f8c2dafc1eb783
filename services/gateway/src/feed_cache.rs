//! The home feed, cached per user in Redis for a few seconds.
//!
//! The feed is the hottest read and the most expensive one (a fan-in over everyone the caller
//! follows). Each user's pages live in one Redis hash, `feedcache:<user id>`, one field per query
//! string, so a user's whole cache is dropped with one `DEL`. Keys carry the user id taken from
//! the verified access token, so one user's feed can never be served to another.
//!
//! Freshness: entries are stamped and ignored once older than the TTL (Redis 7.0 has no
//! per-field expiry). The hash itself expires one TTL after its *first* write (`PEXPIRE … NX`:
//! later writes never extend it), so no entry outlives two TTLs however often the user reads.
//! Size: a user holds at most [`MAX_ENTRIES_PER_USER`] pages; a write of a new page beyond that
//! starts the user's hash afresh, so cycling through distinct query strings costs at most that
//! many entries of at most [`MAX_CACHED_BODY`] each, for at most one TTL. The caller's own writes
//! that change their feed (post, delete, follow, unfollow) drop their entries before the write's
//! response is returned, so a user always sees their own changes. A new or deleted post drops the
//! cached feeds of the author's followers when its event arrives (`crate::feed_invalidation`);
//! the TTL bounds whatever slips between the two.
//!
//! Redis trouble never fails a request: reads fall through to the posts service, writes are
//! skipped, both with a log line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use instaclone_shared::redis_conn::RedisConnection;
use redis::Script;
use uuid::Uuid;

/// How long a cache read may take before the request goes to the service instead.
const CACHE_TIMEOUT: Duration = Duration::from_millis(250);
/// Query strings longer than this are not cached (they are not what clients send).
const MAX_CACHED_QUERY_LEN: usize = 256;
/// Responses larger than this are not cached.
pub const MAX_CACHED_BODY: usize = 512 * 1024;
/// Distinct pages (query strings) cached per user at most.
pub const MAX_ENTRIES_PER_USER: usize = 8;

/// KEYS[1] the user's hash; ARGV[1] field (query), ARGV[2] stamped body, ARGV[3] max entries,
/// ARGV[4] TTL ms. A new field beyond the cap replaces the whole hash; the expiry is set only
/// when the hash has none, so writes never extend it.
const PUT_SCRIPT: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
   and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
";

#[derive(Clone)]
pub struct FeedCache {
    redis: RedisConnection,
    key_prefix: String,
    ttl: Duration,
    put: std::sync::Arc<Script>,
}

impl FeedCache {
    pub fn new(redis: RedisConnection, key_prefix: String, ttl: Duration) -> Self {
        Self {
            redis,
            key_prefix,
            ttl,
            put: std::sync::Arc::new(Script::new(PUT_SCRIPT)),
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
        let mut invocation = self.put.key(&key);
        invocation
            .arg(query)
            .arg(value)
            .arg(MAX_ENTRIES_PER_USER)
            .arg(ttl_ms);
        let write = invocation.invoke_async::<i64>(&mut redis);
        match tokio::time::timeout(CACHE_TIMEOUT, write).await {
            Ok(Ok(_)) => {}
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
