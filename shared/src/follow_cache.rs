//! The follow sets in Redis: for each user, the ids of the accounts they follow, so a home feed
//! read checks "does the reader follow this author?" without asking the users service.
//!
//! The users service owns the follow graph (PostgreSQL); this is a cache of it, filled by
//! whoever reads it (the posts service) and invalidated by whoever changes it (the users service,
//! right after each follow or unfollow commits, and again by consumers of `user.followed` /
//! `user.unfollowed` should that first invalidation have failed). The usual cache-aside race (a
//! reader loads the old list, the writer invalidates, the reader then stores the old list) is
//! closed with a generation counter per user:
//!
//! 1. the loader reads the generation, *then* reads the list from the users service;
//! 2. the writer commits, *then* increments the generation and deletes the set;
//! 3. the loader stores its list only if the generation is still the one it read (one script).
//!
//! If the writer's increment came before the loader's read of the generation, the commit came
//! before it too, so the list read afterwards is current; if it came after, the store is refused.
//! Either way no unfollow is undone by a stale load, and an unfollow is effective on the next
//! read.
//!
//! Keys (under the deployment prefix, `{user}` a cluster hash tag so they share a slot with the
//! user's home timeline): `follows:set:{<user>}`, a set of followed ids plus the member
//! [`COMPLETE`] (so that following nobody is distinguishable from "not cached"), expiring after
//! the idle TTL; and `follows:gen:{<user>}`, the generation.

use std::time::Duration;

use redis::Script;

use crate::redis_conn::RedisConnection;
use uuid::Uuid;

use crate::config::RedisSettings;

/// The member marking a set as loaded (not a UUID, so it never collides with an id).
pub const COMPLETE: &str = "~";
/// How long a generation counter outlives its last change: longer than any load takes.
const GENERATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// Stores a loaded set unless the generation moved. KEYS: set, generation. ARGV: generation read
/// before loading ('' when there was none), ttl ms, then the ids. Returns 1 if stored.
const STORE_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[2]) or ''
if current ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SADD', KEYS[1], '~')
for i = 3, #ARGV, 1000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// The follow sets of every user. Cheap to clone.
#[derive(Clone)]
pub struct FollowCache {
    redis: RedisConnection,
    settings: RedisSettings,
    ttl: Duration,
    store: Script,
}

impl std::fmt::Debug for FollowCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowCache")
            .field("prefix", &self.settings.key_prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A generation read before loading a set (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation(String);

impl FollowCache {
    /// Sets are dropped `ttl` after they were last stored or read.
    pub fn new(redis: RedisConnection, settings: RedisSettings, ttl: Duration) -> Self {
        Self {
            redis,
            settings,
            ttl,
            store: Script::new(STORE_SCRIPT),
        }
    }

    /// The key of `user`'s follow set (for scripts that read it beside other keys of theirs).
    pub fn set_key(&self, user: Uuid) -> String {
        self.settings.key(&format!("follows:set:{{{user}}}"))
    }

    fn generation_key(&self, user: Uuid) -> String {
        self.settings.key(&format!("follows:gen:{{{user}}}"))
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// `user` changed whom they follow (committed): the cached set goes, and any load that
    /// started before is refused.
    pub async fn invalidate(&self, user: Uuid) -> redis::RedisResult<()> {
        let generation = self.generation_key(user);
        redis::pipe()
            .incr(&generation, 1)
            .ignore()
            .pexpire(&generation, millis(GENERATION_TTL))
            .ignore()
            .del(self.set_key(user))
            .ignore()
            .exec_async(&mut self.redis.clone())
            .await
    }

    /// Step 1 of a load: read before reading the list from the users service.
    pub async fn generation(&self, user: Uuid) -> redis::RedisResult<Generation> {
        let current: Option<String> = redis::cmd("GET")
            .arg(self.generation_key(user))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(Generation(current.unwrap_or_default()))
    }

    /// Step 3 of a load: stores `followed` as `user`'s set unless it changed since `generation`
    /// was read. Returns whether it was stored.
    pub async fn store(
        &self,
        user: Uuid,
        generation: &Generation,
        followed: &[Uuid],
    ) -> redis::RedisResult<bool> {
        let mut call = self.store.prepare_invoke();
        call.key(self.set_key(user))
            .key(self.generation_key(user))
            .arg(&generation.0)
            .arg(millis(self.ttl));
        for id in followed {
            call.arg(id.to_string());
        }
        let stored: i64 = call.invoke_async(&mut self.redis.clone()).await?;
        Ok(stored == 1)
    }

    /// `user`'s cached set, if there is one (`None`: not cached).
    pub async fn followed(&self, user: Uuid) -> redis::RedisResult<Option<Vec<Uuid>>> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.set_key(user))
            .query_async(&mut self.redis.clone())
            .await?;
        if !members.iter().any(|member| member == COMPLETE) {
            return Ok(None);
        }
        Ok(Some(
            members
                .iter()
                .filter_map(|member| member.parse().ok())
                .collect(),
        ))
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}
